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
 *
 * With `parts`, each LZ4 frame goes out in parts as the worker finishes
 * each input slot (4 MiB of content), as chunks with `lz4More` on all but
 * the last (lib/chunk.ts), so no stage downstream ever holds a whole frame.
 * Input is then let into a slot only while every part made so far has been
 * pushed and the readable side has room: that is the backpressure.
 * Buffers, with `parts`: the workers' input slots (2 x 4 MiB per worker,
 * shared by all streams), the parts of the slots being compressed and
 * `highWaterMark` (default 1) chunks on each side. Without `parts`: the
 * slots, the frame of the unit being written plus those of at most `depth`
 * units awaiting compression or delivery (a frame is at most its unit's
 * size plus 8 bytes per 4 MiB block; incompressible blocks are stored as
 * they are), and `highWaterMark` chunks on each side. `release` is given
 * each input data buffer once its bytes are copied into a worker's slot,
 * so its producer can reuse it at once; recycle() takes frames (or parts)
 * back once written, for reuse.
 */
import { Transform, type TransformCallback } from 'node:stream';
import type { Chunk, FrameSpan } from '../lib/chunk.js';
import { FramerInputError } from '../lib/format/errors.js';
import { nextPieceFrame } from '../lib/format/framePiece.js';
import type { OrderedJobOptions } from '../lib/format/orderedJobTransform.js';
import { Lz4WorkerPool, type Lz4CompressJob } from '../lib/lz4/pool.js';

export interface Lz4CompressOptions extends OrderedJobOptions {
  /**
   * Gather the pieces of each data frame into units of this many bytes from
   * the frame's start before compressing (the maximum request size the
   * stream is framed for). Default: compress each chunk as it comes.
   */
  unitSize?: number;
  /** Emit each LZ4 frame in parts (`lz4More`) as it is compressed, never whole (default false). */
  parts?: boolean;
  /** Hands back input data buffers that are no longer needed (NbdReader.release). */
  release?: (data: Buffer) => void;
  /** Worker threads to compress on (default: the process-wide pool). */
  pool?: Lz4WorkerPool;
}

/** The LZ4 frame options virtnbdbackup uses (content_checksum, block_checksum); our frames have them. */
export const LZ4_FRAME_OPTIONS = { contentChecksum: true, blockChecksums: true } as const;

/** Content let into a worker at a time with `parts`, and so the content of each part: 1 MiB (4 MiB parts were 4 times the memory in flight, no faster). */
const PART_CONTENT = 1024 * 1024;

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

/** Output of one input or unit, in input order: chunks ready to push, and whether more will come. */
interface Output {
  chunks: Chunk[];
  done: boolean;
}

interface Waiter {
  ready: () => boolean;
  resolve: () => void;
}

function dataOf(chunk: Chunk): Buffer {
  const data = chunk.data;
  if (data === undefined) throw new FramerInputError('data chunk without data', chunk.offset);
  if (data.length !== chunk.length) {
    throw new FramerInputError(`chunk length ${chunk.length} but ${data.length} bytes of data`, chunk.offset);
  }
  return data;
}

export class Lz4Compress extends Transform {
  readonly unitSize: number | undefined;
  readonly depth: number;
  readonly parts: boolean;
  private open: OpenFrame | undefined;
  private readonly release: ((data: Buffer) => void) | undefined;
  private readonly pool: Lz4WorkerPool;
  /** Frames being written; abandoned (their workers told) if the stream is destroyed. */
  private readonly active = new Set<Lz4CompressJob>();
  /** Outputs not yet fully pushed, in input order. */
  private readonly outputs: Output[] = [];
  /** Chunks made but not pushed yet (behind an output still being compressed). */
  private unpushed = 0;
  /** The last push found the readable side full; cleared when it is read. */
  private full = false;
  private readonly waiters: Waiter[] = [];
  private flushCallback: TransformCallback | null = null;
  private failed = false;

  constructor(options: Lz4CompressOptions = {}) {
    // Frames may be 32 MiB each: one waiting on the readable side keeps the consumer busy.
    const highWaterMark = options.highWaterMark ?? 1;
    super({ objectMode: true, readableHighWaterMark: highWaterMark, writableHighWaterMark: highWaterMark });
    const unit = options.unitSize;
    if (unit !== undefined && (!Number.isSafeInteger(unit) || unit < 1)) {
      throw new RangeError(`unitSize must be a positive integer, got ${unit}`);
    }
    const depth = options.depth ?? 4;
    if (!Number.isInteger(depth) || depth < 1) throw new RangeError(`depth must be a positive integer, got ${depth}`);
    this.unitSize = unit;
    this.depth = depth;
    this.parts = options.parts ?? false;
    this.release = options.release;
    this.pool = options.pool ?? Lz4WorkerPool.shared();
  }

  /**
   * Hand back an `lz4` frame or part this stage produced once it is written
   * (wire it to FileSink's onWritten), so a later one reuses its memory
   * instead of touching fresh pages. Other buffers are ignored.
   */
  recycle(frame: Uint8Array): void {
    this.pool.recycle(frame);
  }

  override _transform(chunk: Chunk, _encoding: BufferEncoding, callback: TransformCallback): void {
    let accepted: Promise<void>;
    try {
      accepted = this.accept(chunk);
    } catch (err) {
      callback(err as Error);
      return;
    }
    accepted.then(
      () => callback(),
      (err: unknown) => callback(err instanceof Error ? err : new Error(String(err))),
    );
  }

  override _read(size: number): void {
    this.full = false;
    super._read(size);
    this.wake();
  }

