/**
 * Lz4CompressJob: one LZ4 frame being compressed on a pool worker. The
 * content is written in order; each write is copied into the worker's free
 * input slots (and hashed here, for the content checksum, beside the
 * worker's work), a full slot is posted, and a write waits when no slot is
 * free. end() gives the frame once the worker has finished it.
 *
 * In parts mode (`parts` given, by Lz4WorkerPool.compressParts) the frame
 * is not built whole: each posted slot becomes one part (the header with
 * the first, the end mark and content checksum with the last), written
 * into a buffer of its own and handed to `parts.onPart` in order; end()
 * then resolves (to an empty buffer) after the last part. So a frame
 * streams out in slot-sized pieces.
 */
import { Xxh32 } from '../format/xxh32.js';
import { lz4PartBound, type Lz4BlockSize } from './frameEncoder.js';
import type { OutputBuffers } from './outputBuffers.js';
import { Lz4WorkerError, type PoolWorker } from './poolWorker.js';
import type { ToWorker } from './protocol.js';

export class Lz4CompressJob {
  private slot = -1;
  private fill = 0;
  private written = 0;
  private readonly hash = new Xxh32();
  /** The write still copying (later writes queue behind it). */
  private pending: Promise<void> | undefined;
  private readonly result: Promise<Buffer>;
  private finished = false;
  /** Parts mode: the buffers sent with data messages whose parts have not come back, in order. */
  private readonly partOutputs: Array<SharedArrayBuffer | undefined> = [];
  private posted = 0;

  constructor(
    private readonly worker: PoolWorker,
    private readonly id: number,
    readonly contentSize: number,
    private readonly slotCapacity: number,
    output: SharedArrayBuffer | undefined,
    private readonly outputs: OutputBuffers,
    private readonly parts?: { blockSize: Lz4BlockSize; onPart: (part: Buffer, last: boolean) => void },
  ) {
    if (parts) {
      this.result = worker
        .trackParts(id, (buffer, length) => {
          const sent = this.partOutputs.shift();
          const last = this.partOutputs.length === 0 && this.finished;
          parts.onPart(Buffer.from(buffer ?? sent!, 0, length), last);
        })
        .then(() => Buffer.alloc(0));
      // Buffers of parts that never came back were never handed out: they can be reused.
      this.result.catch(() => {
        for (const sent of this.partOutputs.splice(0)) outputs.drop(sent);
      });
      worker.post({ op: 'compress', id, contentSize, parts: true });
    } else {
      this.result = worker.track(id, output);
      // A failed job's buffer was never handed out: it can be reused.
      this.result.catch(() => outputs.drop(output));
      worker.post(output ? { op: 'compress', id, contentSize, output } : { op: 'compress', id, contentSize });
    }
    if (contentSize === 0) this.post(true);
  }

  /**
   * Copy `bytes` (the next content) into the worker's slots. Returns
   * undefined when they were copied at once, or a promise that resolves
   * once they are (the caller may reuse `bytes` after that).
   */
  write(bytes: Uint8Array): Promise<void> | undefined {
    if (this.written + bytes.length > this.contentSize) throw new RangeError(`LZ4 frame content exceeds its declared ${this.contentSize} bytes`);
    if (this.pending) return this.queue(this.pending.then(() => this.copy(bytes, 0)));
    const waiting = this.copy(bytes, 0);
    return waiting ? this.queue(waiting) : undefined;
  }

  /** The finished frame (after all content was written); in parts mode an empty buffer, once the last part was given. */
  end(): Promise<Buffer> {
    return this.result;
  }

  /** Give up: the worker forgets the job, its slot is freed. */
  abort(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.slot >= 0) this.worker.giveBack(this.slot);
    this.slot = -1;
    this.worker.drop(this.id);
    // The worker may still be writing into the buffer: it is not reused.
  }

  private queue(waiting: Promise<void>): Promise<void> {
    const settled = waiting.finally(() => {
      if (this.pending === settled) this.pending = undefined;
    });
    this.pending = settled;
    return settled;
  }

  private copy(bytes: Uint8Array, at: number): Promise<void> | undefined {
    while (at < bytes.length) {
      if (this.finished) throw new Lz4WorkerError('LZ4 compression job was aborted');
      if (this.slot < 0) {
        const slot = this.worker.trySlot();
        if (slot < 0) {
          const from = at;
          return this.worker.slot().then((s) => {
            if (s < 0) throw this.worker.dead ?? new Lz4WorkerError('LZ4 worker gone');
            if (this.finished) {
              this.worker.giveBack(s);
              throw new Lz4WorkerError('LZ4 compression job was aborted');
            }
            this.slot = s;
            this.fill = 0;
            return this.copy(bytes, from);
          });
        }
        this.slot = slot;
        this.fill = 0;
      }
      const take = Math.min(bytes.length - at, this.slotCapacity - this.fill);
      this.worker.slots[this.slot]!.set(take === bytes.length ? bytes : bytes.subarray(at, at + take), this.fill);
      this.hash.update(bytes, at, at + take);
      this.fill += take;
      this.written += take;
      at += take;
      const last = this.written === this.contentSize;
      if (this.fill === this.slotCapacity || last) this.post(last);
    }
    return undefined;
  }

  private post(last: boolean): void {
    const message: ToWorker = { op: 'data', id: this.id, slot: this.slot, length: this.slot < 0 ? 0 : this.fill, frameOffset: 0, last };
    if (last) {
      message.contentChecksum = this.hash.digest();
      this.finished = true;
    }
    if (this.parts) {
      const output = this.outputs.take(lz4PartBound(message.length, this.posted === 0, last, this.parts.blockSize));
      if (output) message.output = output;
      this.partOutputs.push(output);
    }
    this.posted += 1;
    this.worker.post(message);
    this.slot = -1;
    this.fill = 0;
  }
}
