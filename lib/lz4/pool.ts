/**
 * Lz4WorkerPool: LZ4 compression and decompression on worker threads, so a
 * pipeline's main thread keeps reading and writing while frames are coded.
 *
 * Each worker owns `slotsPerWorker` input slots of a SharedArrayBuffer; a
 * job copies its input into a free slot of its worker and posts it, and
 * waits (a promise) when all are busy: that wait is the backpressure, so
 * memory is bounded by the slots plus the output buffers of the jobs in
 * flight (which their callers bound). Outputs are written by the worker
 * into buffers recycle() handed back (outputBuffers.ts) or into new ones,
 * never copied. A job stays on one worker (its frame state lives there);
 * new jobs go to the worker with the fewest (poolWorker.ts).
 *
 * Workers start on first use and are unref'd while idle, so an idle pool
 * never keeps the process alive; after `idleMs` without work they exit.
 * The process-wide pool (Lz4WorkerPool.shared()) has one worker per spare
 * core, at least one.
 */
import { availableParallelism } from 'node:os';
import { Lz4CompressJob } from './compressJob.js';
import { Lz4DecodeError } from './errors.js';
import { lz4BlockRecordEnd, lz4DecodedBound, readLz4FrameHeader } from './frameDecoder.js';
import { DEFAULT_BLOCK_SIZE, isLz4BlockSize, lz4FrameBound, type Lz4BlockSize } from './frameEncoder.js';
import { OutputBuffers } from './outputBuffers.js';
import { Lz4WorkerError, PoolWorker } from './poolWorker.js';
import type { ToWorker, WorkerSetup } from './protocol.js';

export { Lz4CompressJob, Lz4WorkerError };

export interface Lz4WorkerPoolOptions {
  /** Worker threads at most (default: one per spare core, at least 1). */
  workers?: number;
  /** LZ4 block size of the frames it writes (default 4 MiB). */
  blockSize?: Lz4BlockSize;
  /** Input slots per worker (default 2: one being filled while the worker codes the other). */
  slotsPerWorker?: number;
  /** Idle time after which a worker exits (default 5 s). */
  idleMs?: number;
}

/** Slot size: a whole maximum-size block record (size word, 4 MiB, checksum) fits. */
const SLOT_SIZE = 4 * 1024 * 1024 + 64;

function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

export class Lz4WorkerPool {
  readonly size: number;
  readonly blockSize: Lz4BlockSize;
  readonly slotsPerWorker: number;
  private readonly idleMs: number;
  private readonly workers: PoolWorker[] = [];
  private readonly outputs = new OutputBuffers();
  private nextId = 1;
  private closed = false;

  private static sharedPool: Lz4WorkerPool | undefined;

  /** The process-wide pool the LZ4 stages use unless given one. */
  static shared(): Lz4WorkerPool {
    Lz4WorkerPool.sharedPool ??= new Lz4WorkerPool();
    return Lz4WorkerPool.sharedPool;
  }

