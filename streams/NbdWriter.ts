/**
 * NbdWriter: a Writable (object mode) of Chunk that writes them to an NBD
 * export, ending with NBD_CMD_FLUSH.
 *
 * In: Chunks (any order). Data chunks become NBD_CMD_WRITE (split at the
 * `requestSize`, default 1 MiB); zero chunks become NBD_CMD_WRITE_ZEROES,
 * or nothing with `targetIsZero` (a fresh image already reads as zero), or
 * plain zero-filled writes on servers without WRITE_ZEROES. Chunks still
 * holding an LZ4 frame (`lz4`) are refused: decompress first. Out: nothing;
 * `bytesWritten` / `bytesZeroed` count progress. Buffers: at most
 * `inFlight` requests (default 8), each keeping its chunk's data alive until
 * the server answers (then `onWritten` gets it back, for its lender to
 * reuse). The first failure (an NbdError carrying the server's
 * errno) destroys the stream; `final` waits for every request, then flushes.
 */
import { Writable } from 'node:stream';
import type { Chunk } from '../lib/chunk.js';
import type { NbdBlockDevice } from '../lib/nbd/device.js';
import { NbdUsageError } from '../lib/nbd/errors.js';

export interface NbdWriterOptions {
  /** Concurrent write requests (default 8). */
  inFlight?: number;
  /** The target already reads as zero everywhere: skip zero chunks. */
  targetIsZero?: boolean;
  /** Send NBD_CMD_FLUSH when finishing (default true, if the server supports it). */
  flush?: boolean;
  /** Data chunks are written in requests of at most this many bytes (default 1 MiB, at most client.maxRequestSize). */
  requestSize?: number;
  /** Called with a data chunk's `data` once the server answered every write of it (not after a failure). */
  onWritten?: (data: Buffer) => void;
}

const DEFAULT_REQUEST_SIZE = 1024 * 1024;

/** WRITE_ZEROES requests are split at this size: lengths are u32 and servers may cap effect lengths. */
const MAX_ZERO_REQUEST = 1024 ** 3;

export class NbdWriter extends Writable {
  private readonly client: NbdBlockDevice;
  private readonly inFlight: number;
  private readonly targetIsZero: boolean;
  private readonly doFlush: boolean;
  private readonly requestSize: number;
  private readonly onWritten: ((data: Buffer) => void) | undefined;
  private readonly running = new Set<Promise<void>>();
  private failure?: Error;
  private zeroBuffer?: Buffer;
  /** Bytes of data written (acknowledged by the server). */
  bytesWritten = 0;
  /** Bytes zeroed with WRITE_ZEROES or zero-filled writes (acknowledged). */
  bytesZeroed = 0;

  constructor(client: NbdBlockDevice, opts: NbdWriterOptions = {}) {
    super({ objectMode: true, highWaterMark: 2 });
    this.client = client;
    this.inFlight = Math.max(1, opts.inFlight ?? 8);
    this.targetIsZero = !!opts.targetIsZero;
    this.doFlush = opts.flush ?? true;
    const size = Math.min(opts.requestSize ?? DEFAULT_REQUEST_SIZE, client.maxRequestSize);
    this.requestSize = Math.max(size - (size % client.minimumBlockSize), client.minimumBlockSize);
    this.onWritten = opts.onWritten;
  }

  override _write(chunk: Chunk, _enc: BufferEncoding, cb: (error?: Error | null) => void): void {
    this.accept(chunk).then(() => cb(), (err: Error) => cb(err));
  }

  override _final(cb: (error?: Error | null) => void): void {
    this.finish().then(() => cb(), (err: Error) => cb(err));
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    // Requests already sent cannot be recalled; their outcome no longer matters.
    this.running.clear();
    cb(err ?? this.failure ?? null);
  }

  private async accept(chunk: Chunk): Promise<void> {
    if (this.failure) throw this.failure;
    const end = chunk.offset + chunk.length;
    if (chunk.zero) {
      if (this.targetIsZero) return;
      if (this.client.canWriteZeroes) {
        for (let at = chunk.offset; at < end; at += MAX_ZERO_REQUEST) {
          const len = Math.min(MAX_ZERO_REQUEST, end - at);
          await this.start(this.client.writeZeroes(at, len), 0, len);
        }
      } else {
        for (let at = chunk.offset; at < end; at += this.requestSize) {
          const len = Math.min(this.requestSize, end - at);
          this.zeroBuffer ??= Buffer.alloc(this.requestSize);
          await this.start(this.client.write(at, this.zeroBuffer.subarray(0, len)), 0, len);
        }
      }
      return;
    }
    const data = chunk.data;
    if (!data) {
      const what = chunk.lz4 ? 'an LZ4 frame (decompress before NbdWriter)' : 'no data';
      throw new NbdUsageError(`chunk at offset ${chunk.offset} holds ${what}`);
    }
    if (data.length !== chunk.length) {
      throw new NbdUsageError(`chunk at offset ${chunk.offset} says length ${chunk.length} but holds ${data.length} bytes`);
    }
    const max = this.requestSize;
    const onWritten = this.onWritten;
    let unanswered = Math.ceil(data.length / max);
    const answered = onWritten ? (): void => void (--unanswered === 0 && onWritten(data)) : undefined;
    for (let pos = 0; pos < data.length; pos += max) {
      const piece = data.subarray(pos, Math.min(pos + max, data.length));
      await this.start(this.client.write(chunk.offset + pos, piece), piece.length, 0, answered);
    }
  }

  /** Track one request; wait while `inFlight` are outstanding. */
  private async start(request: Promise<void>, written: number, zeroed: number, answered?: () => void): Promise<void> {
    const p: Promise<void> = request.then(
      () => {
        this.running.delete(p);
        this.bytesWritten += written;
        this.bytesZeroed += zeroed;
        answered?.();
      },
      (err: Error) => {
        this.running.delete(p);
        this.failure ??= err;
      },
    );
    this.running.add(p);
    while (this.running.size >= this.inFlight && !this.failure) await Promise.race(this.running);
    if (this.failure) throw this.failure;
  }

  private async finish(): Promise<void> {
    while (this.running.size > 0) await Promise.race(this.running);
    if (this.failure) throw this.failure;
    if (this.doFlush && this.client.canFlush) await this.client.flush();
  }
}
