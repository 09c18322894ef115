/**
 * NbdClient: one NBD connection, modelled on libnbd. The connection is an
 * explicit state machine:
 *
 *   handshake -> transmission -> closing -> dead
 *
 * `NbdClient.connect()` runs the handshake (fixed newstyle, STARTTLS when
 * asked, structured replies, meta contexts, NBD_OPT_GO with block sizes)
 * and resolves in `transmission`. Commands may then be issued concurrently;
 * each is matched to its reply by cookie. `disconnect()` waits for requests
 * in flight, sends NBD_CMD_DISC and closes (`closing`, then `dead`). A lost
 * connection or a protocol violation by the server moves straight to
 * `dead` and rejects every request in flight at once.
 *
 * Errors: NbdError (the server failed a command; carries its errno),
 * NbdHandshakeError, NbdProtocolError, NbdConnectionError, NbdUsageError
 * (a call the export does not allow; nothing was sent).
 */
import { withHandshake } from './connect.js';
import type { NbdBlockDevice } from './device.js';
import { NbdConnectionError, NbdHandshakeError, NbdProtocolError, NbdUsageError } from './errors.js';
import {
  abortHandshake,
  exchangeGreeting,
  listExports,
  listMetaContexts,
  negotiate,
  startTlsOption,
  structuredRepliesOption,
  type BlockSizeConstraints,
  type Negotiated,
} from './handshake.js';
import type {
  BlockStatusExtent,
  BlockStatusResult,
  NbdClientOptions,
  NbdClientState,
  NbdTarget,
  WriteOptions,
  WriteZeroesOptions,
} from './options.js';
import { PendingRequest } from './request.js';
import { ReplyParser } from './replyParser.js';
import type { Transport } from './transport.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_DEFAULT_MAX_PAYLOAD,
  NBD_ESHUTDOWN,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_ROTATIONAL,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  commandName,
  encodeRequestHeader,
} from './protocol.js';

export type { BlockStatusExtent, BlockStatusResult, NbdClientOptions, NbdClientState, NbdTarget, WriteOptions, WriteZeroesOptions };

/** Block status queries longer than this are split (the request length is a u32). */
const MAX_BLOCK_STATUS_LENGTH = 2 ** 31;

export class NbdClient implements NbdBlockDevice {
  private _state: NbdClientState = 'handshake';
  private readonly transport: Transport;
  private readonly negotiated: Negotiated;
  private readonly parser: ReplyParser;
  private readonly inflight = new Map<bigint, PendingRequest<unknown>>();
  private readonly contextNames = new Map<number, string>();
  private nextCookie = 1n;
  private deathReason?: Error;
  private idleWaiters: Array<() => void> = [];
  private closeListeners: Array<(err?: Error) => void> = [];

  /** Smallest request alignment (the server's minimum block size, or 1). */
  readonly minimumBlockSize: number;
  /** Alignment the server prefers (default 4096). */
  readonly preferredBlockSize: number;
  /** Largest READ/WRITE payload: the server's maximum payload, capped at 32 MiB (the default). */
  readonly maxRequestSize: number;

  private constructor(transport: Transport, negotiated: Negotiated) {
    this.transport = transport;
    this.negotiated = negotiated;
    for (const [name, id] of negotiated.metaContexts) this.contextNames.set(id, name);
    const bs = negotiated.blockSize;
    this.minimumBlockSize = bs && bs.minimum > 0 ? bs.minimum : 1;
    this.preferredBlockSize = bs && bs.preferred > 0 ? bs.preferred : 4096;
    let max = bs && bs.maximum > 0 ? Math.min(bs.maximum, NBD_DEFAULT_MAX_PAYLOAD) : NBD_DEFAULT_MAX_PAYLOAD;
    max -= max % this.minimumBlockSize;
    this.maxRequestSize = Math.max(max, this.minimumBlockSize);
    this.parser = new ReplyParser({
      structuredReplies: negotiated.structuredReplies,
      contextIds: new Set(negotiated.metaContexts.values()),
      lookup: (cookie) => this.inflight.get(cookie),
      done: (req) => this.settled(req),
    });
    this._state = 'transmission';
    transport.onClose((err) => this.onTransportClose(err));
    transport.beginStreaming((buf, transient) => {
      try {
        this.parser.feed(buf, transient);
      } catch (err) {
        this.kill(err as Error);
      }
    });
  }

