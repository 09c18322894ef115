/**
 * Lz4Decompress: Chunk -> Chunk (object mode), the inverse of Lz4Compress.
 * Each chunk carrying `lz4` (one LZ4 frame, as SparseParser or Lz4Compress
 * emit them) becomes a chunk with `data`; zero chunks and chunks that already
 * carry `data` pass unchanged. SparseParser cannot know where a piece of a
 * multi-piece compressed data frame lies until it is decompressed, so this
 * stage assigns every piece its true `offset` (frame start plus the bytes of
 * the pieces before it) and `length`, checks that the pieces of each data
 * frame add up exactly to the frame's length, and sets `frame` on the output
 * only when the frame was split. Decoding runs on worker threads
 * (lib/lz4/pool.ts, our own decoder), which verify every block checksum and
 * the content checksum the frame carries; any failure becomes an
 * Lz4DataError naming the frame (counted as SparseParser counts them: meta
 * is frame 0, each zero chunk or new data frame the next), its disk offset
 * and the byte of the LZ4 frame where it went wrong. Up to `depth`
 * (default 2) decompressions run at once; output keeps input order.
 * An LZ4 frame in parts (`lz4More`, as Lz4Compress with `parts` emits
 * them; SparseParser never does) is gathered whole first, so it costs one
 * frame's memory more; parts that do not continue their frame's offset and
 * length are an Lz4DataError.
 * Buffers: at most `depth` chunks in flight (input and output), plus
 * `highWaterMark` (default 1) on each side, and the workers' input slots;
 * recycle() takes decoded buffers back once written, for reuse; `loans`
 * gets each LZ4 frame's input back once decoded (SparseParser's lender).
 */
import type { Chunk, FrameSpan } from '../lib/chunk.js';
import { Lz4DataError } from '../lib/format/errors.js';
import { OrderedJobTransform, type OrderedJobOptions } from '../lib/format/orderedJobTransform.js';
import { Lz4WorkerPool } from '../lib/lz4/pool.js';
import { NO_LOANS, type BufferLoans } from '../lib/bufferLender.js';

export interface Lz4DecompressOptions extends OrderedJobOptions {
  /** Worker threads to decompress on (default: the process-wide pool). */
  pool?: Lz4WorkerPool;
  /** Where LZ4 input buffers go back once decoded (their lender; default: nowhere). */
  loans?: BufferLoans;
}

interface Piece {
  chunk: Chunk;
  /** Decompressed bytes, or undefined for chunks that pass unchanged. */
  data: Buffer | undefined;
  frame: FrameSpan;
  frameIndex: number;
}

interface OpenFrame {
  span: FrameSpan;
  index: number;
  filled: number;
}

export class Lz4Decompress extends OrderedJobTransform<Chunk, Piece | null> {
  /** Frame counting in input order: the meta frame, which never reaches us, is 0. */
  private frameCount = 0;
  private lastSpan: FrameSpan | undefined;
  /** The data frame whose pieces are being delivered. */
  private open: OpenFrame | undefined;
  private readonly pool: Lz4WorkerPool;
  private readonly loans: BufferLoans;
  /** The parts so far of an LZ4 frame arriving in parts, and the chunk they belong to. */
  private parts: { chunk: Chunk; lz4: Buffer[] } | undefined;

  constructor(options: Lz4DecompressOptions = {}) {
    // Two frames in flight keep a worker busy (one decoding, one queued); each holds up to 32 MiB of output.
    super({ ...options, depth: options.depth ?? 2, highWaterMark: options.highWaterMark ?? 1 });
    this.pool = options.pool ?? Lz4WorkerPool.shared();
    this.loans = options.loans ?? NO_LOANS;
  }

  /**
   * Hand back a decompressed `data` buffer of this stage once written (a
   * sink's onWritten), so a later frame decodes into memory already
   * resident instead of fresh pages. Other buffers are ignored.
   */
  recycle(data: Uint8Array): void {
    this.pool.recycle(data);
  }

