/**
 * A pool of large reusable buffers, in power-of-two size classes (64 KiB
 * and up). Handing the same memory out again matters on virtual machines
 * where first touching fresh pages is slow (300 ms per 32 MiB measured
 * here) and where freed multi-megabyte buffers linger in the allocator:
 * the chain export decompresses into pooled buffers and reads compressed
 * pieces into them. Idle buffers are kept up to `maxIdleBytes`; beyond
 * that a returned buffer is left to the garbage collector.
 */

const MIN_CLASS = 64 * 1024;

/** The size class holding `size` bytes. */
export function sizeClass(size: number): number {
  let c = MIN_CLASS;
  while (c < size) c *= 2;
  return c;
}

export class BufferPool {
  private readonly idle = new Map<number, Buffer[]>();
  private idleBytes = 0;

  constructor(readonly maxIdleBytes = 64 * 1024 * 1024) {}

  /** A buffer of at least `size` bytes (its length is the size class); contents are stale. */
  take(size: number): Buffer {
    const c = sizeClass(size);
    const free = this.idle.get(c);
    const buf = free?.pop();
    if (buf) {
      this.idleBytes -= buf.length;
      return buf;
    }
    return Buffer.allocUnsafeSlow(c);
  }

  /** Give a buffer from take() back; it must not be used afterwards. */
  give(buf: Buffer): void {
    if (this.idleBytes + buf.length > this.maxIdleBytes) return;
    const list = this.idle.get(buf.length) ?? [];
    list.push(buf);
    this.idle.set(buf.length, list);
    this.idleBytes += buf.length;
  }

  /** Drop every idle buffer. */
  clear(): void {
    this.idle.clear();
    this.idleBytes = 0;
  }
}