  /** Connect and complete the handshake; resolves in state 'transmission'. */
  static async connect(target: NbdTarget, opts: NbdClientOptions = {}): Promise<NbdClient> {
    return await withHandshake(target, opts, async (io, t, r) => {
      const greeting = await exchangeGreeting(io);
      try {
        const negotiated = await negotiate(io, greeting, {
          exportName: r.exportName,
          tls: r.tls,
          host: r.host,
          structuredReplies: opts.structuredReplies,
          metaContexts: opts.metaContexts,
        });
        return new NbdClient(t, negotiated);
      } catch (err) {
        // A refusal leaves the connection in option haggling: end it politely.
        if (err instanceof NbdHandshakeError && greeting.fixedNewstyle && !t.closed && err.option !== 'NBD_OPT_STARTTLS') {
          await abortHandshake(io);
        }
        throw err;
      }
    });
  }

  /** NBD_OPT_LIST: the server's exports (name, description), then NBD_OPT_ABORT. */
  static async listExports(target: NbdTarget, opts: NbdClientOptions = {}): Promise<Array<{ name: string; description: string }>> {
    return await withHandshake(target, opts, async (io, _t, r) => {
      const g = await exchangeGreeting(io);
      if (!g.fixedNewstyle) throw new NbdHandshakeError('the NBD server does not speak fixed newstyle negotiation; it cannot list exports');
      if (r.tls) await startTlsOption(io, g, r.tls, r.host);
      const list = await listExports(io);
      await abortHandshake(io);
      return list;
    });
  }

  /** NBD_OPT_LIST_META_CONTEXT for the export (all contexts, or those matching `queries`), then NBD_OPT_ABORT. */
  static async listMetaContexts(target: NbdTarget, queries: string[] = [], opts: NbdClientOptions = {}): Promise<string[]> {
    return await withHandshake(target, opts, async (io, _t, r) => {
      const g = await exchangeGreeting(io);
      if (!g.fixedNewstyle) throw new NbdHandshakeError('the NBD server does not speak fixed newstyle negotiation; it cannot list meta contexts');
      if (r.tls) await startTlsOption(io, g, r.tls, r.host);
      // Servers may refuse meta context options before structured replies.
      await structuredRepliesOption(io);
      const list = await listMetaContexts(io, r.exportName, queries);
      await abortHandshake(io);
      return list;
    });
  }

  // ---- state and export properties ----------------------------------------

  get state(): NbdClientState {
    return this._state;
  }

  /** Why the connection died, once state is 'dead' after a failure. */
  get error(): Error | undefined {
    return this.deathReason;
  }

  /** Export name as the server calls it. */
  get exportName(): string {
    return this.negotiated.exportName;
  }

  get description(): string | undefined {
    return this.negotiated.description;
  }

  /** Export size in bytes. */
  get size(): number {
    return this.negotiated.size;
  }

  /** Raw transmission flags (NBD_FLAG_*). */
  get transmissionFlags(): number {
    return this.negotiated.transmissionFlags;
  }

  /** The server's size constraints as sent (undefined if it sent none). */
  get blockSize(): BlockSizeConstraints | undefined {
    return this.negotiated.blockSize;
  }

  get structuredReplies(): boolean {
    return this.negotiated.structuredReplies;
  }

  get tls(): boolean {
    return this.negotiated.tls;
  }

  /** Selected meta contexts: name -> id. */
  get metaContexts(): ReadonlyMap<string, number> {
    return this.negotiated.metaContexts;
  }

  canMetaContext(name: string): boolean {
    return this.negotiated.metaContexts.has(name);
  }

  private flag(f: number): boolean {
    return (this.negotiated.transmissionFlags & f) !== 0;
  }

