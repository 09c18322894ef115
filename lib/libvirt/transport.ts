/**
 * Transports: the byte pipe between the RPC connection and libvirtd.
 * A unix socket (qemu:///system), a TCP socket (qemu+tcp://), a TLS
 * session (qemu+tls://), or a child process's stdio (ssh running
 * virt-ssh-helper, as libvirt does for qemu+ssh://). The connection only
 * sees `readable` and `writable`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
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
  /** What the pipe is: SASL offers PLAIN only over tls and unix, and explains plain TCP's limits. */
  readonly kind?: TransportKind;
}

export type TransportKind = 'unix' | 'tcp' | 'tls' | 'process';

function noConnect(message: string, cause: unknown): LibvirtError {
  return new LibvirtError({ code: VIR_ERR_NO_CONNECT, domain: VIR_FROM_REMOTE, message, cause });
}

function socketTransport(socket: net.Socket, description: string, kind: TransportKind): Transport {
  return {
    description,
    kind,
    readable: socket,
    writable: socket,
    end: () => socket.end(),
    destroy: () => socket.destroy(),
    diagnostics: () => '',
  };
}

function connectSocket(options: net.NetConnectOpts & { path?: string }, description: string, hint: string): Promise<Transport> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(options);
    const onError = (err: Error): void => {
      socket.destroy();
      reject(noConnect(`cannot connect to libvirt at ${description}: ${err.message}${hint}`, err));
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      resolve(socketTransport(socket, description, options.path === undefined ? 'tcp' : 'unix'));
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

export interface TlsFiles {
  /** The CA that signed the daemon's certificate. */
  ca: string;
  /** Our client certificate and key: libvirtd checks them before anything else. */
  cert: string;
  key: string;
}

/**
 * Where libvirt looks for the client's PKI files: ?pkipath=DIR (cacert.pem,
 * clientcert.pem, clientkey.pem there); for non-root users ~/.pki/libvirt
 * when it holds a CA; else the system paths /etc/pki/CA/cacert.pem and
 * /etc/pki/libvirt/{clientcert.pem,private/clientkey.pem}.
 */
export function tlsFiles(pkipath?: string): TlsFiles {
  const inDir = (dir: string): TlsFiles => ({ ca: path.join(dir, 'cacert.pem'), cert: path.join(dir, 'clientcert.pem'), key: path.join(dir, 'clientkey.pem') });
  if (pkipath) return inDir(pkipath);
  const userDir = path.join(os.homedir(), '.pki', 'libvirt');
  if (process.getuid?.() !== 0 && fs.existsSync(path.join(userDir, 'cacert.pem'))) return inDir(userDir);
  return { ca: '/etc/pki/CA/cacert.pem', cert: '/etc/pki/libvirt/clientcert.pem', key: '/etc/pki/libvirt/private/clientkey.pem' };
}

export interface TlsConnectOptions {
  pkipath?: string;
  /** Accept any server certificate (libvirt's ?no_verify=1). */
  noVerify?: boolean;
}

/** How long the TLS handshake and the daemon's confirmation byte may take. */
const TLS_CONFIRM_TIMEOUT_MS = 30_000;

/**
 * TLS to libvirtd (qemu+tls://, port 16514), as libvirt's client does it:
 * the handshake with our client certificate, then the daemon checks that
 * certificate (and our address) and sends one byte, 1, when it accepts us;
 * only then does RPC start. Missing PKI files are named in the error.
 */
export async function connectTls(host: string, port: number, options: TlsConnectOptions = {}): Promise<Transport> {
  const files = tlsFiles(options.pkipath);
  const pem: Partial<Record<keyof TlsFiles, Buffer>> = {};
  for (const [what, file] of Object.entries(files) as [keyof TlsFiles, string][]) {
    try {
      pem[what] = fs.readFileSync(file);
    } catch (err) {
      const role = what === 'ca' ? 'CA certificate' : what === 'cert' ? 'client certificate' : 'client key';
      throw noConnect(`cannot connect to libvirt at tls ${host}:${port}: cannot read the ${role} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message} (set ?pkipath=DIR in the URI to use other files)`, err);
    }
  }
  const description = `tls ${host.includes(':') ? `[${host}]` : host}:${port}`;
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host,
      port,
      ca: pem.ca,
      cert: pem.cert,
      key: pem.key,
      // SNI takes names only; an address is checked against the certificate's IP entries.
      servername: net.isIP(host) ? undefined : host,
      rejectUnauthorized: !options.noVerify,
    });
    let settled = false;
    // A daemon that neither confirms nor hangs up must not keep us forever.
    const timer = setTimeout(() => fail(`no answer within ${TLS_CONFIRM_TIMEOUT_MS / 1000} s after connecting`), TLS_CONFIRM_TIMEOUT_MS);
    const fail = (message: string, cause?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      reject(noConnect(`cannot connect to libvirt at ${description}: ${message}`, cause));
    };
    const onError = (err: Error): void => fail(err.message, err);
    const onEnd = (): void => fail('the daemon closed the connection: it did not accept our client certificate or address, or does not speak TLS on this port');
    const onReadable = (): void => {
      const byte = socket.read(1) as Buffer | null;
      if (byte === null) return;
      socket.off('readable', onReadable);
      socket.off('error', onError);
      socket.off('end', onEnd);
      if (byte[0] !== 1) {
        fail(`the daemon refused our client certificate or address (confirmation byte ${byte[0]})`);
        return;
      }
      settled = true;
      clearTimeout(timer);
      resolve(socketTransport(socket, description, 'tls'));
    };
    socket.on('error', onError);
    socket.on('end', onEnd);
    socket.once('secureConnect', () => socket.on('readable', onReadable));
  });
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
        kind: 'process',
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
