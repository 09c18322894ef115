/**
 * Incremental parser of the transmission-phase byte stream from the server:
 * simple replies and structured reply chunks, in any order and split at any
 * byte. READ payloads are copied once, from the socket's buffers into the
 * request's result buffer; other payloads (block status, errors) are small
 * and gathered whole. Anything the spec calls for a hard disconnect on
 * (bad magic, unknown cookie, chunk type unexpected for the command,
 * inconsistent lengths) throws NbdProtocolError out of feed().
 */
import { ByteQueue } from './byteQueue.js';
import { NbdProtocolError } from './errors.js';
import type { PendingRequest } from './request.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_READ,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  SIMPLE_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE,
  decodeBlockStatus,
  decodeErrorChunk,
  decodeOffsetHole,
  decodeReplyHeader,
  isErrorChunk,
  readSafeU64,
  type StructuredReplyHeader,
} from './protocol.js';

/** Largest non-READ chunk payload we gather: 2^20 block status descriptors plus slack. */
const MAX_GATHERED_PAYLOAD = 4 + 8 * (1 << 20) + 4096;

export interface ReplyParserContext {
  structuredReplies: boolean;
  /** Negotiated meta context ids (block status chunks must name one). */
  contextIds: ReadonlySet<number>;
  lookup(cookie: bigint): PendingRequest<unknown> | undefined;
  /** The reply for `req` is complete (resolved or rejected); forget the cookie. */
  done(req: PendingRequest<unknown>): void;
}

type State =
  | { kind: 'header' }
  | { kind: 'simplePayload'; req: PendingRequest<unknown>; done: number }
  | { kind: 'dataOffset'; req: PendingRequest<unknown>; h: StructuredReplyHeader }
  | { kind: 'dataPayload'; req: PendingRequest<unknown>; h: StructuredReplyHeader; pos: number; left: number }
  | { kind: 'gather'; req: PendingRequest<unknown>; h: StructuredReplyHeader };

export class ReplyParser {
  private readonly q = new ByteQueue();
  private state: State = { kind: 'header' };

  constructor(private readonly ctx: ReplyParserContext) {}

  /** Bytes received but not yet consumed (an incomplete message). */
  get pending(): number {
    return this.q.length;
  }

  /** True between messages: nothing half-received. */
  get idle(): boolean {
    return this.state.kind === 'header' && this.q.length === 0;
  }

  /**
   * Bytes from the server. `transient`: `buf` will be overwritten after this
   * call, so whatever stays queued (an incomplete header or small payload) is copied.
   */
  feed(buf: Buffer, transient = false): void {
    this.q.push(buf);
    while (this.step()) {
      /* keep consuming */
    }
    if (transient) this.q.copyLast();
  }

  private step(): boolean {
    const s = this.state;
    switch (s.kind) {
      case 'header':
        return this.header();
      case 'simplePayload': {
        const buffer = s.req.buffer as Buffer;
        const n = this.q.takeInto(buffer, s.done, buffer.length - s.done);
        s.done += n;
        if (s.done < buffer.length) return false;
        s.req.claimAll();
        this.complete(s.req);
        this.state = { kind: 'header' };
        return true;
      }
      case 'dataOffset': {
        if (this.q.length < 8) return false;
        const offset = readSafeU64(this.q.take(8), 0, 'data chunk offset');
        const dataLength = s.h.length - 8;
        const pos = s.req.claim(offset, dataLength, 'data');
        this.state = { kind: 'dataPayload', req: s.req, h: s.h, pos, left: dataLength };
        return true;
      }
      case 'dataPayload': {
        const n = this.q.takeInto(s.req.buffer as Buffer, s.pos, s.left);
        s.pos += n;
        s.left -= n;
        if (s.left > 0) return false;
        this.endChunk(s.req, s.h);
        return true;
      }
      case 'gather': {
        if (this.q.length < s.h.length) return false;
        this.gathered(s.req, s.h, this.q.take(s.h.length));
        return true;
      }
    }
  }

