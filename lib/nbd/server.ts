/**
 * NbdServer: serves one or more named Exports over NBD (fixed newstyle,
 * structured replies, base:allocation block status, optional TLS) on a
 * unix socket (created with mode 0600, removed on close) or on TCP.
 * virtnbdmap uses it to serve backup chains; tests use it with MemoryExport.
 *
 *     const server = new NbdServer({ exports: { sda: new MemoryExport(1 << 30) } });
 *     await server.listen({ socketPath: '/run/virtnbd/sda.sock' });
 *     // nbdinfo 'nbd+unix:///sda?socket=/run/virtnbd/sda.sock'
 *     await server.close();
 *
 * Each connection runs the handshake (server-handshake.ts), then a
 * TransmissionSession (server-session.ts). close() stops listening, lets
 * every session answer the requests it already read, closes the
 * connections and removes the socket file. Exports stay open: they belong
 * to the caller (e.g. FileExport.close()).
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Export } from './export.js';
import { type ExportCatalog, negotiate } from './server-handshake.js';
import { listenUnix, type UnixListener } from './server-listen.js';
import { silentLogger, type ServerLogger } from './server-log.js';
import { closeSocket, TransmissionSession } from './server-session.js';
import { loadServerTls, type ServerTlsCredentials, type ServerTlsOptions } from './server-tls.js';
import { NBD_DEFAULT_MAX_PAYLOAD, NBD_MAX_STRING } from './protocol.js';

export interface NbdServerOptions {
  /** Exports by name. The name '' is what clients get when they ask for no name. */
  exports: Record<string, Export> | Map<string, Export>;
  /** Export served for the empty name when there is no '' entry. Default: the only export, if there is one. */
  defaultExport?: string;
  /** Enable NBD_OPT_STARTTLS; by default TLS is then required (FORCEDTLS). */
  tls?: ServerTlsOptions;
  logger?: ServerLogger;
  /** Largest READ/WRITE payload accepted (NBD_INFO_BLOCK_SIZE maximum). Default 32 MiB. */
  maxPayload?: number;
  /** Requests served concurrently per connection. Default 32. */
  maxInFlight?: number;
  /** READ/WRITE bytes served concurrently per connection. Default 64 MiB. */
  maxInFlightBytes?: number;
}

export type ListenTarget = { socketPath: string } | { host?: string; port: number };

export type ServerAddress = { socketPath: string } | { host: string; port: number };

/** The server was given something it cannot serve (bad export, bad option). */
export class NbdServerConfigError extends Error {
  override name = 'NbdServerConfigError';
  constructor(message: string) {
    super(message);
  }
}

interface Connection {
  socket: Duplex;
  session?: TransmissionSession;
  done: Promise<void>;
}

const isPowerOf2 = (n: number): boolean => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

function validateExport(name: string, exp: Export, maxPayload: number): void {
  const where = `export '${name}'`;
  if (Buffer.byteLength(name) > NBD_MAX_STRING) throw new NbdServerConfigError(`${where}: name longer than ${NBD_MAX_STRING} bytes`);
  if (name.includes('\0')) throw new NbdServerConfigError(`${where}: name contains NUL`);
  if (!Number.isSafeInteger(exp.size) || exp.size < 0) throw new NbdServerConfigError(`${where}: invalid size ${exp.size}`);
  if (typeof exp.read !== 'function') throw new NbdServerConfigError(`${where}: has no read() method`);
  const bs = exp.blockSize;
  if (bs) {
    if (!isPowerOf2(bs.minimum) || bs.minimum > 65536) {
      throw new NbdServerConfigError(`${where}: minimum block size ${bs.minimum} must be a power of 2 up to 65536`);
    }
    if (!isPowerOf2(bs.preferred) || bs.preferred < Math.max(bs.minimum, 512)) {
      throw new NbdServerConfigError(`${where}: preferred block size ${bs.preferred} must be a power of 2 >= max(minimum, 512)`);
    }
    if (!Number.isInteger(bs.maximum) || bs.maximum < bs.preferred || bs.maximum > maxPayload) {
      throw new NbdServerConfigError(`${where}: maximum payload ${bs.maximum} must lie between preferred (${bs.preferred}) and ${maxPayload}`);
    }
  }
}