  get isReadOnly(): boolean {
    return this.flag(NBD_FLAG_READ_ONLY);
  }
  get canWrite(): boolean {
    return !this.isReadOnly;
  }
  get canFlush(): boolean {
    return this.flag(NBD_FLAG_SEND_FLUSH);
  }
  get canFua(): boolean {
    return this.flag(NBD_FLAG_SEND_FUA);
  }
  get isRotational(): boolean {
    return this.flag(NBD_FLAG_ROTATIONAL);
  }
  get canTrim(): boolean {
    return this.flag(NBD_FLAG_SEND_TRIM) && this.canWrite;
  }
  get canWriteZeroes(): boolean {
    return this.flag(NBD_FLAG_SEND_WRITE_ZEROES) && this.canWrite;
  }
  get canFastZero(): boolean {
    return this.flag(NBD_FLAG_SEND_FAST_ZERO) && this.canWriteZeroes;
  }
  get canDf(): boolean {
    return this.flag(NBD_FLAG_SEND_DF);
  }
  get canMultiConn(): boolean {
    return this.flag(NBD_FLAG_CAN_MULTI_CONN);
  }
  get canCache(): boolean {
    return this.flag(NBD_FLAG_SEND_CACHE);
  }
  get canBlockStatus(): boolean {
    return this.negotiated.metaContexts.size > 0;
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.inflight.size;
  }

  /** Called once when the connection is gone; `err` is set unless it was a clean disconnect(). */
  onClose(listener: (err?: Error) => void): void {
    if (this._state === 'dead') listener(this.deathReason);
    else this.closeListeners.push(listener);
  }

  // ---- commands ----------------------------------------------------------

  /**
   * NBD_CMD_READ: `length` bytes at `offset` (length <= maxRequestSize).
   * Holes come back as zeroes. With `into`, the bytes land in its first
   * `length` bytes (a buffer the caller reuses) and the result is that view;
   * do not touch `into` until the promise settles.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.guard(() => {
      this.checkRange(NBD_CMD_READ, offset, length, true);
      if (length > this.maxRequestSize) throw new NbdUsageError(`NBD_CMD_READ of ${length} bytes exceeds the maximum request size ${this.maxRequestSize}`);
      if (into && into.length < length) throw new NbdUsageError(`NBD_CMD_READ of ${length} bytes into a buffer of ${into.length} bytes`);
      const buffer = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
      return this.submit<Buffer>(NBD_CMD_READ, 0, offset, length, { buffer, result: () => buffer });
    });
  }

  /** NBD_CMD_WRITE: `data` at `offset`. Do not modify `data` until the promise settles. */
  write(offset: number, data: Buffer, opts: WriteOptions = {}): Promise<void> {
    return this.guard(() => {
      this.requireWritable(NBD_CMD_WRITE);
      this.checkRange(NBD_CMD_WRITE, offset, data.length, true);
      if (data.length > this.maxRequestSize) throw new NbdUsageError(`NBD_CMD_WRITE of ${data.length} bytes exceeds the maximum request size ${this.maxRequestSize}`);
      return this.submit<void>(NBD_CMD_WRITE, this.fuaFlag(opts), offset, data.length, { payload: data, result: () => undefined });
    });
  }

  /** NBD_CMD_WRITE_ZEROES over [offset, offset+length) (no payload; length up to 4 GiB - 1). */
  writeZeroes(offset: number, length: number, opts: WriteZeroesOptions = {}): Promise<void> {
    return this.guard(() => {
      this.requireWritable(NBD_CMD_WRITE_ZEROES);
      if (!this.flag(NBD_FLAG_SEND_WRITE_ZEROES)) throw new NbdUsageError('the NBD server does not support NBD_CMD_WRITE_ZEROES');
      if (opts.fastZero && !this.canFastZero) throw new NbdUsageError('the NBD server does not support NBD_CMD_FLAG_FAST_ZERO');
      this.checkRange(NBD_CMD_WRITE_ZEROES, offset, length, true);
      let flags = this.fuaFlag(opts);
      if (opts.noHole) flags |= NBD_CMD_FLAG_NO_HOLE;
      if (opts.fastZero) flags |= NBD_CMD_FLAG_FAST_ZERO;
      return this.submit<void>(NBD_CMD_WRITE_ZEROES, flags, offset, length, { result: () => undefined });
    });
  }

