/**
 * Transports: the byte pipe between the RPC connection and libvirtd.
 * A unix socket (qemu:///system), a TCP socket (qemu+tcp://), or a child
 * process's stdio (ssh running virt-ssh-helper, as libvirt does for
 * qemu+ssh://). The connection only sees `readable` and `writable`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { LibvirtError, VIR_ERR_NO_CONNECT, VIR_FROM_REMOTE } from './errors.js';

export interface Transport {
  /** For error messages, e.g. "unix socket /var/run/libvirt/libvirt-sock". */
  readonly description: string;
  /** Bytes from the daemon. */
  readonly readable: Readable;
  /** Bytes to the daemon. */
  readonly writable: Writable;
  /** Ends our side politely (socket half-close, stdin end). */
  end(): void;
  /** Tears the pipe down at once (socket destroy, child kill). */
  destroy(): void;
  /** What the other end said on the way out (ssh's stderr), for error messages. */
  diagnostics(): string;
  /** The child process, for process transports. */
  readonly pid?: number;
}

function noConnect(message: string, cause: unknown): LibvirtError {
  return new LibvirtError({ code: VIR_ERR_NO_CONNECT, domain: VIR_FROM_REMOTE, message, cause });
}

function socketTransport(socket: net.Socket, description: string): Transport {
  return {
    description,
    readable: socket,
    writable: socket,
    end: () => socket.end(),
    destroy: () => socket.destroy(),
    diagnostics: () => '',
  };
}

function connectSocket(options: net.NetConnectOpts, description: string, hint: string): Promise<Transport> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(options);
    const onError = (err: Error): void => {
      socket.destroy();
      reject(noConnect(`cannot connect to libvirt at ${description}: ${err.message}${hint}`, err));
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      resolve(socketTransport(socket, description));
    });
  });
}

/** libvirtd's (or virtqemud's) unix socket. */
export function connectUnix(path: string): Promise<Transport> {
  return connectSocket({ path }, `unix socket ${path}`, ' (is libvirtd running, and may this user open its socket?)');
}

/** Plain TCP (qemu+tcp://); libvirtd normally demands SASL there. */
export function connectTcp(host: string, port: number): Promise<Transport> {
  return connectSocket({ host, port }, `tcp ${host}:${port}`, ' (is libvirtd listening on TCP?)');
}

/** Keeps the tail of a child's stderr, bounded, for error messages. */
const STDERR_KEEP = 4096;

/**
 * A child process whose stdin/stdout carry the RPC stream, e.g.
 * `ssh host virt-ssh-helper qemu:///system`, or `virt-ssh-helper` locally.
 * Resolves once the process has started; a failed exec rejects.
 */
export function spawnTransport(command: string, args: readonly string[], description?: string): Promise<Transport> {
  const desc = description ?? [command, ...args].join(' ');
  return new Promise((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (err) {
      reject(noConnect(`cannot start '${desc}': ${(err as Error).message}`, err));
      return;
    }
    let stderr = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => {
      stderr = (stderr + s).slice(-STDERR_KEEP);
    });
    // A dead child's stdin raises EPIPE; the connection learns of the loss from stdout's end.
    child.stdin!.on('error', () => {});
    const onError = (err: Error): void => reject(noConnect(`cannot start '${desc}': ${err.message}`, err));
    child.once('error', onError);
    child.once('spawn', () => {
      child.off('error', onError);
      child.on('error', () => {});
      // Hand out a stream that ends only when the child is gone, so that by
      // then its stderr (ssh's "Permission denied", ...) has been collected.
      const readable = new PassThrough();
      child.stdout!.pipe(readable, { end: false });
      child.once('close', () => readable.end());
      resolve({
        description: desc,
        pid: child.pid,
        readable,
        writable: child.stdin!,
        end: () => child.stdin!.end(),
        destroy: () => {
          child.stdin!.destroy();
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
          readable.destroy();
        },
        diagnostics: () => stderr.trim(),
      });
    });
  });
}