export class NbdServer {
  private readonly exports: Map<string, Export>;
  private readonly defaultExport?: string;
  private readonly log: ServerLogger;
  private readonly maxPayload: number;
  private readonly maxInFlight: number;
  private readonly maxInFlightBytes: number;
  private readonly tlsOptions?: ServerTlsOptions;
  private tls?: ServerTlsCredentials;
  private readonly connections = new Set<Connection>();
  private server?: net.Server;
  private unix?: UnixListener;
  private boundAddress?: ServerAddress;
  private closing?: Promise<void>;
  private connectionCounter = 0;

  constructor(options: NbdServerOptions) {
    this.maxPayload = options.maxPayload ?? NBD_DEFAULT_MAX_PAYLOAD;
    if (!Number.isInteger(this.maxPayload) || this.maxPayload < 4096 || this.maxPayload > 0xffffffff - 8) {
      throw new NbdServerConfigError(`maxPayload ${this.maxPayload} must be an integer between 4096 and 2^32-9`);
    }
    this.maxInFlight = options.maxInFlight ?? 32;
    this.maxInFlightBytes = options.maxInFlightBytes ?? 64 * 1024 * 1024;
    if (!(this.maxInFlight >= 1) || !(this.maxInFlightBytes >= 1)) {
      throw new NbdServerConfigError('maxInFlight and maxInFlightBytes must be at least 1');
    }
    this.exports = new Map(options.exports instanceof Map ? options.exports : Object.entries(options.exports));
    for (const [name, exp] of this.exports) validateExport(name, exp, this.maxPayload);
    if (options.defaultExport !== undefined && !this.exports.has(options.defaultExport)) {
      throw new NbdServerConfigError(`defaultExport '${options.defaultExport}' is not among the exports`);
    }
    this.defaultExport = options.defaultExport;
    this.tlsOptions = options.tls;
    const logger = options.logger ?? silentLogger;
    // A throwing logger must not take a connection (or the process) down with it.
    this.log = (level, message) => {
      try {
        logger(level, message);
      } catch {
        // Ignored on purpose.
      }
    };
  }

  /** Add (or replace) an export; new connections see it at once. */
  addExport(name: string, exp: Export): void {
    validateExport(name, exp, this.maxPayload);
    this.exports.set(name, exp);
  }

  /** Stop offering an export to new connections (connected clients keep using it). */
  removeExport(name: string): boolean {
    return this.exports.delete(name);
  }