  /** NBD_CMD_TRIM: the range is no longer needed (its contents become unspecified). */
  trim(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    return this.guard(() => {
      this.requireWritable(NBD_CMD_TRIM);
      if (!this.flag(NBD_FLAG_SEND_TRIM)) throw new NbdUsageError('the NBD server does not support NBD_CMD_TRIM');
      this.checkRange(NBD_CMD_TRIM, offset, length, true);
      return this.submit<void>(NBD_CMD_TRIM, this.fuaFlag(opts), offset, length, { result: () => undefined });
    });
  }

  /** NBD_CMD_FLUSH: every write already answered is on stable storage when this resolves. */
  flush(): Promise<void> {
    return this.guard(() => {
      this.assertTransmission(NBD_CMD_FLUSH);
      if (!this.canFlush) throw new NbdUsageError('the NBD server does not support NBD_CMD_FLUSH');
      return this.submit<void>(NBD_CMD_FLUSH, 0, 0, 0, { result: () => undefined });
    });
  }

  /** NBD_CMD_CACHE: a hint to prefetch the range. */
  cache(offset: number, length: number): Promise<void> {
    return this.guard(() => {
      if (!this.canCache) throw new NbdUsageError('the NBD server does not support NBD_CMD_CACHE');
      this.checkRange(NBD_CMD_CACHE, offset, length, true);
      return this.submit<void>(NBD_CMD_CACHE, 0, offset, length, { result: () => undefined });
    });
  }

  /**
   * NBD_CMD_BLOCK_STATUS once: extents per selected meta context starting at
   * `offset`. The server may describe less than `length` (even differently
   * per context); extents are clipped to the requested range.
   */
  blockStatus(offset: number, length: number, opts: { reqOne?: boolean } = {}): Promise<BlockStatusResult> {
    return this.guard(() => {
      if (!this.canBlockStatus) throw new NbdUsageError('NBD_CMD_BLOCK_STATUS needs meta contexts; connect with metaContexts: [...]');
      this.checkRange(NBD_CMD_BLOCK_STATUS, offset, length, false);
      const len = Math.min(length, MAX_BLOCK_STATUS_LENGTH);
      const end = offset + len;
      return this.submit<BlockStatusResult>(NBD_CMD_BLOCK_STATUS, opts.reqOne ? NBD_CMD_FLAG_REQ_ONE : 0, offset, len, {
        result: (req) => {
          const out: BlockStatusResult = new Map();
          for (const [id, descriptors] of req.statuses) {
            const list: BlockStatusExtent[] = [];
            let at = offset;
            for (const d of descriptors) {
              if (at >= end) break; // the spec lets the last extent run past the request; we clip
              const l = Math.min(d.length, end - at);
              list.push({ offset: at, length: l, flags: d.flags });
              at += l;
            }
            out.set(this.contextNames.get(id) as string, list);
          }
          return out;
        },
      });
    });
  }

  /**
   * Block status for the whole of [offset, offset+length): repeats
   * NBD_CMD_BLOCK_STATUS from the first byte some context left undescribed
   * until every context covers the range.
   */
  async blockStatusRange(offset: number, length: number): Promise<BlockStatusResult> {
    this.checkRange(NBD_CMD_BLOCK_STATUS, offset, length, false);
    const end = offset + length;
    const out: BlockStatusResult = new Map();
    const reached = new Map<string, number>();
    for (const name of this.negotiated.metaContexts.keys()) {
      out.set(name, []);
      reached.set(name, offset);
    }
    let at = offset;
    while (at < end) {
      const part = await this.blockStatus(at, end - at);
      for (const [name, extents] of part) {
        const list = out.get(name) as BlockStatusExtent[];
        let covered = reached.get(name) as number;
        for (const e of extents) {
          const eEnd = e.offset + e.length;
          if (eEnd <= covered) continue; // already known from an earlier round
          const start = Math.max(e.offset, covered);
          list.push({ offset: start, length: eEnd - start, flags: e.flags });
          covered = eEnd;
        }
        reached.set(name, covered);
      }
      const next = Math.min(...reached.values());
      if (next <= at) throw new NbdProtocolError(`block status at offset ${at} made no progress`);
      at = next;
    }
    return out;
  }