  constructor(options: Lz4WorkerPoolOptions = {}) {
    const size = options.workers ?? Math.max(1, availableParallelism() - 1);
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`workers must be a positive integer, got ${size}`);
    const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
    if (!isLz4BlockSize(blockSize)) throw new RangeError(`LZ4 block size must be 64 KiB, 256 KiB, 1 MiB or 4 MiB, got ${blockSize}`);
    const slots = options.slotsPerWorker ?? 2;
    if (!Number.isInteger(slots) || slots < 1) throw new RangeError(`slotsPerWorker must be a positive integer, got ${slots}`);
    this.size = size;
    this.blockSize = blockSize;
    this.slotsPerWorker = slots;
    this.idleMs = options.idleMs ?? 5000;
  }

  /** Start compressing one frame of `contentSize` bytes. */
  compress(contentSize: number): Lz4CompressJob {
    if (!Number.isSafeInteger(contentSize) || contentSize < 0) throw new RangeError(`bad LZ4 content size ${contentSize}`);
    const worker = this.pick();
    const output = this.outputs.take(lz4FrameBound(contentSize, this.blockSize));
    return new Lz4CompressJob(worker, this.nextId++, contentSize, SLOT_SIZE - (SLOT_SIZE % this.blockSize), output, this.outputs);
  }

  /**
   * Start compressing one frame of `contentSize` bytes in parts: `onPart`
   * gets each part in order as the worker finishes it (one per input slot,
   * 4 MiB of content; `last` on the one that ends the frame), each in a
   * buffer of its own that recycle() takes back once written. So no whole
   * frame is ever in memory. The job's end() resolves after the last part.
   */
  compressParts(contentSize: number, onPart: (part: Buffer, last: boolean) => void, partContent = SLOT_SIZE): Lz4CompressJob {
    if (!Number.isSafeInteger(contentSize) || contentSize < 0) throw new RangeError(`bad LZ4 content size ${contentSize}`);
    const worker = this.pick();
    const capacity = Math.min(SLOT_SIZE, Math.max(partContent, this.blockSize));
    const slotCapacity = capacity - (capacity % this.blockSize);
    return new Lz4CompressJob(worker, this.nextId++, contentSize, slotCapacity, undefined, this.outputs, { blockSize: this.blockSize, onPart });
  }

  /**
   * Hand back a frame compress() or decompressFrame() produced once it is
   * written and no longer needed (FileSink's onWritten), so a later job
   * reuses its memory. Other buffers are ignored. Never recycle a buffer
   * still in use.
   */
  recycle(frame: Uint8Array): void {
    this.outputs.give(frame);
  }

  /** Compress `data` into one frame. */
  async compressFrame(data: Uint8Array): Promise<Buffer> {
    const job = this.compress(data.length);
    try {
      await job.write(data);
    } catch (err) {
      job.abort();
      throw err;
    }
    return job.end();
  }

  /**
   * Decode the one LZ4 frame `frame` (nothing may follow it). Throws
   * Lz4DecodeError (Lz4ChecksumError for a checksum mismatch) naming the
   * byte of the frame where it went wrong.
   */
  async decompressFrame(frame: Uint8Array): Promise<Buffer> {
    const descriptor = readLz4FrameHeader(frame);
    const capacity = lz4DecodedBound(frame);
    const worker = this.pick();
    const id = this.nextId++;
    const output = this.outputs.take(capacity);
    const result = worker.track(id, output);
    result.catch(() => this.outputs.drop(output));
    worker.post(output ? { op: 'decompress', id, descriptor, capacity, output } : { op: 'decompress', id, descriptor, capacity });
    try {
      let at = descriptor.headerLength;
      for (;;) {
        // Whole block records, as many as fit a slot.
        const start = at;
        let end = lz4BlockRecordEnd(frame, at, frame.length, descriptor);
        while (end >= 0 && end - start <= SLOT_SIZE) {
          at = end;
          end = at + 4 <= frame.length ? lz4BlockRecordEnd(frame, at, frame.length, descriptor) : -2;
          if (end === -2) throw new Lz4DecodeError('LZ4 frame ends before its end mark', at);
        }
        const last = end === -1;
        const message: ToWorker = { op: 'data', id, slot: -1, length: at - start, frameOffset: start, last };
        if (at > start) {
          const slot = await worker.slot();
          if (slot < 0) throw worker.dead ?? new Lz4WorkerError('LZ4 worker gone');
          worker.slots[slot]!.set(frame.subarray(start, at));
          message.slot = slot;
        }
        if (last) {
          const checksumAt = at + 4;
          const frameEnd = checksumAt + (descriptor.contentChecksum ? 4 : 0);
          if (frameEnd > frame.length) {
            if (message.slot >= 0) worker.giveBack(message.slot);
            throw new Lz4DecodeError('LZ4 frame ends inside its content checksum', checksumAt);
          }
          if (frameEnd < frame.length) {
            if (message.slot >= 0) worker.giveBack(message.slot);
            throw new Lz4DecodeError(`${frame.length - frameEnd} bytes follow the LZ4 frame`, frameEnd);
          }
          if (descriptor.contentChecksum) message.contentChecksum = u32(frame, checksumAt);
        }
        worker.post(message);
        if (last) break;
      }
    } catch (err) {
      worker.drop(id);
      throw err;
    }
    return result;
  }

  /** Stop every worker; jobs in flight fail. */
  async close(): Promise<void> {
    this.closed = true;
    const workers = this.workers.splice(0);
    await Promise.all(workers.map((w) => w.terminate()));
    if (Lz4WorkerPool.sharedPool === this) Lz4WorkerPool.sharedPool = undefined;
  }

  /** A worker that exited or retired. */
  private remove(worker: PoolWorker): void {
    const i = this.workers.indexOf(worker);
    if (i >= 0) this.workers.splice(i, 1);
  }

  private pick(): PoolWorker {
    if (this.closed) throw new Lz4WorkerError('LZ4 worker pool is closed');
    let best: PoolWorker | undefined;
    for (const w of this.workers) if (!best || w.load < best.load) best = w;
    if (best && (best.load === 0 || this.workers.length >= this.size)) return best;
    const setup: WorkerSetup = {
      slots: new SharedArrayBuffer(SLOT_SIZE * this.slotsPerWorker),
      slotSize: SLOT_SIZE,
      slotCount: this.slotsPerWorker,
      blockSize: this.blockSize,
    };
    const worker = new PoolWorker(setup, this.idleMs, (gone) => this.remove(gone));
    this.workers.push(worker);
    return worker;
  }
}