  override _flush(callback: TransformCallback): void {
    const open = this.open;
    if (open) {
      callback(
        new FramerInputError(
          `input ended inside the data frame at ${open.span.offset} (length ${open.span.length}): next piece expected at ${open.next}`,
        ),
      );
      return;
    }
    this.flushCallback = callback;
    this.drain();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.failed = true;
    this.open = undefined;
    for (const job of this.active) job.abort();
    this.active.clear();
    this.outputs.length = 0;
    this.waiters.length = 0;
    this.flushCallback = null;
    callback(err);
  }

  /** Take one input in; resolves when the next may come (its bytes are in the workers and there is room). */
  private async accept(chunk: Chunk): Promise<void> {
    if (chunk.zero || chunk.lz4 !== undefined) {
      if (this.open) throw new FramerInputError('zero or compressed chunk inside an incomplete data frame', chunk.offset);
      this.outputs.push({ chunks: [chunk], done: true });
      this.unpushed += 1;
      this.drain();
      return this.room();
    }
    const data = dataOf(chunk);
    if (this.unitSize === undefined) {
      const { data: _dropped, ...template } = chunk;
      await this.room();
      await this.copyInto(this.begin(template, data.length), data);
      this.release?.(data);
      return this.room();
    }
    return this.feed(chunk, data, this.unitSize);
  }

  /** Stream one piece into its frame's units. */
  private async feed(chunk: Chunk, data: Buffer, unitSize: number): Promise<void> {
    let open = this.open;
    const span = nextPieceFrame(chunk, open);
    if (!open) {
      open = { span: { offset: span.offset, length: span.length }, next: span.offset, unitStart: span.offset, job: undefined };
      this.open = open;
    }
    const frameEnd = open.span.offset + open.span.length;
    if (chunk.offset + chunk.length > frameEnd) {
      throw new FramerInputError(`piece of length ${chunk.length} does not fit its frame ending at ${frameEnd}`, chunk.offset);
    }
    let used = 0;
    while (used < data.length) {
      const unitEnd = Math.min(frameEnd, open.unitStart + unitSize);
      const take = Math.min(data.length - used, unitEnd - open.next);
      if (open.job === undefined) {
        const unit: Chunk = { offset: open.unitStart, length: unitEnd - open.unitStart };
        // A frame of one unit is written as a plain chunk; longer ones say which frame each unit belongs to.
        if (open.span.length > unitSize) unit.frame = { ...open.span };
        if (this.parts) await this.room();
        open.job = this.begin(unit, unit.length);
      }
      await this.copyInto(open.job, take === data.length ? data : data.subarray(used, used + take));
      used += take;
      open.next += take;
      if (open.next === unitEnd) {
        open.job = undefined;
        open.unitStart = unitEnd;
      }
    }
    if (open.next === frameEnd) this.open = undefined;
    this.release?.(data);
    return this.room();
  }

  /** Copy `bytes` into the job's frame; with `parts`, a slot at a time, each once there is room. */
  private async copyInto(job: Lz4CompressJob, bytes: Buffer): Promise<void> {
    if (!this.parts) {
      await job.write(bytes);
      return;
    }
    for (let at = 0; at < bytes.length; at += PART_CONTENT) {
      await this.room();
      const end = Math.min(bytes.length, at + PART_CONTENT);
      await job.write(at === 0 && end === bytes.length ? bytes : bytes.subarray(at, end));
    }
  }

  /** Start the LZ4 frame of one unit, whose output chunks are `template` plus `lz4`. */
  private begin(template: Chunk, contentSize: number): Lz4CompressJob {
    const output: Output = { chunks: [], done: false };
    let job: Lz4CompressJob;
    if (this.parts) {
      job = this.pool.compressParts(contentSize, (lz4, last) => {
        if (this.failed) return;
        output.chunks.push(last ? { ...template, lz4 } : { ...template, lz4, lz4More: true });
        this.unpushed += 1;
        if (last) output.done = true;
        this.drain();
      }, PART_CONTENT);
      job.end().then(
        () => this.active.delete(job),
        (err: unknown) => this.fail(err),
      );
    } else {
      job = this.pool.compress(contentSize);
      job.end().then(
        (lz4) => {
          this.active.delete(job);
          if (this.failed) return;
          output.chunks.push({ ...template, lz4 });
          this.unpushed += 1;
          output.done = true;
          this.drain();
        },
        (err: unknown) => this.fail(err),
      );
    }
    this.active.add(job);
    this.outputs.push(output);
    return job;
  }

  /**
   * Resolves once more input may go in. With `parts`: every part made has
   * been pushed and the readable side has room. Without: fewer than `depth`
   * outputs wait besides the unit being written.
   */
  private room(): Promise<void> {
    const ready = this.parts
      ? () => this.failed || (this.unpushed === 0 && !this.full)
      : () => this.failed || this.outputs.length - (this.open?.job ? 1 : 0) < this.depth;
    if (ready()) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ ready, resolve }));
  }

  private wake(): void {
    for (let i = 0; i < this.waiters.length; ) {
      const waiter = this.waiters[i]!;
      if (waiter.ready()) {
        this.waiters.splice(i, 1);
        waiter.resolve();
      } else {
        i++;
      }
    }
  }

  /** Push what is ready at the head, in order; finish the flush once all is out. */
  private drain(): void {
    if (this.failed) return;
    while (this.outputs.length > 0) {
      const head = this.outputs[0]!;
      for (const chunk of head.chunks.splice(0)) {
        this.unpushed -= 1;
        if (!this.push(chunk)) this.full = true;
      }
      if (!head.done) break;
      this.outputs.shift();
    }
    this.wake();
    if (this.flushCallback && this.outputs.length === 0) {
      const callback = this.flushCallback;
      this.flushCallback = null;
      callback();
    }
  }

  private fail(err: unknown): void {
    if (this.failed) return;
    this.destroy(err instanceof Error ? err : new Error(String(err)));
  }
}
