/**
 * Lz4Decompress: Chunk -> Chunk (object mode), the inverse of Lz4Compress.
 * Each chunk carrying `lz4` (one LZ4 frame, as SparseParser or Lz4Compress
 * emit them) becomes a chunk with `data`; zero chunks and chunks that already
 * carry `data` pass unchanged. SparseParser cannot know where a piece of a
 * multi-piece compressed data frame lies until it is decompressed, so this
 * stage assigns every piece its true `offset` (frame start plus the bytes of
 * the pieces before it) and `length`, checks that the pieces of each data
 * frame add up exactly to the frame's length, and sets `frame` on the output
 * only when the frame was split. lz4-napi verifies the block and content
 * checksums; any failure becomes an Lz4DataError naming the frame (counted as
 * SparseParser counts them: meta is frame 0, each zero chunk or new data frame
 * the next) and its disk offset. Up to `depth` decompressions run at once;
 * output keeps input order. Buffers at most `depth` chunks in flight plus
 * `highWaterMark` on each side.
 */
import { decompressFrame } from 'lz4-napi';
import type { Chunk, FrameSpan } from '../lib/chunk.js';
import { Lz4DataError } from '../lib/format/errors.js';
import { OrderedJobTransform, type OrderedJobOptions } from '../lib/format/orderedJobTransform.js';

export type Lz4DecompressOptions = OrderedJobOptions;

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

export class Lz4Decompress extends OrderedJobTransform<Chunk, Piece> {
  /** Frame counting in input order: the meta frame, which never reaches us, is 0. */
  private frameCount = 0;
  private lastSpan: FrameSpan | undefined;
  /** The data frame whose pieces are being delivered. */
  private open: OpenFrame | undefined;

  constructor(options: Lz4DecompressOptions = {}) {
    super(options);
  }

  protected override start(chunk: Chunk): Promise<Piece> | Piece {
    const frame = chunk.frame ?? { offset: chunk.offset, length: chunk.length };
    if (chunk.zero || !chunk.frame || this.lastSpan === undefined || frame.offset !== this.lastSpan.offset) {
      this.frameCount += 1;
    }
    this.lastSpan = chunk.zero ? undefined : frame;
    const frameIndex = this.frameCount;
    if (chunk.zero || chunk.lz4 === undefined) return { chunk, data: undefined, frame, frameIndex };
    return decompressFrame(chunk.lz4).then(
      (data): Piece => ({ chunk, data, frame, frameIndex }),
      (err: unknown) => {
        throw new Lz4DataError(frameIndex, frame.offset, `cannot decompress LZ4 data: ${describe(err)}`);
      },
    );
  }

  protected override deliver(piece: Piece): void {
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
  const message = err instanceof Error ? err.message : String(err);
  if (message === 'BlockChecksumError') return 'LZ4 block checksum mismatch (corrupt data)';
  if (message === 'ContentChecksumError') return 'LZ4 content checksum mismatch (corrupt data)';
  return message;
}