  /**
   * Soft disconnect: wait for requests in flight, send NBD_CMD_DISC, close.
   * New commands are refused from now on. Safe to call more than once.
   */
  async disconnect(): Promise<void> {
    if (this._state === 'dead') return;
    if (this._state === 'transmission') this._state = 'closing';
    while (this.inflight.size > 0 && this._state === 'closing') {
      await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    }
    if (this._state !== 'closing') return;
    const header = encodeRequestHeader({ flags: 0, type: NBD_CMD_DISC, cookie: this.nextCookie++, offset: 0, length: 0 });
    try {
      await this.transport.send([header]);
    } catch {
      /* already gone */
    }
    await this.transport.end();
  }

  /** Hard close: drop the connection now; requests in flight are rejected. */
  destroy(): void {
    if (this._state === 'dead') return;
    this.kill(new NbdConnectionError(`connection to NBD server at ${this.transport.peer} was closed by the client`));
  }

  // ---- internals ---------------------------------------------------------

  /** Run checks and submit; a check that throws becomes a rejected promise, so callers see one error path. */
  private guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return fn();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  private fuaFlag(opts: WriteOptions): number {
    if (!opts.fua) return 0;
    if (!this.canFua) throw new NbdUsageError('the NBD server does not support NBD_CMD_FLAG_FUA');
    return NBD_CMD_FLAG_FUA;
  }

  private assertTransmission(type: number): void {
    if (this._state === 'transmission') return;
    const why = this.deathReason ? `: ${this.deathReason.message}` : '';
    throw new NbdConnectionError(`cannot send ${commandName(type)}: the NBD connection is ${this._state}${why}`, { cause: this.deathReason });
  }

  private requireWritable(type: number): void {
    this.assertTransmission(type);
    if (this.isReadOnly) throw new NbdUsageError(`cannot send ${commandName(type)}: export '${this.exportName}' is read-only`);
  }

  private checkRange(type: number, offset: number, length: number, aligned: boolean): void {
    this.assertTransmission(type);
    const name = commandName(type);
    if (!Number.isSafeInteger(offset) || offset < 0) throw new NbdUsageError(`${name}: bad offset ${offset}`);
    if (!Number.isSafeInteger(length) || length <= 0 || length > 0xffffffff) throw new NbdUsageError(`${name}: bad length ${length}`);
    if (offset + length > this.size) {
      throw new NbdUsageError(`${name} [${offset}, +${length}) runs past the end of export '${this.exportName}' (size ${this.size})`);
    }
    const m = this.minimumBlockSize;
    if (aligned && m > 1 && (offset % m !== 0 || length % m !== 0)) {
      throw new NbdUsageError(`${name} [${offset}, +${length}) is not aligned to the server's minimum block size ${m}`);
    }
  }

  private submit<T>(
    type: number,
    flags: number,
    offset: number,
    length: number,
    opts: { buffer?: Buffer; payload?: Buffer; result: (req: PendingRequest<T>) => T },
  ): Promise<T> {
    const cookie = this.nextCookie++;
    const req = new PendingRequest<T>({ cookie, type, offset, length, buffer: opts.buffer, result: opts.result });
    this.inflight.set(cookie, req as PendingRequest<unknown>);
    const header = encodeRequestHeader({ flags, type, cookie, offset, length });
    this.transport.send(opts.payload ? [header, opts.payload] : [header]).catch((err: Error) => {
      if (this.inflight.delete(cookie)) req.fail(err);
    });
    return req.promise;
  }

  private settled(req: PendingRequest<unknown>): void {
    this.inflight.delete(req.cookie);
    // Spec: on ESHUTDOWN the client must soft-disconnect.
    if (req.serverErrno === NBD_ESHUTDOWN && this._state === 'transmission') void this.disconnect();
    if (this.inflight.size === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private kill(err: Error): void {
    if (this._state === 'dead') return;
    this.deathReason ??= err;
    this.transport.destroy(err);
  }

  private onTransportClose(err: Error): void {
    const clean = this._state === 'closing' && this.inflight.size === 0 && !this.deathReason;
    this._state = 'dead';
    if (!clean) this.deathReason ??= err;
    const reason = this.deathReason ?? err;
    for (const req of this.inflight.values()) req.fail(reason);
    this.inflight.clear();
    for (const w of this.idleWaiters.splice(0)) w();
    for (const l of this.closeListeners.splice(0)) l(clean ? undefined : reason);
  }
}
