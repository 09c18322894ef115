/**
 * Lz4StreamDecompress: Chunk -> Chunk (object mode), as Lz4Decompress, but
 * each LZ4 frame is decoded as its parts arrive (lib/lz4/frameStream.ts) on
 * this thread, into pieces of about 1 MiB, so memory does not grow with the
 * frames' size (32 MiB in virtnbdbackup's streams). For restores, where the
 * pieces go to the image as they come: a frame whose content checksum fails
 * at its end fails the stream after some of its pieces went on (the restore
 * then discards its image).
 *
 * In: what SparseParser emits (with `lz4Parts`, LZ4 frames in parts at its
 * input's cuts; whole frames work too), zero chunks and plain data chunks,
 * which pass unchanged. Out: data chunks at their true offsets, with `frame`
 * when the data frame came in several pieces; the pieces of each data frame
 * must add up to its length. Errors are Lz4DataError naming the frame
 * (counted as SparseParser counts them), its disk offset and the byte of the
 * LZ4 frame. Decoded pieces are lent: hand each back with release() once
 * written (NbdWriter's onWritten); `loans` gets each input `lz4` view back
 * once decoded (SparseParser's release).
 */
import { Transform, type TransformCallback } from 'node:stream';
import type { Chunk, FrameSpan } from '../lib/chunk.js';
import { NO_LOANS, type BufferLoans } from '../lib/bufferLender.js';
import { Lz4DataError } from '../lib/format/errors.js';
import { Lz4FrameStream } from '../lib/lz4/frameStream.js';

export interface Lz4StreamDecompressOptions {
  /** Decoded bytes per piece (default 1 MiB). */
  pieceSize?: number;
  /** Where input `lz4` views go back once decoded (default: nowhere). */
  loans?: BufferLoans;
}

/** The data frame being filled, and the LZ4 frame being decoded into it. */
interface OpenFrame {
  span: FrameSpan;
  index: number;
  filled: number;
  lz4: Lz4FrameStream | undefined;
}

export class Lz4StreamDecompress extends Transform {
  private readonly loans: BufferLoans;
  /** Frames seen, in input order: the meta frame (never seen here) is 0. */
  private frameCount = 0;
  private open: OpenFrame | undefined;
  /** Decodes frame after frame, lending its pieces from one set of buffers. */
  private readonly lz4: Lz4FrameStream;

  constructor(options: Lz4StreamDecompressOptions = {}) {
    // One decoded piece (at most 1 MiB) waiting.
    super({ objectMode: true, highWaterMark: 1 });
    this.loans = options.loans ?? NO_LOANS;
    this.lz4 = new Lz4FrameStream(options.pieceSize ?? 1024 * 1024);
  }

  /** Hand back a piece this stage emitted, once nothing reads it; other buffers are ignored. */
  release(data: Uint8Array): void {
    this.lz4.release(data);
  }

  override _transform(chunk: Chunk, _enc: BufferEncoding, callback: TransformCallback): void {
    try {
      this.accept(chunk);
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.closeFrame();
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  private accept(chunk: Chunk): void {
    if (chunk.zero || chunk.lz4 === undefined) {
      this.closeFrame();
      this.frameCount += 1;
      this.push(chunk);
      return;
    }
    const span = chunk.frame ?? { offset: chunk.offset, length: chunk.length };
    let open = this.open;
    if (open && open.span.offset !== span.offset) {
      this.closeFrame();
      open = undefined;
    }
    if (!open) {
      this.frameCount += 1;
      open = { span: { ...span }, index: this.frameCount, filled: 0, lz4: undefined };
      this.open = open;
    }
    if (!open.lz4) {
      this.lz4.begin();
      open.lz4 = this.lz4;
    }
    const lz4 = open.lz4;
    try {
      this.deliver(open, lz4.push(chunk.lz4));
      if (!chunk.lz4More) {
        this.deliver(open, lz4.finish());
        open.lz4 = undefined;
      }
    } catch (err) {
      if (err instanceof Lz4DataError) throw err;
      throw new Lz4DataError(open.index, open.span.offset, `cannot decompress LZ4 data: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      this.loans.release(chunk.lz4);
    }
  }

  private deliver(open: OpenFrame, pieces: Buffer[]): void {
    for (const data of pieces) {
      const offset = open.span.offset + open.filled;
      open.filled += data.length;
      if (open.filled > open.span.length) {
        throw new Lz4DataError(open.index, open.span.offset, `decompressed pieces hold more than the frame's ${open.span.length} bytes (at least ${open.filled})`);
      }
      const whole = open.filled === open.span.length && offset === open.span.offset;
      this.push(whole ? { offset, length: data.length, data } : { offset, length: data.length, data, frame: { ...open.span } });
    }
  }

  /** The open data frame must be complete (and its last LZ4 frame too) before anything else comes. */
  private closeFrame(): void {
    const open = this.open;
    if (!open) return;
    this.open = undefined;
    if (open.lz4) throw new Lz4DataError(open.index, open.span.offset, 'input ended inside an LZ4 frame that came in parts');
    if (open.filled !== open.span.length) {
      throw new Lz4DataError(open.index, open.span.offset, `decompressed pieces hold ${open.filled} bytes, the data frame says ${open.span.length}`);
    }
  }
}
