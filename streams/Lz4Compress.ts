/**
 * Lz4Compress: Chunk -> Chunk (object mode). Each data chunk becomes a chunk
 * with `lz4` holding one LZ4 frame of its bytes, block and content checksums
 * on as virtnbdbackup writes them, and `data` dropped; `offset`, `length`
 * (uncompressed) and `frame` are kept. Zero chunks and chunks that already
 * carry `lz4` pass unchanged. Up to `depth` compressions run at once in
 * libuv's thread pool; output keeps input order.
 *
 * With `unitSize` (the NBD server's maximum request size), the consecutive
 * pieces of one sparse-stream data frame are first gathered into units
 * [frame.offset + k * unitSize, ...) and each unit is compressed as one LZ4
 * frame: virtnbdbackup compresses one LZ4 frame per read request of the
 * maximum size, and its restore expects exactly that, while our reader may
 * read in smaller pieces. Units shorter than the frame carry `frame`.
 * Buffers: at most `depth` compressions in flight (input and output), one
 * unit being gathered (at most `unitSize` bytes) and `highWaterMark`
 * chunks on each side; so about (depth + 1) x unitSize bytes with units.
 * `release` is given each input data buffer once no unit needs it any more
 * (compressed, or copied into a gathered unit), so its producer can reuse it.
 */
import { compressFrame } from 'lz4-napi';
import type { Chunk, FrameSpan } from '../lib/chunk.js';
import { FramerInputError } from '../lib/format/errors.js';
import { OrderedJobTransform, type OrderedJobOptions } from '../lib/format/orderedJobTransform.js';

export interface Lz4CompressOptions extends OrderedJobOptions {
  /**
   * Gather the pieces of each data frame into units of this many bytes from
   * the frame's start before compressing (the maximum request size the
   * stream is framed for). Default: compress each chunk as it comes.
   */
  unitSize?: number;
  /** Hands back input data buffers that are no longer needed (NbdReader.release). */
  release?: (data: Buffer) => void;
}

/** The LZ4 frame options virtnbdbackup uses (content_checksum, block_checksum). */
export const LZ4_FRAME_OPTIONS = { contentChecksum: true, blockChecksums: true } as const;

/** The data frame whose pieces are being gathered. */
interface OpenFrame {
  span: FrameSpan;
  /** Disk offset the next piece must start at. */
  next: number;
  /** Start of the unit being gathered. */
  unitStart: number;
  /** Pieces of it so far. */
  pieces: Buffer[];
}

function dataOf(chunk: Chunk): Buffer {
  const data = chunk.data;
  if (data === undefined) throw new FramerInputError('data chunk without data', chunk.offset);
  if (data.length !== chunk.length) {
    throw new FramerInputError(`chunk length ${chunk.length} but ${data.length} bytes of data`, chunk.offset);
  }
  return data;
}

async function compressed(chunk: Chunk, data: Buffer): Promise<Chunk> {
  const lz4 = await compressFrame(data, LZ4_FRAME_OPTIONS);
  const { data: _dropped, ...rest } = chunk;
  return { ...rest, lz4 };
}

export class Lz4Compress extends OrderedJobTransform<Chunk, Chunk[]> {
  readonly unitSize: number | undefined;
  private open: OpenFrame | undefined;
  private readonly release: ((data: Buffer) => void) | undefined;
  /** Input buffers wholly placed into the unit being gathered, released once it is compressed. */
  private held: Buffer[] = [];

  constructor(options: Lz4CompressOptions = {}) {
    super(options);
    const unit = options.unitSize;
    if (unit !== undefined && (!Number.isSafeInteger(unit) || unit < 1)) {
      throw new RangeError(`unitSize must be a positive integer, got ${unit}`);
    }
    this.unitSize = unit;
    this.release = options.release;
  }

  protected override start(chunk: Chunk): Promise<Chunk[]> | Chunk[] {
    if (chunk.zero || chunk.lz4 !== undefined) {
      if (this.open) throw new FramerInputError('zero or compressed chunk inside an incomplete data frame', chunk.offset);
      return [chunk];
    }
    const data = dataOf(chunk);
    if (this.unitSize === undefined) return compressed(chunk, data).then((c) => this.released([c], [data]));
    const units = this.gather(chunk, data, this.unitSize);
    if (units.length === 0) {
      this.held.push(data);
      return units;
    }
    // Every held buffer lies in the units completed now; so does `data` unless the open unit still holds its tail.
    const done = this.held;
    this.held = [];
    if (this.open && this.open.pieces.length > 0) this.held.push(data);
    else done.push(data);
    return Promise.all(units.map((u) => compressed(u, u.data as Buffer))).then((c) => this.released(c, done));
  }

  private released(result: Chunk[], inputs: Buffer[]): Chunk[] {
    if (this.release) for (const b of inputs) this.release(b);
    return result;
  }

  protected override deliver(result: Chunk[]): void {
    for (const chunk of result) this.push(chunk);
  }

  protected override finish(): void {
    const open = this.open;
    if (open) {
      throw new FramerInputError(
        `input ended inside the data frame at ${open.span.offset} (length ${open.span.length}): next piece expected at ${open.next}`,
      );
    }
  }

  /** Add one piece to its frame; return the units it completes (uncompressed). */
  private gather(chunk: Chunk, data: Buffer, unitSize: number): Chunk[] {
    const span = chunk.frame ?? { offset: chunk.offset, length: chunk.length };
    let open = this.open;
    if (open) {
      if (span.offset !== open.span.offset || span.length !== open.span.length || chunk.offset !== open.next) {
        throw new FramerInputError(
          `expected the piece at ${open.next} of the data frame at ${open.span.offset} (length ${open.span.length})`,
          chunk.offset,
        );
      }
    } else {
      if (chunk.offset !== span.offset) throw new FramerInputError(`first piece of the data frame at ${span.offset} starts elsewhere`, chunk.offset);
      open = { span: { offset: span.offset, length: span.length }, next: span.offset, unitStart: span.offset, pieces: [] };
      this.open = open;
    }
    const frameEnd = open.span.offset + open.span.length;
    if (chunk.offset + chunk.length > frameEnd) {
      throw new FramerInputError(`piece of length ${chunk.length} does not fit its frame ending at ${frameEnd}`, chunk.offset);
    }
    const units: Chunk[] = [];
    let used = 0;
    while (used < data.length) {
      const unitEnd = Math.min(frameEnd, open.unitStart + unitSize);
      const take = Math.min(data.length - used, unitEnd - open.next);
      open.pieces.push(take === data.length ? data : data.subarray(used, used + take));
      used += take;
      open.next += take;
      if (open.next === unitEnd) {
        const length = unitEnd - open.unitStart;
        const bytes = open.pieces.length === 1 ? open.pieces[0]! : Buffer.concat(open.pieces, length);
        const unit: Chunk = { offset: open.unitStart, length, data: bytes };
        // A frame of one unit is written as a plain chunk; longer ones say which frame each unit belongs to.
        if (open.span.length > unitSize) unit.frame = { ...open.span };
        units.push(unit);
        open.pieces = [];
        open.unitStart = unitEnd;
      }
    }
    if (open.next === frameEnd) this.open = undefined;
    return units;
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.open = undefined;
    this.held = [];
    super._destroy(err, callback);
  }
}
