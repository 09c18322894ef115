/**
 * Offline backups: a shut-off domain has no backup job, so each disk image
 * is served read-only by a qemu-nbd we start, its export named after the
 * target dev (as the job names them), with the newest checkpoint's
 * persistent bitmap exported (`-B`, meta context `qemu:dirty-bitmap:<name>`)
 * for inc and diff. Before that, the bitmap is checked in the image: one
 * that is missing, or still flagged in-use (QEMU was not stopped cleanly,
 * so it may miss writes), cannot say what changed, and only a full backup
 * helps. stop() ends the process and removes its socket; never throws.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackupError, messageOf } from './errors.js';
import { qemuImageInfo } from './setFiles.js';

interface BitmapInfo {
  name: string;
  flags: string[];
}

/** The persistent bitmaps `qemu-img info` lists for a qcow2 image. */
async function imageBitmaps(image: string): Promise<BitmapInfo[]> {
  let info: { 'format-specific'?: { data?: { bitmaps?: BitmapInfo[] } } };
  try {
    info = JSON.parse(await qemuImageInfo(image)) as typeof info;
  } catch (e) {
    throw new BackupError('disk', `Cannot read the bitmaps of image ${image}: ${messageOf(e)}`, { cause: e });
  }
  return info['format-specific']?.data?.bitmaps ?? [];
}

/** Throws BackupError('bitmap') when `bitmap` is missing from `image` or inconsistent. */
export async function checkOfflineBitmap(image: string, disk: string, bitmap: string): Promise<void> {
  const found = (await imageBitmaps(image)).find((b) => b.name === bitmap);
  if (found === undefined) {
    throw new BackupError(
      'bitmap',
      `Image ${image} of disk ${disk} has no bitmap ${bitmap}: what changed since checkpoint ${bitmap} is unknown. Run a full backup to start a new chain.`,
    );
  }
  if (found.flags.includes('in-use') || !found.flags.includes('auto')) {
    throw new BackupError(
      'bitmap',
      `Bitmap ${bitmap} in image ${image} of disk ${disk} is inconsistent (flags: ${found.flags.join(', ') || 'none'}): ` +
        'the domain was not shut down cleanly, so the bitmap may miss changes. A full backup is needed to start a new chain.',
    );
  }
}

export class OfflineExport {
  private stderr = '';
  private exited = false;

  private constructor(
    private readonly child: ChildProcess,
    readonly socket: string,
    private readonly commandLine: string,
  ) {
    child.stderr?.on('data', (b: Buffer) => {
      this.stderr = (this.stderr + b.toString('utf8')).slice(-4096);
    });
    child.once('close', () => {
      this.exited = true;
    });
  }

  /** Serve `image` (format `format`) as export `exportName` on `socket`, read-only, with `bitmap` if given. */
  static async start(opts: { image: string; format: string; exportName: string; socket: string; bitmap?: string }): Promise<OfflineExport> {
    if (existsSync(opts.socket)) {
      throw new BackupError('job', `NBD socket file ${opts.socket} already exists: is another backup running? If not, remove it (or pick another with -f).`);
    }
    const args = ['--read-only', '--persistent', '--shared=8', `--format=${opts.format}`, '-x', opts.exportName, '-k', opts.socket];
    if (opts.bitmap !== undefined) args.push('-B', opts.bitmap);
    args.push(opts.image);
    const line = `qemu-nbd ${args.join(' ')}`;
    const child = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const server = new OfflineExport(child, opts.socket, line);
    let spawnError: Error | undefined;
    child.once('error', (e) => {
      spawnError = e;
    });
    const deadline = Date.now() + 30_000;
    for (;;) {
      await sleep(20);
      if (spawnError) throw new BackupError('disk', `Cannot run ${line}: ${spawnError.message}`);
      if (server.exited) throw new BackupError('disk', `${line} failed: ${server.stderr.trim() || 'no message'}`);
      if ((await stat(opts.socket).catch(() => undefined))?.isSocket()) return server;
      if (Date.now() > deadline) {
        await server.stop();
        throw new BackupError('disk', `${line} did not create its socket within 30 s`);
      }
    }
  }

  async stop(): Promise<void> {
    if (!this.exited) {
      const closed = new Promise<void>((resolve) => this.child.once('close', () => resolve()));
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
      await closed;
      clearTimeout(timer);
    }
    await rm(this.socket, { force: true }).catch(() => undefined);
  }
}
