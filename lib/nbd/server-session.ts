/**
 * Transmission phase of one client connection (doc/proto.md, "Transmission"):
 * reads requests, runs them against the Export concurrently, and answers
 * each by its cookie in whatever order they finish.
 *
 * Memory and backpressure: a new request header is read only while fewer
 * than `maxInFlight` requests (and `maxInFlightBytes` of payload) are being
 * served and the socket does not need draining, so a client that does not
 * read its replies stops being read from, and TCP pushes back on it.
 * A client that vanishes mid-request only makes its replies go nowhere.
 */
import type { Duplex } from 'node:stream';
import type { Chunk } from '../chunk.js';
import { ExportError, type Export } from './export.js';
import { blockSizeOf, isReadOnly } from './server-export-info.js';
import { RequestRefused, errnoOf, messageOf } from './server-errors.js';
import { MAX_DESCRIPTORS, allocationDescriptors, readPieces } from './server-extents.js';
import type { Negotiated } from './server-handshake.js';
import type { ServerLogger } from './server-log.js';
import { isLending } from './server-read-loans.js';
import { ConnectionClosedError, type SocketReader } from './server-reader.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_DEFAULT_MAX_PAYLOAD,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FUA,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REQUEST_MAGIC,
  REQUEST_HEADER_SIZE,
  commandName,
  encodeBlockStatus,
  encodeErrorChunk,
  encodeOffsetDataPrefix,
  encodeOffsetHole,
  encodeSimpleReply,
  encodeStructuredReplyHeader,
  errnoName,
} from './protocol.js';

export interface SessionLimits {
  maxPayload: number;
  maxInFlight: number;
  maxInFlightBytes: number;
}

interface Request {
  type: number;
  flags: number;
  cookie: bigint;
  offset: number;
  length: number;
  /** offset + length does not fit the export (offset may be beyond 2^53). */
  outOfRange: boolean;
  data?: Buffer;
  /** A read's reply is written out: its bytes no longer count as in flight. */
  replied?: () => void;
  /** A read's reply is queued with `replied` to run once it is written. */
  replyQueued?: () => void;
}

/** Shared source of zeros for holes in simple replies and emulated write-zeroes. */
const ZEROS = Buffer.alloc(1024 * 1024);

const WRITES = new Set([NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_CMD_TRIM]);

export class TransmissionSession {
  private readonly socket: Duplex;
  private readonly reader: SocketReader;
  private readonly exp: Export;
  private readonly structured: boolean;
  private readonly flags: number;
  private readonly minBlock: number;
  private readonly maxPayload: number;
  private inFlight = 0;
  private inFlightBytes = 0;
  private stopping = false;
  private wake: (() => void) | undefined;
  private readonly onDrain = (): void => this.notify();

  constructor(
    private readonly n: Negotiated,
    private readonly limits: SessionLimits,
    private readonly log: ServerLogger,
    private readonly peer: string,
  ) {
    this.socket = n.socket;
    this.reader = n.reader;
    this.exp = n.export;
    this.structured = n.structuredReplies;
    this.flags = n.transmissionFlags;
    const bs = blockSizeOf(n.export, limits.maxPayload);
    this.minBlock = bs.minimum;
    this.maxPayload = bs.maximum;
  }

  /** Serve requests until the client disconnects or stop() is called; then close the socket. */
  async run(): Promise<void> {
    this.socket.on('drain', this.onDrain);
    try {
      await this.requestLoop();
    } catch (err) {
      if (err instanceof ConnectionClosedError) {
        if (!this.stopping) this.log('debug', `${this.peer}: client went away`);
      } else {
        this.log('warn', `${this.peer}: dropping connection: ${(err as Error).message}`);
      }
    } finally {
      this.stopping = true;
      while (this.inFlight > 0) await this.waitForChange();
      this.socket.off('drain', this.onDrain);
      this.reader.detach();
      closeSocket(this.socket);
    }
  }

  /** Stop reading requests; in-flight ones are still answered, then the socket closes. */
  stop(): void {
    this.stopping = true;
    this.reader.cancel('server is shutting down');
    this.notify();
  }