  /** Start accepting connections. Loads TLS credentials first, so bad ones fail here. */
  async listen(target: ListenTarget): Promise<ServerAddress> {
    if (this.server) throw new NbdServerConfigError('listen() was already called');
    if (this.closing) throw new NbdServerConfigError('server is closed');
    await this.loadTls();
    const server = net.createServer((socket) => this.accept(socket));
    this.server = server;
    server.on('error', (err) => this.log('error', `NBD server: ${err.message}`));
    if ('socketPath' in target) {
      this.unix = await listenUnix(server, target.socketPath);
      this.boundAddress = { socketPath: target.socketPath };
    } else {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: target.host ?? '127.0.0.1', port: target.port }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      const a = server.address() as net.AddressInfo;
      this.boundAddress = { host: a.address, port: a.port };
    }
    this.log('info', `NBD server listening on ${this.describe()}`);
    return this.boundAddress;
  }

  /** Where the server listens (after listen()). */
  address(): ServerAddress | undefined {
    return this.boundAddress;
  }

  /** An NBD URI for an export (nbd+unix:// or nbd://; nbds when TLS is on), as nbdinfo and qemu take it. */
  uri(exportName = ''): string {
    const a = this.boundAddress;
    if (!a) throw new NbdServerConfigError('server is not listening');
    const scheme = this.tlsOptions ? 'nbds' : 'nbd';
    const path = encodeURIComponent(exportName);
    if ('socketPath' in a) return `${scheme}+unix:///${path}?socket=${encodeURIComponent(a.socketPath)}`;
    const host = a.host.includes(':') ? `[${a.host}]` : a.host;
    return `${scheme}://${host}:${a.port}/${path}`;
  }

  /** Number of open client connections. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Serve one already-connected stream (e.g. a socket from elsewhere, or an
   * inetd-style stdin/stdout pair combined into a Duplex). Resolves when
   * the client is gone.
   */
  async serveConnection(socket: Duplex, peer = 'client'): Promise<void> {
    await this.loadTls();
    if (this.closing) {
      socket.destroy();
      return;
    }
    const conn: Connection = { socket, done: Promise.resolve() };
    this.connections.add(conn);
    conn.done = this.serve(conn, peer);
    await conn.done;
  }

  /** Stop listening, finish in-flight requests, close every connection, remove the unix socket. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const listening = this.server?.listening
      ? new Promise<void>((resolve) => this.server!.close(() => resolve()))
      : Promise.resolve();
    for (const conn of this.connections) {
      // In transmission: answer what was read, then hang up. In the handshake: hang up now.
      if (conn.session) conn.session.stop();
      else conn.socket.destroy();
    }
    await Promise.all([...this.connections].map((c) => c.done));
    for (const conn of this.connections) conn.socket.destroy();
    await listening;
    await this.unix?.remove();
    this.log('info', 'NBD server closed');
  }

  private describe(): string {
    const a = this.boundAddress;
    if (!a) return 'nothing';
    return 'socketPath' in a ? a.socketPath : `${a.host}:${a.port}`;
  }

  private async loadTls(): Promise<void> {
    if (this.tlsOptions && !this.tls) this.tls = await loadServerTls(this.tlsOptions);
  }

  private accept(socket: net.Socket): void {
    const n = ++this.connectionCounter;
    const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : `unix client #${n}`;
    if (this.closing) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const conn: Connection = { socket, done: Promise.resolve() };
    this.connections.add(conn);
    conn.done = this.serve(conn, peer);
  }

  private async serve(conn: Connection, peer: string): Promise<void> {
    const raw = conn.socket;
    // Errors (EPIPE, ECONNRESET) also surface as reads that fail; never let one go unhandled.
    const onError = (err: Error): void => this.log('debug', `${peer}: socket error: ${err.message}`);
    raw.on('error', onError);
    this.log('debug', `${peer}: connected`);
    try {
      const negotiated = await negotiate({
        socket: raw,
        catalog: this.catalog(),
        tls: this.tls,
        maxPayload: this.maxPayload,
        log: this.log,
        peer,
        isShuttingDown: () => this.closing !== undefined,
        onSocketChange: (s) => {
          s.on('error', onError);
          conn.socket = s;
        },
      });
      if (!negotiated) {
        closeSocket(conn.socket);
        return;
      }
      this.log('info', `${peer}: serving export '${negotiated.exportName}'${negotiated.tls ? ' over TLS' : ''}`);
      const session = new TransmissionSession(
        negotiated,
        { maxPayload: this.maxPayload, maxInFlight: this.maxInFlight, maxInFlightBytes: this.maxInFlightBytes },
        this.log,
        peer,
      );
      conn.session = session;
      if (this.closing) session.stop();
      await session.run();
    } catch (err) {
      this.log('info', `${peer}: handshake ended: ${(err as Error).message}`);
      conn.socket.destroy();
      raw.destroy();
    } finally {
      this.connections.delete(conn);
      this.log('debug', `${peer}: disconnected`);
    }
  }

  private catalog(): ExportCatalog {
    return {
      resolve: (name) => {
        const exact = this.exports.get(name);
        if (exact) return { name, export: exact };
        if (name !== '') return undefined;
        const fallback = this.defaultExport ?? (this.exports.size === 1 ? [...this.exports.keys()][0] : undefined);
        const exp = fallback === undefined ? undefined : this.exports.get(fallback);
        return exp && fallback !== undefined ? { name: fallback, export: exp } : undefined;
      },
      list: () => [...this.exports].map(([name, exp]) => ({ name, export: exp })),
    };
  }
}
