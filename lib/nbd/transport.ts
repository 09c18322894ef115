/**
 * The byte pipe under an NBD connection: a connected socket (TCP, unix or
 * TLS) with two reading modes and a send path that respects backpressure.
 *
 * - Handshake mode: `readExact(n)` resolves with exactly n bytes.
 * - Transmission mode: every received buffer goes to a sink (the reply
 *   parser) as it arrives. Plain (non-TLS) sockets read with `onread` into
 *   one reused buffer rather than a fresh 64 KiB Buffer per read: that
 *   allocation churn (garbage, GC, page faults) cost more CPU than the NBD
 *   protocol itself. The sink is told the bytes are transient and copies
 *   what it keeps (READ payloads it copies once, into the request's buffer).
 * - `send(buffers)` writes one message atomically; once the socket's buffer
 *   is full (write() returned false) further messages wait, in order, for
 *   'drain'. The wait queue holds one entry per caller request, so it is
 *   bounded by the callers' own concurrency.
 */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { ByteQueue } from './byteQueue.js';
import { NbdConnectionError, NbdProtocolError } from './errors.js';
import { startTls, type NbdTlsOptions } from './tls.js';

/** More than this many unread bytes during the handshake means a broken server. */
const HANDSHAKE_BUFFER_LIMIT = 2 * 64 * 1024 * 1024;

/**
 * Size of the reused read buffer. A unix socket rarely holds more than
 * ~200 KiB (the sender's buffer), so one read usually drains it.
 */
const READ_BUFFER_SIZE = 256 * 1024;

/**
 * Where transmission-phase bytes go (the reply parser). `transient`: `buf`
 * is the transport's read buffer, overwritten by the next read, so the sink
 * must copy what it keeps beyond the call.
 */
export type StreamSink = (buf: Buffer, transient: boolean) => void;

interface Waiting {
  bufs: Buffer[];
  resolve: () => void;
  reject: (e: Error) => void;
}