  private async requestLoop(): Promise<void> {
    for (;;) {
      while (!this.stopping && !this.hasCapacity()) await this.waitForChange();
      if (this.stopping) return;
      const req = this.parseHeader(await this.reader.read(REQUEST_HEADER_SIZE, 'request header'));
      if (req.type === NBD_CMD_DISC) {
        this.log('debug', `${this.peer}: NBD_CMD_DISC`);
        return;
      }
      if (req.type === NBD_CMD_WRITE) {
        if (req.length > Math.max(this.maxPayload, NBD_DEFAULT_MAX_PAYLOAD)) {
          throw new Error(`NBD_CMD_WRITE of ${req.length} bytes exceeds the maximum payload`);
        }
        if (req.length > this.maxPayload) {
          await this.reader.skip(req.length, 'oversized write payload');
          this.dispatch(req, () => {
            throw new RequestRefused(NBD_EINVAL, `write of ${req.length} bytes exceeds maximum payload ${this.maxPayload}`);
          });
          continue;
        }
        req.data = await this.reader.read(req.length, 'write payload');
      }
      this.dispatch(req, () => this.handle(req));
    }
  }

  private hasCapacity(): boolean {
    if (this.socket.writableNeedDrain) return false;
    if (this.inFlight === 0) return true;
    return this.inFlight < this.limits.maxInFlight && this.inFlightBytes < this.limits.maxInFlightBytes;
  }

  private parseHeader(buf: Buffer): Request {
    const magic = buf.readUInt32BE(0);
    if (magic !== NBD_REQUEST_MAGIC) throw new Error(`bad request magic 0x${magic.toString(16)}`);
    const offset = buf.readBigUInt64BE(16);
    const length = buf.readUInt32BE(24);
    // Compare in bigint: a hostile offset may not fit a JS number.
    const outOfRange = offset + BigInt(length) > BigInt(this.exp.size);
    return {
      flags: buf.readUInt16BE(4),
      type: buf.readUInt16BE(6),
      cookie: buf.readBigUInt64BE(8),
      offset: outOfRange ? Number.MAX_SAFE_INTEGER : Number(offset),
      length,
      outOfRange,
    };
  }

  private dispatch(req: Request, work: () => Promise<void> | void): void {
    let weight = req.type === NBD_CMD_READ || req.type === NBD_CMD_WRITE ? req.length : 0;
    this.inFlight++;
    this.inFlightBytes += weight;
    // A read's bytes count until its reply has left through the socket: replies queued there are memory too.
    const settle = (): void => {
      this.inFlightBytes -= weight;
      weight = 0;
      this.notify();
    };
    let replyQueued = false;
    req.replied = settle;
    req.replyQueued = () => {
      replyQueued = true;
    };
    void (async () => {
      try {
        await work();
      } catch (err) {
        replyQueued = false;
        this.replyError(req, err);
      } finally {
        this.inFlight--;
        if (!replyQueued) settle();
        this.notify();
      }
    })();
  }

  // ---- commands -------------------------------------------------------------

  private async handle(req: Request): Promise<void> {
    this.check(req);
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
    switch (req.type) {
      case NBD_CMD_READ:
        return this.read(req);
      case NBD_CMD_WRITE:
        if (req.length > 0) await this.exp.write!(req.offset, req.data!);
        break;
      case NBD_CMD_WRITE_ZEROES:
        await this.writeZeroes(req);
        break;
      case NBD_CMD_TRIM:
        // A hint only: a backend that cannot discard simply keeps the data.
        if (this.exp.trim && req.length > 0) await this.exp.trim(req.offset, req.length);
        break;
      case NBD_CMD_FLUSH:
        await this.exp.flush?.();
        break;
      case NBD_CMD_CACHE:
        break; // Advisory prefetch; nothing to gain for our backends.
      case NBD_CMD_BLOCK_STATUS:
        return this.blockStatus(req);
    }
    if (fua && WRITES.has(req.type)) await this.exp.flush?.();
    this.write(encodeSimpleReply(req.cookie, 0));
  }

