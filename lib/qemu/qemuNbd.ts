/**
 * A qemu-nbd process serving one image on a unix socket, owned by us: we
 * spawn it (no --fork, so its pid is our child's and its stderr is ours to
 * report), wait until its socket is listening, and end it. Without
 * --persistent, qemu-nbd exits by itself, closing the image cleanly, once
 * its client disconnects: `finish()` waits for that and insists on exit
 * status 0. `stop()` ends it whatever state it is in (SIGTERM, then SIGKILL).
 * Either way the socket file is gone afterwards. A process-exit hook kills
 * any server still running, so none outlives the command that started it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { showCommand } from './qemuImg.js';
import { forgetOnExit, killOnExit } from './killOnExit.js';

/** qemu-nbd could not start, failed, or did not end as expected. */
export class QemuNbdError extends Error {
  override readonly name = 'QemuNbdError';
}

export type QemuCacheMode = 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';

export interface QemuNbdOptions {
  image: string;
  /** Image format (`--format`); always given, so qemu-nbd never probes. */
  format: string;
  /** Unix socket path (`-k`); must not exist yet. */
  socket: string;
  /** Export name (`-x`). */
  exportName: string;
  /** `--cache`; default qemu-nbd's (writeback). */
  cache?: QemuCacheMode;
  /** `--discard`. */
  discard?: 'ignore' | 'unmap';
  readOnly?: boolean;
  /** How long to wait for the socket (default 30 s). */
  startTimeoutMs?: number;
  binary?: string;
}


export class QemuNbdServer {
  private stderr = '';
  private exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  private constructor(
    private readonly child: ChildProcess,
    readonly socket: string,
    readonly exportName: string,
    readonly commandLine: string,
  ) {
    child.stderr?.on('data', (b: Buffer) => {
      // Keep the tail only: qemu-nbd says little, but never let it grow unbounded.
      this.stderr = (this.stderr + b.toString('utf8')).slice(-8192);
    });
    this.exited = new Promise((resolve) => {
      child.once('close', (code, signal) => {
        forgetOnExit(child);
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
    });
  }

  /** Spawn qemu-nbd and resolve once its socket accepts connections. */
  static async start(opts: QemuNbdOptions): Promise<QemuNbdServer> {
    const args = [`--format=${opts.format}`, '-x', opts.exportName, '-k', opts.socket];
    if (opts.cache) args.push(`--cache=${opts.cache}`);
    if (opts.discard) args.push(`--discard=${opts.discard}`);
    if (opts.readOnly) args.push('--read-only');
    args.push(opts.image);
    const binary = opts.binary ?? 'qemu-nbd';
    const line = showCommand(binary, args);
    const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    killOnExit(child);
    const server = new QemuNbdServer(child, opts.socket, opts.exportName, line);
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
    const deadline = Date.now() + (opts.startTimeoutMs ?? 30_000);
    for (;;) {
      const failed = await Promise.race([spawnError, sleep(15).then(() => undefined)]);
      if (failed) {
        forgetOnExit(child);
        throw new QemuNbdError(`Cannot run ${line}: ${failed.message}`);
      }
      if (server.exitInfo) {
        throw new QemuNbdError(`${line} exited (${describeExit(server.exitInfo)}) before serving: ${server.stderr.trim() || 'no message'}`);
      }
      if (await isSocket(opts.socket)) return server;
      if (Date.now() > deadline) {
        await server.stop();
        throw new QemuNbdError(`${line} did not create its socket ${opts.socket} within ${opts.startTimeoutMs ?? 30_000} ms`);
      }
    }
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /**
   * After the client has disconnected: wait (bounded) for qemu-nbd to close
   * the image and exit, and require exit status 0; else it is stopped and a
   * QemuNbdError says what happened.
   */
  async finish(timeoutMs = 120_000): Promise<void> {
    const result = await within(this.exited, timeoutMs);
    if (!result) {
      await this.stop();
      throw new QemuNbdError(`${this.commandLine} did not exit within ${timeoutMs} ms after its client disconnected`);
    }
    await rm(this.socket, { force: true });
    if (result.code !== 0) {
      throw new QemuNbdError(`${this.commandLine} ended with ${describeExit(result)}: ${this.stderr.trim() || 'no message'}`);
    }
  }

  /** End the process now (SIGTERM, SIGKILL after `graceMs`) and remove its socket. Never throws. */
  async stop(graceMs = 10_000): Promise<void> {
    if (this.running) {
      this.child.kill('SIGTERM');
      const ended = await within(this.exited, graceMs);
      if (!ended) {
        this.child.kill('SIGKILL');
        await this.exited;
      }
    }
    await rm(this.socket, { force: true }).catch(() => undefined);
  }

  /** Synchronous last resort for process-exit paths. */
  stopSync(): void {
    if (this.running) this.child.kill('SIGKILL');
    rmSync(this.socket, { force: true });
  }
}

/** `promise`'s value, or undefined once `ms` have passed; the timer never outlives the race. */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function describeExit(info: { code: number | null; signal: NodeJS.Signals | null }): string {
  return info.signal ? `signal ${info.signal}` : `exit status ${info.code}`;
}

async function isSocket(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isSocket();
  } catch {
    return false;
  }
}