  protected override start(input: Chunk): Promise<Piece> | Piece | null {
    const chunk = this.gather(input);
    if (chunk === undefined) return null;
    const frame = chunk.frame ?? { offset: chunk.offset, length: chunk.length };
    if (chunk.zero || !chunk.frame || this.lastSpan === undefined || frame.offset !== this.lastSpan.offset) {
      this.frameCount += 1;
    }
    this.lastSpan = chunk.zero ? undefined : frame;
    const frameIndex = this.frameCount;
    if (chunk.zero || chunk.lz4 === undefined) return { chunk, data: undefined, frame, frameIndex };
    const lz4 = chunk.lz4;
    return this.pool.decompressFrame(lz4).then(
      (data): Piece => {
        this.loans.release(lz4);
        return { chunk, data, frame, frameIndex };
      },
      (err: unknown) => {
        throw new Lz4DataError(frameIndex, frame.offset, `cannot decompress LZ4 data: ${describe(err)}`);
      },
    );
  }

  protected override isEmpty(result: Piece | null): boolean {
    return result === null;
  }

  /** The frame index start() will give `chunk` (a data chunk), without counting it. */
  private indexOf(chunk: Chunk): number {
    const continues = chunk.frame !== undefined && this.lastSpan !== undefined && chunk.frame.offset === this.lastSpan.offset;
    return continues ? this.frameCount : this.frameCount + 1;
  }

  /** The chunk to decode, once the last part of an LZ4 frame in parts is in (undefined before). */
  private gather(chunk: Chunk): Chunk | undefined {
    const parts = this.parts;
    if (parts) {
      const first = parts.chunk;
      if (chunk.lz4 === undefined || chunk.offset !== first.offset || chunk.length !== first.length) {
        throw new Lz4DataError(
          this.indexOf(first),
          first.frame?.offset ?? first.offset,
          `the LZ4 frame of the piece at ${first.offset} (length ${first.length}) came in parts, but the chunk at ${chunk.offset} (length ${chunk.length}) does not continue it`,
        );
      }
      parts.lz4.push(chunk.lz4);
      if (chunk.lz4More) return undefined;
      this.parts = undefined;
      const { lz4More: _more, ...rest } = chunk;
      const whole = Buffer.concat(parts.lz4);
      for (const part of parts.lz4) this.loans.release(part);
      return { ...rest, lz4: whole };
    }
    if (chunk.lz4 === undefined || !chunk.lz4More) return chunk;
    this.parts = { chunk, lz4: [chunk.lz4] };
    return undefined;
  }

  protected override deliver(result: Piece | null): void {
    if (result === null) return;
    const piece = result;
    const { chunk, data, frame, frameIndex } = piece;
    if (chunk.zero || data === undefined) {
      this.closeFrame();
      this.push(chunk);
      return;
    }
    if (this.open && this.open.span.offset !== frame.offset) this.closeFrame();
    if (!this.open) this.open = { span: frame, index: frameIndex, filled: 0 };
    const open = this.open;
    const offset = open.span.offset + open.filled;
    open.filled += data.length;
    if (open.filled > open.span.length) {
      throw new Lz4DataError(
        frameIndex,
        open.span.offset,
        `decompressed pieces hold more than the frame's ${open.span.length} bytes (at least ${open.filled})`,
      );
    }
    const whole = offset === open.span.offset && data.length === open.span.length;
    const out: Chunk = whole
      ? { offset, length: data.length, data }
      : { offset, length: data.length, data, frame: { ...open.span } };
    if (open.filled === open.span.length) this.open = undefined;
    this.push(out);
  }

  protected override finish(): void {
    const parts = this.parts;
    if (parts) {
      this.parts = undefined;
      throw new Lz4DataError(
        this.indexOf(parts.chunk),
        parts.chunk.frame?.offset ?? parts.chunk.offset,
        `input ended inside the LZ4 frame of the piece at ${parts.chunk.offset}, which came in parts`,
      );
    }
    this.closeFrame();
  }

  /** The open data frame must be complete before anything else comes. */
  private closeFrame(): void {
    const open = this.open;
    if (!open) return;
    this.open = undefined;
    throw new Lz4DataError(
      open.index,
      open.span.offset,
      `decompressed pieces hold ${open.filled} bytes, the data frame says ${open.span.length}`,
    );
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