  /** Refuse what the spec says to refuse, before the export sees it. */
  private check(req: Request): void {
    const name = commandName(req.type);
    let allowed = this.flags & NBD_FLAG_SEND_FUA ? NBD_CMD_FLAG_FUA : 0;
    switch (req.type) {
      case NBD_CMD_READ:
        if (this.flags & NBD_FLAG_SEND_DF) allowed |= NBD_CMD_FLAG_DF;
        break;
      case NBD_CMD_WRITE_ZEROES:
        allowed |= NBD_CMD_FLAG_NO_HOLE;
        break;
      case NBD_CMD_BLOCK_STATUS:
        allowed |= NBD_CMD_FLAG_REQ_ONE;
        break;
      case NBD_CMD_WRITE:
      case NBD_CMD_TRIM:
      case NBD_CMD_FLUSH:
      case NBD_CMD_CACHE:
        break;
      default:
        throw new RequestRefused(NBD_EINVAL, `unknown command ${req.type}`);
    }
    if (req.flags & ~allowed) {
      throw new RequestRefused(NBD_EINVAL, `${name}: unsupported flags 0x${req.flags.toString(16)}`);
    }
    if (WRITES.has(req.type) && isReadOnly(this.exp)) {
      throw new RequestRefused(NBD_EPERM, `${name}: export is read-only`);
    }
    if (req.type === NBD_CMD_FLUSH) return;
    if (req.outOfRange) {
      const errno = req.type === NBD_CMD_WRITE || req.type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
      throw new RequestRefused(errno, `${name}: range beyond the end of the ${this.exp.size}-byte export`);
    }
    if (this.minBlock > 1 && (req.offset % this.minBlock !== 0 || req.length % this.minBlock !== 0)) {
      throw new RequestRefused(NBD_EINVAL, `${name}: not aligned to ${this.minBlock} bytes`);
    }
    if (req.type === NBD_CMD_READ && req.length > this.maxPayload) {
      const errno = this.structured ? NBD_EOVERFLOW : NBD_EINVAL;
      throw new RequestRefused(errno, `read of ${req.length} bytes exceeds maximum payload ${this.maxPayload}`);
    }
    if (req.type === NBD_CMD_BLOCK_STATUS) {
      if (this.n.allocationContextId === undefined) {
        throw new RequestRefused(NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS without a negotiated meta context');
      }
      if (req.length === 0) throw new RequestRefused(NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS of length 0');
    }
  }

  private async read(req: Request): Promise<void> {
    if (req.length === 0) {
      this.sendRead(req, [], undefined);
      return;
    }
    const result = await this.exp.read(req.offset, req.length);
    const exp = this.exp;
    // A lending export gets its buffers back once the socket is done with them (or the reply is dropped).
    let handedBack = false;
    const handBack = (): void => {
      if (handedBack) return;
      handedBack = true;
      if (isLending(exp)) exp.releaseRead(result);
      req.replied?.();
    };
    let pieces: Chunk[];
    try {
      pieces = readPieces(result, req.offset, req.length);
    } catch (err) {
      if (isLending(exp)) exp.releaseRead(result);
      throw err;
    }
    req.replyQueued?.();
    this.sendRead(req, pieces, handBack);
  }

  /** Queue the reply to a read; `written` runs once its bytes are no longer needed. */
  private sendRead(req: Request, pieces: Chunk[], written: (() => void) | undefined): void {
    if (!this.structured) {
      this.writeAll([encodeSimpleReply(req.cookie, 0), ...pieces.flatMap(bytesOf)], written);
      return;
    }
    if (pieces.length === 0) {
      this.writeChunk(req.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, []);
      written?.();
      return;
    }
    if (req.flags & NBD_CMD_FLAG_DF && pieces.length > 1) {
      // "Don't fragment": one data chunk with the holes written out as zeros.
      const merged = Buffer.concat(pieces.flatMap(bytesOf), req.length);
      written?.();
      this.writeChunk(req.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, [encodeOffsetDataPrefix(req.offset), merged]);
      return;
    }
    this.socket.cork();
    pieces.forEach((p, i) => {
      const last = i === pieces.length - 1;
      const flags = last ? NBD_REPLY_FLAG_DONE : 0;
      if (p.zero) {
        this.writeChunk(req.cookie, flags, NBD_REPLY_TYPE_OFFSET_HOLE, [encodeOffsetHole(p.offset, p.length)], last ? written : undefined);
      } else {
        this.writeChunk(req.cookie, flags, NBD_REPLY_TYPE_OFFSET_DATA, [encodeOffsetDataPrefix(p.offset), p.data!], last ? written : undefined);
      }
    });
    this.socket.uncork();
  }

  private async writeZeroes(req: Request): Promise<void> {
    if (req.length === 0) return;
    if (this.exp.writeZeroes) {
      await this.exp.writeZeroes(req.offset, req.length, { noHole: (req.flags & NBD_CMD_FLAG_NO_HOLE) !== 0 });
      return;
    }
    for (let at = req.offset, end = req.offset + req.length; at < end; at += ZEROS.length) {
      await this.exp.write!(at, ZEROS.subarray(0, Math.min(ZEROS.length, end - at)));
    }
  }

  private async blockStatus(req: Request): Promise<void> {
    const limit = req.flags & NBD_CMD_FLAG_REQ_ONE ? 1 : MAX_DESCRIPTORS;
    const extents = this.exp.blockStatus
      ? await this.exp.blockStatus(req.offset, req.length)
      : [{ offset: req.offset, length: req.length, flags: 0 }];
    const descriptors = allocationDescriptors(extents, req.offset, req.length, limit);
    const payload = encodeBlockStatus(this.n.allocationContextId!, descriptors);
    this.writeChunk(req.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, [payload]);
  }

  // ---- replies --------------------------------------------------------------

  private replyError(req: Request, err: unknown): void {
    const errno = err instanceof RequestRefused ? err.errno : errnoOf(err);
    const message = messageOf(err);
    const level = err instanceof RequestRefused || err instanceof ExportError ? 'debug' : 'warn';
    this.log(level, `${this.peer}: ${commandName(req.type)} at ${req.offset} (${req.length} bytes) failed with ${errnoName(errno)}: ${message}`);
    if (this.structured) {
      this.writeChunk(req.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, [encodeErrorChunk(errno, message)]);
    } else {
      this.write(encodeSimpleReply(req.cookie, errno));
    }
  }

  private writeChunk(cookie: bigint, flags: number, type: number, payload: Buffer[], written?: () => void): void {
    const length = payload.reduce((sum, b) => sum + b.length, 0);
    this.writeAll([encodeStructuredReplyHeader({ flags, type, cookie, length }), ...payload], written);
  }

  /**
   * Queue buffers back to back (one reply must never interleave with
   * another). `written` runs once the socket has let go of them: written
   * out, failed, or never queued on a closed socket.
   */
  private writeAll(buffers: Buffer[], written?: () => void): void {
    if (this.socket.destroyed || this.socket.writableEnded) {
      written?.();
      return;
    }
    this.socket.cork();
    // Writes complete in order, so the last one's callback covers them all.
    buffers.forEach((b, i) => (i === buffers.length - 1 && written ? this.socket.write(b, () => written()) : this.socket.write(b)));
    this.socket.uncork();
  }

  private write(buf: Buffer): void {
    this.writeAll([buf]);
  }

  private waitForChange(): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
    });
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

/** The bytes of a read piece: its data, or zeros for a hole. */
function bytesOf(piece: Chunk): Buffer[] {
  if (!piece.zero) return [piece.data!];
  const out: Buffer[] = [];
  for (let left = piece.length; left > 0; left -= ZEROS.length) out.push(ZEROS.subarray(0, Math.min(ZEROS.length, left)));
  return out;
}

/** How long a closing connection may take to flush before it is cut. */
const CLOSE_GRACE_MS = 30_000;

/** Flush what is queued, then close; a TLS socket sends close_notify first. */
export function closeSocket(socket: Duplex): void {
  if (socket.destroyed) return;
  socket.end(() => socket.destroy());
  // A peer that never reads would keep the flush (and the socket) pending forever.
  setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
}
