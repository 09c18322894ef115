/**
 * NbdReader: a Transform (object mode) from Extent to Chunk that reads data
 * extents from an NBD export.
 *
 * In: Extents in offset order (from ExtentSource). Out: Chunks in the same
 * order: data extents become data chunks read with NBD_CMD_READ in pieces
 * of at most `requestSize` bytes (default 512 KiB; the pieces of an extent
 * read in more than one request carry `frame`, the extent's span); zero
 * extents become zero chunks; extents that are neither (clean ranges of a
 * dirty bitmap) are dropped. Buffers: at most `inFlight` (default 16) reads,
 * outstanding or finished and waiting, plus `readableHighWaterMark`
 * (default 2) chunks passed on, so memory stays below (inFlight + 2) x
 * requestSize. Reads go out concurrently and are emitted in order. A
 * failed read (NbdError with the server's errno) destroys the stream.
 * A consumer done with a chunk may hand its data back with release(): the
 * buffer is then reused for a later read (at most `inFlight` + 4 are kept
 * for that, on top of the bound above), which spares allocating and
 * page-faulting fresh memory per request (`npm run bench -- nbd`: half the
 * CPU, 30-50% less time).
 */
import { Transform, type TransformCallback } from 'node:stream';
import type { Chunk } from '../lib/chunk.js';
import type { Extent } from '../lib/extent.js';
import type { NbdBlockDevice } from '../lib/nbd/device.js';
import { BufferLender } from '../lib/bufferLender.js';

export interface NbdReaderOptions {
  /** Concurrent NBD_CMD_READ requests (default 16). */
  inFlight?: number;
  /**
   * Bytes per read request (default 512 KiB, at most client.maxRequestSize).
   * Measured against qemu-nbd 7.2 (`npm run bench -- nbd`): 256 KiB to
   * 512 KiB x 8 to 16 in flight read as fast as nbdcopy; from 1 MiB on, a
   * freshly started server burns 4x the CPU (it allocates and page-faults
   * a new buffer per request) and reading takes 3-5x longer.
   */
  requestSize?: number;
  /** Finished chunks buffered for the consumer (default 2). */
  readableHighWaterMark?: number;
}

const DEFAULT_REQUEST_SIZE = 512 * 1024;

/** One output position: a finished chunk, or a read that fills `chunk` when it completes. */
interface Slot {
  chunk?: Chunk;
  pending?: Promise<Chunk>;
}

export class NbdReader extends Transform {
  private readonly client: NbdBlockDevice;
  private readonly inFlight: number;
  private readonly requestSize: number;
  /** Chunks in output order: finished (zero) or being read. */
  private readonly slots: Slot[] = [];
  private reading = 0;
  private resumeRead?: () => void;
  /** Bytes of data read so far. */
  bytesRead = 0;
  /** Data buffers (each requestSize bytes) handed out, and released ones waiting for reuse. */
  private readonly lender: BufferLender;

  constructor(client: NbdBlockDevice, opts: NbdReaderOptions = {}) {
    super({ objectMode: true, readableHighWaterMark: opts.readableHighWaterMark ?? 2, writableHighWaterMark: 16 });
    this.client = client;
    this.inFlight = Math.max(1, opts.inFlight ?? 16);
    const size = Math.min(opts.requestSize ?? DEFAULT_REQUEST_SIZE, client.maxRequestSize);
    // Keep pieces aligned to the server's minimum block size.
    this.requestSize = Math.max(size - (size % client.minimumBlockSize), client.minimumBlockSize);
    this.lender = new BufferLender(this.requestSize, this.inFlight + 4);
  }

  /**
   * Give back a chunk's `data` for reuse. Only when nothing (nor any view
   * of it) will read it again: the next read overwrites it. Buffers this
   * reader did not hand out, or already got back, are ignored.
   */
  release(data: Buffer): void {
    if (!this.destroyed) this.lender.release(data);
  }

  override _transform(extent: Extent, _enc: BufferEncoding, cb: TransformCallback): void {
    this.accept(extent).then(() => cb(), (err: Error) => cb(err));
  }

  override _flush(cb: TransformCallback): void {
    this.emitUntil(0).then(() => cb(), (err: Error) => cb(err));
  }

  override _read(size: number): void {
    const resume = this.resumeRead;
    this.resumeRead = undefined;
    resume?.();
    super._read(size);
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    // Reads in flight cannot be recalled; their results are dropped.
    this.slots.length = 0;
    this.lender.drop();
    const resume = this.resumeRead;
    this.resumeRead = undefined;
    resume?.();
    cb(err);
  }

  private async accept(extent: Extent): Promise<void> {
    if (extent.zero && !extent.data) {
      this.slots.push({ chunk: { offset: extent.offset, length: extent.length, zero: true } });
      await this.emitUntil(this.inFlight * 4);
      return;
    }
    if (!extent.data) return;
    const pieces = Math.ceil(extent.length / this.requestSize);
    const frame = pieces > 1 ? { offset: extent.offset, length: extent.length } : undefined;
    for (let at = extent.offset; at < extent.offset + extent.length; at += this.requestSize) {
      // Make room first: at most inFlight reads outstanding or finished and not yet passed on
      // (counting only outstanding ones let finished reads pile up behind a slow consumer).
      while (this.slots.length >= this.inFlight) await this.emitOne();
      if (this.destroyed) return;
      const length = Math.min(this.requestSize, extent.offset + extent.length - at);
      const slot: Slot = {};
      slot.pending = this.readPiece(at, length, frame).then((chunk) => (slot.chunk = chunk));
      slot.pending.catch(() => {}); // handled when its turn comes; avoid an unhandled rejection meanwhile
      this.slots.push(slot);
    }
    await this.emitUntil(this.inFlight * 4);
  }

  private readPiece(offset: number, length: number, frame?: { offset: number; length: number }): Promise<Chunk> {
    this.reading++;
    const into = this.lender.lend();
    const p = this.client.read(offset, length, into).then(
      (data) => {
        this.reading--;
        this.bytesRead += length;
        const chunk: Chunk = { offset, length, data };
        if (frame) chunk.frame = frame;
        return chunk;
      },
      (err: Error) => {
        this.reading--;
        this.release(into);
        throw err;
      },
    );
    return p;
  }

  /** Emit the first slot (waiting for its read), honouring the consumer's backpressure. */
  private async emitOne(): Promise<void> {
    const slot = this.slots.shift();
    if (!slot) return;
    const chunk = slot.chunk ?? (await (slot.pending as Promise<Chunk>));
    if (this.destroyed) return;
    if (!this.push(chunk)) {
      await new Promise<void>((resolve) => {
        this.resumeRead = resolve;
      });
    }
  }

  /** Emit finished slots at the front; keep waiting while more than `keep` slots are queued. */
  private async emitUntil(keep: number): Promise<void> {
    while (this.slots.length > 0 && !this.destroyed) {
      const head = this.slots[0];
      if (head.chunk || this.slots.length > keep) await this.emitOne();
      else break;
    }
  }
}
