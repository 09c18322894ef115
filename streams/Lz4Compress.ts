/**
 * Lz4Compress: Chunk -> Chunk (object mode). Each data chunk becomes a chunk
 * with `lz4` holding one LZ4 frame of its bytes, block and content checksums
 * on as virtnbdbackup writes them, and `data` dropped; `offset`, `length`
 * (uncompressed) and `frame` are kept. Zero chunks and chunks that already
 * carry `lz4` pass unchanged. Compression runs on worker threads
 * (lib/lz4/pool.ts, our own LZ4 encoder); output keeps input order.
 *
 * With `unitSize` (the NBD server's maximum request size), the consecutive
 * pieces of one sparse-stream data frame are compressed as units
 * [frame.offset + k * unitSize, ...), each one LZ4 frame: virtnbdbackup
 * compresses one LZ4 frame per read request of the maximum size, and its
 * restore expects exactly that, while our reader may read in smaller
 * pieces. Units shorter than the frame carry `frame`. Pieces are streamed
 * into the unit's frame as they come (copied into a worker's input slot),
 * not gathered first.
 * Buffers: the workers' input slots (2 x 4 MiB per worker, shared by all
 * streams), the frame of the unit being written plus those of at most
 * `depth` units awaiting compression or delivery (a frame is at most its
 * unit's size plus 8 bytes per 4 MiB block; incompressible blocks are
 * stored as they are), and `highWaterMark` (default 1) chunks on each
 * side. `release` is given each input data buffer once its bytes are
 * copied into a worker's slot, so its producer can reuse it at once;
 * recycle() takes frames back once written, for reuse.
 */
import type { Chunk, FrameSpan } from '../lib/chunk.js';
import { FramerInputError } from '../lib/format/errors.js';
import { OrderedJobTransform, type OrderedJobOptions } from '../lib/format/orderedJobTransform.js';
import { Lz4WorkerPool, type Lz4CompressJob } from '../lib/lz4/pool.js';

export interface Lz4CompressOptions extends OrderedJobOptions {
  /**
   * Gather the pieces of each data frame into units of this many bytes from
   * the frame's start before compressing (the maximum request size the
   * stream is framed for). Default: compress each chunk as it comes.
   */
  unitSize?: number;
  /** Hands back input data buffers that are no longer needed (NbdReader.release). */
  release?: (data: Buffer) => void;
  /** Worker threads to compress on (default: the process-wide pool). */
  pool?: Lz4WorkerPool;
}

/** The LZ4 frame options virtnbdbackup uses (content_checksum, block_checksum); our frames have them. */
export const LZ4_FRAME_OPTIONS = { contentChecksum: true, blockChecksums: true } as const;

/** The data frame whose pieces are being gathered. */
interface OpenFrame {
  span: FrameSpan;
  /** Disk offset the next piece must start at. */
  next: number;
  /** Start of the unit being gathered. */
  unitStart: number;
  /** The unit's LZ4 frame being written, from its first piece on. */
  job: Lz4CompressJob | undefined;
}

function dataOf(chunk: Chunk): Buffer {
  const data = chunk.data;
  if (data === undefined) throw new FramerInputError('data chunk without data', chunk.offset);
  if (data.length !== chunk.length) {
    throw new FramerInputError(`chunk length ${chunk.length} but ${data.length} bytes of data`, chunk.offset);
  }
  return data;
}

const NOTHING: Chunk[] = [];

export class Lz4Compress extends OrderedJobTransform<Chunk, Chunk[]> {
  readonly unitSize: number | undefined;
  private open: OpenFrame | undefined;
  private readonly release: ((data: Buffer) => void) | undefined;
  private readonly pool: Lz4WorkerPool;
  /** Frames being written; abandoned (their workers told) if the stream is destroyed. */
  private readonly active = new Set<Lz4CompressJob>();