  private header(): boolean {
    if (this.q.length < 4) return false;
    const magic = this.q.peekUInt32BE(0);
    let size: number;
    if (magic === NBD_SIMPLE_REPLY_MAGIC) size = SIMPLE_REPLY_HEADER_SIZE;
    else if (magic === NBD_STRUCTURED_REPLY_MAGIC) size = STRUCTURED_REPLY_HEADER_SIZE;
    else throw new NbdProtocolError(`reply with bad magic 0x${magic.toString(16).padStart(8, '0')}`);
    if (this.q.length < size) return false;
    const h = decodeReplyHeader(this.q.take(size));
    const req = this.ctx.lookup(h.cookie);
    if (!req) throw new NbdProtocolError(`reply for unknown cookie ${h.cookie}`);

    if (h.kind === 'simple') {
      if (h.error !== 0) {
        req.serverError({ errno: h.error });
        this.complete(req);
        return true;
      }
      if (req.type === NBD_CMD_READ) {
        if (this.ctx.structuredReplies) {
          throw new NbdProtocolError('simple reply to NBD_CMD_READ although structured replies were negotiated');
        }
        this.state = { kind: 'simplePayload', req, done: 0 };
        return true;
      }
      if (req.type === NBD_CMD_BLOCK_STATUS) {
        throw new NbdProtocolError('successful simple reply to NBD_CMD_BLOCK_STATUS');
      }
      this.complete(req);
      return true;
    }

    if (!this.ctx.structuredReplies) {
      throw new NbdProtocolError('structured reply chunk although structured replies were not negotiated');
    }
    const where = `${req.name} reply at offset ${req.offset}`;
    switch (h.type) {
      case NBD_REPLY_TYPE_NONE:
        if (h.length !== 0) throw new NbdProtocolError(`NBD_REPLY_TYPE_NONE chunk with length ${h.length} in ${where}`);
        if (!(h.flags & NBD_REPLY_FLAG_DONE)) throw new NbdProtocolError(`NBD_REPLY_TYPE_NONE chunk without DONE flag in ${where}`);
        this.endChunk(req, h);
        return true;
      case NBD_REPLY_TYPE_OFFSET_DATA:
        if (req.type !== NBD_CMD_READ) throw new NbdProtocolError(`data chunk in ${where}`);
        if (h.length < 9) throw new NbdProtocolError(`data chunk of length ${h.length} in ${where}`);
        if (h.length - 8 > req.length) throw new NbdProtocolError(`data chunk of ${h.length - 8} bytes exceeds ${where} (length ${req.length})`);
        this.state = { kind: 'dataOffset', req, h };
        return true;
      case NBD_REPLY_TYPE_OFFSET_HOLE:
        if (req.type !== NBD_CMD_READ) throw new NbdProtocolError(`hole chunk in ${where}`);
        if (h.length !== 12) throw new NbdProtocolError(`hole chunk of length ${h.length} in ${where}`);
        this.state = { kind: 'gather', req, h };
        return true;
      case NBD_REPLY_TYPE_BLOCK_STATUS:
        if (req.type !== NBD_CMD_BLOCK_STATUS) throw new NbdProtocolError(`block status chunk in ${where}`);
        if (h.length > MAX_GATHERED_PAYLOAD) throw new NbdProtocolError(`block status chunk of ${h.length} bytes in ${where}`);
        this.state = { kind: 'gather', req, h };
        return true;
      default:
        if (!isErrorChunk(h.type)) throw new NbdProtocolError(`unknown structured reply type ${h.type} in ${where}`);
        if (h.length < 6 || h.length > MAX_GATHERED_PAYLOAD) {
          throw new NbdProtocolError(`error chunk of length ${h.length} in ${where}`);
        }
        this.state = { kind: 'gather', req, h };
        return true;
    }
  }

  private gathered(req: PendingRequest<unknown>, h: StructuredReplyHeader, payload: Buffer): void {
    if (h.type === NBD_REPLY_TYPE_OFFSET_HOLE) {
      const hole = decodeOffsetHole(payload);
      const pos = req.claim(hole.offset, hole.length, 'hole');
      (req.buffer as Buffer).fill(0, pos, pos + hole.length);
    } else if (h.type === NBD_REPLY_TYPE_BLOCK_STATUS) {
      const bs = decodeBlockStatus(payload);
      if (!this.ctx.contextIds.has(bs.contextId)) {
        throw new NbdProtocolError(`block status chunk for context id ${bs.contextId}, which was not negotiated`);
      }
      req.addBlockStatus(bs.contextId, bs.descriptors);
    } else {
      // An error chunk; unknown error types count as errors too (spec: consider the reply errored).
      const e = decodeErrorChunk(payload, h.type);
      if (h.type === NBD_REPLY_TYPE_ERROR_OFFSET && e.offset !== undefined) {
        if (e.offset < req.offset || e.offset >= req.offset + Math.max(req.length, 1)) {
          throw new NbdProtocolError(`error offset ${e.offset} outside ${req.name} request [${req.offset}, +${req.length})`);
        }
      }
      req.serverError({ errno: e.error, message: e.message, offset: e.offset });
    }
    this.endChunk(req, h);
  }

  private endChunk(req: PendingRequest<unknown>, h: StructuredReplyHeader): void {
    this.state = { kind: 'header' };
    if (h.flags & NBD_REPLY_FLAG_DONE) this.complete(req);
  }

  private complete(req: PendingRequest<unknown>): void {
    this.ctx.done(req);
    try {
      req.finish(req.type === NBD_CMD_BLOCK_STATUS && !req.failed ? this.ctx.contextIds : undefined);
    } catch (err) {
      req.fail(err as Error);
      throw err;
    }
  }
}
