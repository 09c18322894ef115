/**
 * One request in flight: what was asked (command, offset, length), the
 * result being assembled from its reply chunks (READ data landing in place
 * in one buffer, holes zero-filled; BLOCK_STATUS descriptors per context),
 * and the promise the caller awaits. Chunk methods check the server's
 * answer against the request and throw NbdProtocolError when it lies
 * outside it, overlaps or is incomplete: such a connection is unusable.
 */
import { NbdError, NbdProtocolError } from './errors.js';
import { commandName, errnoName, type BlockStatusDescriptor } from './protocol.js';

export interface ServerError {
  errno: number;
  message?: string;
  offset?: number;
}

export class PendingRequest<T> {
  readonly cookie: bigint;
  readonly type: number;
  readonly offset: number;
  readonly length: number;
  /** READ: the result buffer, filled by data chunks / simple payload. */
  readonly buffer?: Buffer;
  /** READ: covered [start, end) ranges relative to offset, sorted. */
  private covered: Array<[number, number]> = [];
  private coveredBytes = 0;
  /** BLOCK_STATUS: descriptors per context id. */
  readonly statuses = new Map<number, BlockStatusDescriptor[]>();
  private error?: ServerError;
  private settle: { resolve: (v: T) => void; reject: (e: Error) => void };
  readonly promise: Promise<T>;
  private readonly finishValue: (req: PendingRequest<T>) => T;

  constructor(opts: {
    cookie: bigint;
    type: number;
    offset: number;
    length: number;
    buffer?: Buffer;
    result: (req: PendingRequest<T>) => T;
  }) {
    this.cookie = opts.cookie;
    this.type = opts.type;
    this.offset = opts.offset;
    this.length = opts.length;
    this.buffer = opts.buffer;
    this.finishValue = opts.result;
    let settle!: { resolve: (v: T) => void; reject: (e: Error) => void };
    this.promise = new Promise<T>((resolve, reject) => {
      settle = { resolve, reject };
    });
    this.settle = settle;
  }

  get name(): string {
    return commandName(this.type);
  }

  /** Record a server error; the first one wins (later ones rarely add anything). */
  serverError(err: ServerError): void {
    this.error ??= err;
  }

  get failed(): boolean {
    return this.error !== undefined;
  }

  /** The server's error number, if the reply carried one. */
  get serverErrno(): number | undefined {
    return this.error?.errno;
  }

  /**
   * Reserve [offset, offset+length) of a READ for a data or hole chunk;
   * returns the position in `buffer` where its bytes go.
   */
  claim(offset: number, length: number, what: string): number {
    if (!this.buffer) throw new NbdProtocolError(`${what} chunk in reply to ${this.name}`);
    const start = offset - this.offset;
    const end = start + length;
    if (length <= 0 || start < 0 || end > this.length) {
      throw new NbdProtocolError(
        `${what} chunk [${offset}, +${length}) outside ${this.name} request [${this.offset}, +${this.length})`,
      );
    }
    // Binary search the first covered range ending after `start`.
    let lo = 0;
    let hi = this.covered.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.covered[mid][1] <= start) lo = mid + 1;
      else hi = mid;
    }
    if (lo < this.covered.length && this.covered[lo][0] < end) {
      throw new NbdProtocolError(`${what} chunk at offset ${offset} overlaps an earlier chunk of the same ${this.name} reply`);
    }
    // Merge with neighbours to keep the list short (chunks usually arrive in order).
    const prev = lo > 0 ? this.covered[lo - 1] : undefined;
    const next = lo < this.covered.length ? this.covered[lo] : undefined;
    if (prev && prev[1] === start && next && next[0] === end) {
      prev[1] = next[1];
      this.covered.splice(lo, 1);
    } else if (prev && prev[1] === start) {
      prev[1] = end;
    } else if (next && next[0] === end) {
      next[0] = start;
    } else {
      this.covered.splice(lo, 0, [start, end]);
    }
    this.coveredBytes += length;
    return start;
  }

  /** A whole-request payload (simple reply to READ). */
  claimAll(): void {
    this.covered = [[0, this.length]];
    this.coveredBytes = this.length;
  }

  addBlockStatus(contextId: number, descriptors: BlockStatusDescriptor[]): void {
    if (this.statuses.has(contextId)) {
      throw new NbdProtocolError(`two block status chunks for context id ${contextId} in one ${this.name} reply`);
    }
    for (const d of descriptors) {
      if (d.length === 0) throw new NbdProtocolError(`block status descriptor of length 0 for context id ${contextId}`);
    }
    this.statuses.set(contextId, descriptors);
  }

  /** The reply is complete: resolve, or reject with the server's error. Throws NbdProtocolError if incomplete. */
  finish(expectedContexts?: Iterable<number>): void {
    if (this.error) {
      const e = this.error;
      this.settle.reject(
        new NbdError({
          errno: e.errno,
          code: errnoName(e.errno),
          command: this.name,
          offset: e.offset ?? this.offset,
          length: this.length,
          serverMessage: e.message || undefined,
        }),
      );
      return;
    }
    if (this.buffer && this.coveredBytes !== this.length) {
      throw new NbdProtocolError(
        `${this.name} reply at offset ${this.offset} ended with ${this.coveredBytes} of ${this.length} bytes`,
      );
    }
    if (expectedContexts) {
      for (const id of expectedContexts) {
        if (!this.statuses.has(id)) {
          throw new NbdProtocolError(`${this.name} reply at offset ${this.offset} lacks context id ${id}`);
        }
      }
    }
    this.settle.resolve(this.finishValue(this));
  }

  fail(err: Error): void {
    this.settle.reject(err);
  }
}
