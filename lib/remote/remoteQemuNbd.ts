/**
 * A qemu-nbd on the hypervisor, started over ssh and listening on TCP, so
 * our NBD client on the backup host reads (offline backup) or writes
 * (restore) an image there. qemu-nbd runs with --fork: it returns once
 * its socket listens (or fails with its own message, e.g. the port is
 * taken), so we never talk to another server that holds the port.
 *
 * What keeps it from outliving us: the ssh session stays open while it
 * runs, its shell reading stdin; when stdin ends (stop(), finish(), our
 * ssh killed, our process dying for any reason, the connection lost) or
 * the shell is signalled there, it sends qemu-nbd SIGTERM (which closes
 * the image cleanly; SIGKILL after 10 s) and waits until it is gone. A
 * process-exit hook kills our ssh processes, which ends their sessions the
 * same way. Only a SIGKILL of that shell itself would leave qemu-nbd
 * running there.
 */
import type { ChildProcess } from 'node:child_process';
import { shellCommand, shellQuote, type SshHost } from './ssh.js';
import { forgetOnExit, killOnExit } from '../qemu/killOnExit.js';
import type { QemuCacheMode } from '../qemu/qemuNbd.js';

export interface RemoteQemuNbdOptions {
  image: string;
  format: string;
  exportName: string;
  /** Address qemu-nbd binds to on the hypervisor, and the one we connect to. */
  bind: string;
  port: number;
  readOnly?: boolean;
  /** `-B`: export this persistent bitmap (meta context qemu:dirty-bitmap:<name>). */
  bitmap?: string;
  /** Serve many connections, one after another (`--persistent --shared`). */
  persistent?: boolean;
  cache?: QemuCacheMode;
  discard?: 'ignore' | 'unmap';
  /** TLS: the hypervisor's directory holding ca-cert.pem, server-cert.pem and server-key.pem. */
  tlsCertDir?: string;
  /** How long to wait for qemu-nbd to listen (default 60 s). */
  startTimeoutMs?: number;
}


/**
 * The remote shell: start qemu-nbd, report "ready <pid>", wait for stdin to
 * end, stop qemu-nbd, report "gone". The shell waits with `wait` (which a
 * signal interrupts, unlike a foreground command), so a shell that is sent
 * SIGTERM, SIGHUP or SIGINT there still stops qemu-nbd first.
 */
function script(qemuNbd: string): string {
  return [
    // Our end may be gone by the time we report: a failed echo must not end the shell before it stops qemu-nbd.
    "trap '' PIPE",
    'pidfile=$(mktemp) || exit 1',
    `${qemuNbd} --fork --pid-file="$pidfile" </dev/null >/dev/null || { s=$?; rm -f "$pidfile"; exit $s; }`,
    'p=$(cat "$pidfile"); rm -f "$pidfile"',
    'stop() { kill -TERM "$p" 2>/dev/null; i=0; while kill -0 "$p" 2>/dev/null; do i=$((i+1)); if [ $i -eq 200 ]; then kill -KILL "$p" 2>/dev/null; fi; sleep 0.05; done; }',
    "trap 'stop; exit 143' TERM HUP INT",
    'echo "ready $p"',
    // A background command reads /dev/null unless told otherwise: hand it our stdin explicitly.
    'exec 3<&0',
    'cat <&3 >/dev/null &',
    'wait $!',
    'stop',
    'echo gone',
  ].join('\n');
}

export class RemoteQemuNbd {
  private stderr = '';
  private stdout = '';
  private readonly closed: Promise<number | null>;
  private exitCode: number | null | undefined;

  private constructor(
    private readonly ssh: SshHost,
    private readonly child: ChildProcess,
    readonly host: string,
    readonly port: number,
    readonly exportName: string,
    readonly commandLine: string,
  ) {
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => {
      this.stderr = (this.stderr + s).slice(-8192);
    });
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (s: string) => {
      this.stdout = (this.stdout + s).slice(-1024);
    });
    child.stdin!.on('error', () => {});
    this.closed = new Promise((resolve) => {
      child.once('close', (code) => {
        forgetOnExit(child);
        this.exitCode = code;
        resolve(code);
      });
    });
  }

  /** Start it and resolve once it listens; on failure nothing runs there any more. */
  static async start(ssh: SshHost, opts: RemoteQemuNbdOptions): Promise<RemoteQemuNbd> {
    const args = ['qemu-nbd', `--format=${opts.format}`, '-x', opts.exportName, '-b', opts.bind, '-p', String(opts.port)];
    if (opts.readOnly) args.push('--read-only');
    if (opts.persistent) args.push('--persistent', '--shared=8');
    if (opts.cache) args.push(`--cache=${opts.cache}`);
    if (opts.discard) args.push(`--discard=${opts.discard}`);
    if (opts.bitmap !== undefined) args.push('-B', opts.bitmap);
    if (opts.tlsCertDir !== undefined) {
      // A comma in the directory would start another property: qemu escapes it by doubling.
      args.push('--object', `tls-creds-x509,id=tls0,endpoint=server,verify-peer=off,dir=${opts.tlsCertDir.replace(/,/g, ',,')}`, '--tls-creds=tls0');
    }
    args.push(opts.image);
    const line = shellCommand(args);
    const child = ssh.spawn(`sh -c ${shellQuote(script(line))}`);
    killOnExit(child);
    const server = new RemoteQemuNbd(ssh, child, opts.bind, opts.port, opts.exportName, line);
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
    const ms = opts.startTimeoutMs ?? 60_000;
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([
      new Promise<'ready'>((resolve) => {
        const check = (): void => {
          if (/^ready \d+$/m.test(server.stdout)) {
            child.stdout!.off('data', check);
            resolve('ready');
          }
        };
        child.stdout!.on('data', check);
      }),
      server.closed.then(() => 'exited' as const),
      spawnError,
      new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), ms);
      }),
    ]);
    clearTimeout(timer);
    if (outcome === 'ready') return server;
    if (outcome instanceof Error) {
      forgetOnExit(child);
      throw ssh.failure(line, null, '', outcome);
    }
    if (outcome === 'timeout') {
      await server.stop();
      throw ssh.failure(line, null, `qemu-nbd did not listen on ${opts.bind}:${opts.port} within ${ms} ms. ${server.stderr}`);
    }
    throw ssh.failure(line, server.exitCode ?? null, server.stderr);
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  /**
   * End qemu-nbd (SIGTERM: it closes the image cleanly) and wait until it
   * is gone there; require that the session ended as planned.
   */
  async finish(timeoutMs = 120_000): Promise<void> {
    this.child.stdin!.end();
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([this.closed, new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), timeoutMs)))]);
    clearTimeout(timer);
    if (code === 'timeout') {
      this.child.kill('SIGKILL');
      throw this.ssh.failure(this.commandLine, null, `did not stop within ${timeoutMs} ms`);
    }
    if (code !== 0 || !/^gone$/m.test(this.stdout)) throw this.ssh.failure(this.commandLine, code, this.stderr || 'the session ended before qemu-nbd was stopped');
  }

  /** Stop it whatever state it is in. Never throws. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.child.stdin!.end();
    let timer: NodeJS.Timeout | undefined;
    const done = await Promise.race([this.closed.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), 30_000)))]);
    clearTimeout(timer);
    // Killing our ssh ends the session: the remote shell still stops qemu-nbd.
    if (!done) this.child.kill('SIGKILL');
  }
}