  constructor(options: Lz4CompressOptions = {}) {
    // Frames may be 32 MiB each: one waiting on the readable side keeps the consumer busy.
    super({ ...options, highWaterMark: options.highWaterMark ?? 1 });
    const unit = options.unitSize;
    if (unit !== undefined && (!Number.isSafeInteger(unit) || unit < 1)) {
      throw new RangeError(`unitSize must be a positive integer, got ${unit}`);
    }
    this.unitSize = unit;
    this.release = options.release;
    this.pool = options.pool ?? Lz4WorkerPool.shared();
  }

  protected override start(chunk: Chunk): Promise<Chunk[]> | Chunk[] {
    if (chunk.zero || chunk.lz4 !== undefined) {
      if (this.open) throw new FramerInputError('zero or compressed chunk inside an incomplete data frame', chunk.offset);
      return [chunk];
    }
    const data = dataOf(chunk);
    if (this.unitSize === undefined) {
      const job = this.begin(data.length);
      const copied = job.write(data);
      const frame = this.frameOf(job);
      const { data: _dropped, ...rest } = chunk;
      if (copied === undefined) {
        this.release?.(data);
        return frame.then((lz4) => [{ ...rest, lz4 }]);
      }
      return Promise.all([copied.then(() => this.release?.(data)), frame]).then(([, lz4]) => [{ ...rest, lz4 }]);
    }
    return this.feed(chunk, data, this.unitSize);
  }

  /**
   * Hand back an `lz4` frame this stage produced once it is written (wire
   * it to FileSink's onWritten), so a later frame reuses its memory instead
   * of touching fresh pages. Other buffers are ignored.
   */
  recycle(frame: Uint8Array): void {
    this.pool.recycle(frame);
  }

  /** Inputs that only fed a unit still being written deliver nothing and take no place in the queue. */
  protected override isEmpty(result: Chunk[]): boolean {
    return result.length === 0;
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

  private begin(contentSize: number): Lz4CompressJob {
    const job = this.pool.compress(contentSize);
    this.active.add(job);
    return job;
  }

  /** The job's frame, once written (all its content must have been given). */
  private frameOf(job: Lz4CompressJob): Promise<Buffer> {
    return job.end().finally(() => this.active.delete(job));
  }

  /** Stream one piece into its frame's units; resolve to the units it completes, once compressed. */
  private feed(chunk: Chunk, data: Buffer, unitSize: number): Promise<Chunk[]> | Chunk[] {
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
      open = { span: { offset: span.offset, length: span.length }, next: span.offset, unitStart: span.offset, job: undefined };
      this.open = open;
    }
    const frameEnd = open.span.offset + open.span.length;
    if (chunk.offset + chunk.length > frameEnd) {
      throw new FramerInputError(`piece of length ${chunk.length} does not fit its frame ending at ${frameEnd}`, chunk.offset);
    }
    const units: Promise<Chunk>[] = [];
    const copying: Promise<void>[] = [];
    let used = 0;
    while (used < data.length) {
      const unitEnd = Math.min(frameEnd, open.unitStart + unitSize);
      const take = Math.min(data.length - used, unitEnd - open.next);
      open.job ??= this.begin(unitEnd - open.unitStart);
      const copied = open.job.write(take === data.length ? data : data.subarray(used, used + take));
      if (copied) copying.push(copied);
      used += take;
      open.next += take;
      if (open.next === unitEnd) {
        const unit: Chunk = { offset: open.unitStart, length: unitEnd - open.unitStart };
        // A frame of one unit is written as a plain chunk; longer ones say which frame each unit belongs to.
        if (open.span.length > unitSize) unit.frame = { ...open.span };
        units.push(this.frameOf(open.job).then((lz4) => ({ ...unit, lz4 })));
        open.job = undefined;
        open.unitStart = unitEnd;
      }
    }
    if (open.next === frameEnd) this.open = undefined;
    if (copying.length === 0) {
      this.release?.(data);
      return units.length === 0 ? NOTHING : Promise.all(units);
    }
    // The slots were busy: this input waits (and holds its place in the queue) until its bytes are in.
    const copied = Promise.all(copying).then(() => this.release?.(data));
    return Promise.all([copied, Promise.all(units)]).then(([, done]) => done);
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.open = undefined;
    for (const job of this.active) job.abort();
    this.active.clear();
    super._destroy(err, callback);
  }
}