export class Transport {
  private socket!: Duplex;
  private readonly q = new ByteQueue();
  private reader?: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void };
  private sink?: StreamSink;
  private blocked = false;
  /** The socket is corked until the next tick (writeNow). */
  private corked = false;
  private readonly waiting: Waiting[] = [];
  private closedWith?: Error;
  private socketError?: Error;
  private closeListeners: Array<(err: Error) => void> = [];
  /** A description of the peer for messages (socket path or host:port). */
  readonly peer: string;

  private constructor(peer: string) {
    this.peer = peer;
  }

  /**
   * Connect to a unix socket path or a TCP host/port. `reuseReadBuffer`:
   * read with `onread` into one buffer; not for connections that will
   * upgrade to TLS, whose socket must stay a plain stream to be wrapped.
   */
  static async connect(target: { socket: string } | { host: string; port: number }, opts: { reuseReadBuffer?: boolean } = {}): Promise<Transport> {
    const peer = 'socket' in target ? target.socket : `${target.host}:${target.port}`;
    const t = new Transport(peer);
    const where = 'socket' in target ? { path: target.socket } : { host: target.host, port: target.port };
    let onread: net.OnReadOpts | undefined;
    if (opts.reuseReadBuffer) {
      onread = {
        buffer: Buffer.allocUnsafe(READ_BUFFER_SIZE),
        callback: (n, buf) => {
          t.onRead((buf as Buffer).subarray(0, n));
          return true; // keep reading: the parser never holds more than one incomplete message
        },
      };
    }
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection({ ...where, onread });
      const onError = (err: NodeJS.ErrnoException): void => {
        s.destroy();
        reject(new NbdConnectionError(`cannot connect to NBD server at ${peer}: ${err.message}`, { cause: err }));
      };
      s.once('error', onError);
      s.once('connect', () => {
        s.off('error', onError);
        resolve(s);
      });
    });
    sock.setNoDelay(true);
    t.socket = sock;
    t.attach(sock);
    return t;
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  get encrypted(): boolean {
    return (this.socket as { encrypted?: boolean }).encrypted === true;
  }

  /** Called once when the connection ends, with the reason. */
  onClose(listener: (err: Error) => void): void {
    if (this.closedWith) listener(this.closedWith);
    else this.closeListeners.push(listener);
  }

  /** onread mode: bytes in the reused read buffer. */
  private onRead(view: Buffer): void {
    if (this.closedWith) return;
    if (this.sink) this.sink(view, true);
    else this.onData(Buffer.from(view)); // the handshake keeps what it reads
  }

  private readonly onData = (buf: Buffer): void => {
    if (this.sink) {
      this.sink(buf, false);
      return;
    }
    this.q.push(buf);
    if (this.q.length > HANDSHAKE_BUFFER_LIMIT) {
      // Handshake messages are small; a server flooding us here is broken.
      this.destroy(new NbdProtocolError(`NBD server at ${this.peer} sent over ${HANDSHAKE_BUFFER_LIMIT} unrequested bytes during the handshake`));
      return;
    }
    this.serveReader();
  };

  private readonly onDrain = (): void => {
    this.blocked = false;
    while (!this.blocked && this.waiting.length > 0) {
      const w = this.waiting.shift() as Waiting;
      this.writeNow(w.bufs);
      w.resolve();
    }
  };

  private readonly onError = (err: Error): void => {
    this.socketError ??= err;
  };

  private readonly onEnd = (): void => {
    // The server half-closed; nothing more will arrive. Close our side too.
    this.socket.end();
  };

  private readonly onCloseEvent = (): void => {
    const why = this.socketError ? `: ${this.socketError.message}` : '';
    this.shutdown(new NbdConnectionError(`connection to NBD server at ${this.peer} closed${why}`, { cause: this.socketError }));
  };

  private attach(s: Duplex): void {
    s.on('data', this.onData);
    s.on('drain', this.onDrain);
    s.on('error', this.onError);
    s.on('end', this.onEnd);
    s.on('close', this.onCloseEvent);
  }

  private detach(s: Duplex): void {
    s.off('data', this.onData);
    s.off('drain', this.onDrain);
    s.off('error', this.onError);
    s.off('end', this.onEnd);
    s.off('close', this.onCloseEvent);
  }

  private shutdown(err: Error): void {
    if (this.closedWith) return;
    this.closedWith = err;
    if (this.reader) {
      const r = this.reader;
      this.reader = undefined;
      r.reject(err);
    }
    for (const w of this.waiting.splice(0)) w.reject(err);
    for (const l of this.closeListeners.splice(0)) l(err);
  }

  private serveReader(): void {
    if (this.reader && this.q.length >= this.reader.n) {
      const r = this.reader;
      this.reader = undefined;
      // Copy: handshake messages are small, and callers may keep them.
      r.resolve(Buffer.from(this.q.take(r.n)));
    }
  }

  /** Handshake mode: resolve with exactly n bytes. */
  readExact(n: number): Promise<Buffer> {
    if (this.sink) return Promise.reject(new Error('Transport.readExact in transmission mode'));
    if (this.reader) return Promise.reject(new Error('Transport.readExact: a read is already pending'));
    if (this.q.length >= n) return Promise.resolve(Buffer.from(this.q.take(n)));
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise<Buffer>((resolve, reject) => {
      this.reader = { n, resolve, reject };
    });
  }

  /**
   * Messages sent in one tick leave in one write: the socket stays corked
   * until the next tick (a reader issuing 16 requests makes one syscall).
   */
  private writeNow(bufs: Buffer[]): void {
    const s = this.socket;
    if (!this.corked) {
      this.corked = true;
      s.cork();
      process.nextTick(() => {
        this.corked = false;
        s.uncork();
      });
    }
    let ok = true;
    for (const b of bufs) ok = s.write(b);
    if (!ok || s.writableNeedDrain) this.blocked = true;
  }

  /** Write one message (its buffers back to back). Resolves once handed to the socket. */
  send(bufs: Buffer[]): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.blocked || this.waiting.length > 0) {
      return new Promise<void>((resolve, reject) => this.waiting.push({ bufs, resolve, reject }));
    }
    this.writeNow(bufs);
    return Promise.resolve();
  }

  /** Upgrade to TLS after the server ACKed NBD_OPT_STARTTLS. */
  async upgradeTls(opts: NbdTlsOptions, host?: string): Promise<void> {
    if (this.q.length > 0) {
      throw new NbdProtocolError(`server sent ${this.q.length} unexpected bytes after acknowledging NBD_OPT_STARTTLS`);
    }
    const raw = this.socket;
    this.detach(raw);
    // Keep a listener so a raw-socket error during the TLS handshake is not unhandled.
    const swallow = (): void => {};
    raw.on('error', swallow);
    try {
      this.socket = await startTls(raw, opts, host);
    } catch (err) {
      raw.destroy();
      this.shutdown(err as Error);
      throw err;
    }
    this.attach(this.socket);
  }

  /** Switch to transmission mode: all further bytes (and any already queued) go to `sink`. */
  beginStreaming(sink: StreamSink): void {
    this.sink = sink;
    for (const b of this.q.drain()) sink(b, false);
  }

  /** Polite close: flush what was written, end, and wait for the server to close (destroying after `graceMs`). */
  end(graceMs = 10_000): Promise<void> {
    return new Promise<void>((resolve) => {
      if (this.closedWith) return resolve();
      const timer = setTimeout(() => this.socket.destroy(), graceMs);
      timer.unref();
      this.onClose(() => {
        clearTimeout(timer);
        resolve();
      });
      this.socket.end();
    });
  }

  /** Hard close. */
  destroy(err?: Error): void {
    if (err) this.shutdown(err);
    this.socket.destroy();
  }
}
