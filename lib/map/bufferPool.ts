/**
 * A pool of large reusable buffers, in power-of-two size classes (64 KiB
 * and up). Handing the same memory out again matters on virtual machines
 * where first touching fresh pages is slow (300 ms per 32 MiB measured
 * here) and where freed multi-megabyte buffers linger in the allocator:
 * the chain export decompresses into pooled buffers and reads compressed
 * pieces into them. Idle buffers are kept up to `maxIdleBytes`; beyond
 * that a returned buffer is left to the garbage collector, unless it is the
 * only idle one of its size.
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
  private idleHeld = 0;

  constructor(readonly maxIdleBytes = 64 * 1024 * 1024) {}

  /** Bytes of idle buffers. */
  get idleBytes(): number {
    return this.idleHeld;
  }

  /** A buffer of at least `size` bytes (its length is a size class, at most 4 times size's); contents are stale. */
  take(size: number): Buffer {
    const c = sizeClass(size);
    // An idle buffer up to two classes larger will do: allocating while a bigger buffer idles churns memory.
    return this.takeIdle(size, c * 4) ?? Buffer.allocUnsafeSlow(c);
  }

  /** The smallest idle buffer of at least `size` bytes and at most `largest`, if any. */
  takeIdle(size: number, largest = Infinity): Buffer | undefined {
    let best: number | undefined;
    for (const [c, list] of this.idle) if (c >= size && c <= largest && list.length > 0 && (best === undefined || c < best)) best = c;
    if (best === undefined) return undefined;
    const buf = this.idle.get(best)!.pop()!;
    this.idleHeld -= buf.length;
    return buf;
  }

  /** Let go of one idle buffer, the smallest; false when none idles. */
  dropSmallest(): boolean {
    const buf = this.takeIdle(0);
    return buf !== undefined;
  }

  /** Give a buffer from take() back; it must not be used afterwards. */
  give(buf: Buffer): void {
    const list = this.idle.get(buf.length) ?? [];
    // One idle buffer of each size is kept even over the bound (a few MiB in all): a 4 MiB span's buffer would otherwise be allocated anew for every span.
    if (list.length > 0 && this.idleHeld + buf.length > this.maxIdleBytes) return;
    list.push(buf);
    this.idle.set(buf.length, list);
    this.idleHeld += buf.length;
  }

  /** Drop every idle buffer. */
  clear(): void {
    this.idle.clear();
    this.idleHeld = 0;
  }
}
