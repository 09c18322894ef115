/**
 * Offline backups: a shut-off domain has no backup job, so each disk image
 * is served read-only by a qemu-nbd we start, its export named after the
 * target dev (as the job names them), with the newest checkpoint's
 * persistent bitmap exported (`-B`, meta context `qemu:dirty-bitmap:<name>`)
 * for inc and diff. Before that, the bitmap is checked in the image: one
 * that is missing, or still flagged in-use (QEMU was not stopped cleanly,
 * so it may miss writes), cannot say what changed, and only a full backup
 * helps. stop() ends the process and removes its socket; never throws.
 *
 * A remote domain's images are on its host: there qemu-nbd is started over
 * ssh, listening on TCP (lib/remote/remoteQemuNbd.ts), and the bitmaps are
 * read by qemu-img run there. startOfflineExport() picks the one or the
 * other and hands out where the client connects.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackupError, messageOf } from './errors.js';
import { LocalHostFiles, type HostFiles } from '../remote/hostFiles.js';
import { RemoteQemuNbd } from '../remote/remoteQemuNbd.js';
import type { SshHost } from '../remote/ssh.js';
import type { NbdEndpoint } from './nbdEndpoint.js';

interface BitmapInfo {
  name: string;
  flags: string[];
}

/** The persistent bitmaps `qemu-img info` lists for a qcow2 image. */
async function imageBitmaps(image: string, files: HostFiles): Promise<BitmapInfo[]> {
  let info: { 'format-specific'?: { data?: { bitmaps?: BitmapInfo[] } } };
  try {
    info = JSON.parse(await files.qemuImageInfo(image)) as typeof info;
  } catch (e) {
    const where = files.remote ? ` on ${files.description}` : '';
    throw new BackupError('disk', `Cannot read the bitmaps of image ${image}${where}: ${messageOf(e)}`, { cause: e });
  }
  return info['format-specific']?.data?.bitmaps ?? [];
}

/** Throws BackupError('bitmap') when `bitmap` is missing from `image` or inconsistent. */
export async function checkOfflineBitmap(image: string, disk: string, bitmap: string, files: HostFiles = new LocalHostFiles()): Promise<void> {
  const found = (await imageBitmaps(image, files)).find((b) => b.name === bitmap);
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

export interface OfflineExportSpec {
  image: string;
  format: string;
  exportName: string;
  /** Local: the unix socket to serve on. */
  socket: string;
  bitmap?: string;
  /** Remote: the host's ssh, and the TCP address and port qemu-nbd listens on there. */
  remote?: { ssh: SshHost; endpoint: Extract<NbdEndpoint, { kind: 'tcp' }> };
}

/** A running offline export: where to connect, and how to end it (never throws). */
export interface RunningExport {
  endpoint: NbdEndpoint;
  stop(): Promise<void>;
}

/** Serve one image read-only, on this host (unix socket) or on the domain's host (TCP). */
export async function startOfflineExport(spec: OfflineExportSpec): Promise<RunningExport> {
  const bitmap = spec.bitmap !== undefined ? { bitmap: spec.bitmap } : {};
  if (spec.remote === undefined) {
    const server = await OfflineExport.start({ image: spec.image, format: spec.format, exportName: spec.exportName, socket: spec.socket, ...bitmap });
    return { endpoint: { kind: 'unix', socket: server.socket }, stop: () => server.stop() };
  }
  const { ssh, endpoint } = spec.remote;
  let server: RemoteQemuNbd;
  try {
    server = await RemoteQemuNbd.start(ssh, {
      image: spec.image,
      format: spec.format,
      exportName: spec.exportName,
      bind: endpoint.host,
      port: endpoint.port,
      readOnly: true,
      persistent: true,
      ...(endpoint.tls ? { tlsCertDir: endpoint.tls.certDir } : {}),
      ...bitmap,
    });
  } catch (e) {
    throw new BackupError('disk', `Cannot serve image ${spec.image} with qemu-nbd on ${ssh.description}: ${messageOf(e)}`, { cause: e });
  }
  return { endpoint, stop: () => server.stop() };
}
