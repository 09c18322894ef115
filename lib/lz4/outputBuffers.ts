/**
 * Output buffers of LZ4 jobs handed back by recycle(), for later jobs.
 * Why: on this kind of host (a VM) touching fresh memory costs ~9 ms per
 * MiB in page faults (300 ms per 32 MiB measured here), more than coding
 * it; buffers that come back are resident already. They are
 * SharedArrayBuffers, so a worker writes its output straight into one.
 * Capacity rounds up to whole MiB; only the bytes written ever become
 * resident. Buffers never handed back are simply collected.
 */

/** Outputs smaller than this are not recycled: the allocator reuses their memory well enough. */
const MIN_RECYCLED = 1024 * 1024;
/**
 * Recycled buffers kept at most, and their bytes at most. The free list must
 * cover the buffers a pipeline has in flight, else every cycle drops some
 * and allocates new ones, and the dropped ones stay resident until a major
 * GC (a compressed backup measured 200+ MB instead of 155 MB with 3
 * buffers): frames in parts (about 5 MiB each) keep 6 in flight. The byte
 * cap keeps whole 32 MiB frames to one spare.
 */
const MAX_FREE_BUFFERS = 8;
const MAX_FREE_BYTES = 48 * 1024 * 1024;

export class OutputBuffers {
  private readonly free: SharedArrayBuffer[] = [];
  private freeBytes = 0;
  private readonly lent = new WeakSet<SharedArrayBuffer>();

  take(bytes: number): SharedArrayBuffer | undefined {
    if (bytes < MIN_RECYCLED) return undefined;
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const size = this.free[i]!.byteLength;
      if (size >= bytes && (best < 0 || size < this.free[best]!.byteLength)) best = i;
    }
    const buffer = best >= 0 ? this.free.splice(best, 1)[0]! : new SharedArrayBuffer(Math.ceil(bytes / MIN_RECYCLED) * MIN_RECYCLED);
    if (best >= 0) this.freeBytes -= buffer.byteLength;
    this.lent.add(buffer);
    return buffer;
  }

  /** Take back a buffer take() lent (anything else is ignored, as is a second return). */
  give(view: Uint8Array): void {
    const buffer = view.buffer;
    if (!(buffer instanceof SharedArrayBuffer) || !this.lent.has(buffer)) return;
    this.lent.delete(buffer);
    if (this.free.length < MAX_FREE_BUFFERS && this.freeBytes + buffer.byteLength <= MAX_FREE_BYTES) {
      this.free.push(buffer);
      this.freeBytes += buffer.byteLength;
    }
  }

  /** A buffer lent but never used (its job failed or was dropped). */
  drop(buffer: SharedArrayBuffer | undefined): void {
    if (buffer) this.give(new Uint8Array(buffer, 0, 0));
  }
}
