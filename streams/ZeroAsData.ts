/**
 * ZeroAsData: Chunk -> Chunk (object mode). Zero chunks become data chunks
 * holding zeros, split into pieces of at most `pieceSize` bytes that carry
 * `frame` (the zero range) when there is more than one; data chunks pass
 * unchanged. Incremental streams have no zero frames (virtnbdbackup's
 * restore skips them), so a range that changed and now reads as zeros
 * (trimmed, or overwritten with zeros) must travel as data, or a restore
 * would keep the old bytes there. The zeros are not read from the server:
 * every piece is a view of one shared, never-written zero buffer of
 * `pieceSize` bytes. Buffers: that buffer, plus the usual high-water marks
 * (pieces are produced as the consumer takes them).
 */
import { Transform, type TransformCallback } from 'node:stream';
import type { Chunk } from '../lib/chunk.js';

export interface ZeroAsDataOptions {
  /** Largest piece (default 1 MiB, the reader's request size). */
  pieceSize?: number;
}

const DEFAULT_PIECE_SIZE = 1024 * 1024;

export class ZeroAsData extends Transform {
  readonly pieceSize: number;
  private readonly zeros: Buffer;
  /** Bytes of zeros turned into data so far. */
  zeroBytes = 0;

  constructor(options: ZeroAsDataOptions = {}) {
    super({ objectMode: true, highWaterMark: 2 });
    const size = options.pieceSize ?? DEFAULT_PIECE_SIZE;
    if (!Number.isSafeInteger(size) || size < 1) throw new RangeError(`pieceSize must be a positive integer, got ${size}`);
    this.pieceSize = size;
    this.zeros = Buffer.alloc(size);
  }

  override _transform(chunk: Chunk, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (!chunk.zero) {
      callback(null, chunk);
      return;
    }
    this.emitZeros(chunk).then(() => callback(), callback);
  }

  /** Push the pieces one by one, waiting for the consumer when it is full. */
  private async emitZeros(chunk: Chunk): Promise<void> {
    const frame = chunk.length > this.pieceSize ? { offset: chunk.offset, length: chunk.length } : undefined;
    const end = chunk.offset + chunk.length;
    for (let at = chunk.offset; at < end && !this.destroyed; at += this.pieceSize) {
      const length = Math.min(this.pieceSize, end - at);
      const piece: Chunk = { offset: at, length, data: this.zeros.subarray(0, length) };
      if (frame) piece.frame = frame;
      this.zeroBytes += length;
      if (!this.push(piece)) await this.drained();
    }
  }

  /** Resolves when the consumer wants more (or the stream is destroyed). */
  private drained(): Promise<void> {
    return new Promise((resolve) => {
      this.resumeRead = resolve;
    });
  }

  private resumeRead: (() => void) | undefined;

  override _read(size: number): void {
    const resume = this.resumeRead;
    this.resumeRead = undefined;
    resume?.();
    super._read(size);
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    const resume = this.resumeRead;
    this.resumeRead = undefined;
    resume?.();
    callback(err);
  }
}
