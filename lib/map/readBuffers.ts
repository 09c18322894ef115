/**
 * The buffers ChainExport reads into, lent to the NBD server and handed
 * back (releaseRead) once the reply is on the socket, so a client reading
 * the disk reuses a few resident buffers instead of allocating one per
 * request: nbdcopy's 256 KiB requests left ~60 MB of garbage that V8
 * collects late and malloc keeps.
 *
 * Sizes come in power-of-two classes from 4 KiB; a lent buffer is a view
 * of exactly the length asked for. Released buffers are kept for reuse up
 * to `spareBytes` over all classes; more are left to the garbage
 * collector. A buffer never released is simply collected, never reused
 * early, and releasing one twice (or one not lent here) does nothing.
 */

const MIN_CLASS = 4096;

function classOf(size: number): number {
  let c = MIN_CLASS;
  while (c < size) c *= 2;
  return c;
}

export class ReadBuffers {
  /** Lent memory, weakly: a loan never handed back dies with its buffer. */
  private readonly lent = new WeakMap<ArrayBufferLike, Buffer>();
  private readonly spare = new Map<number, Buffer[]>();
  private spareHeld = 0;
  /** Buffers allocated so far (not reused ones), for tests and logs. */
  allocated = 0;

  // 8 MiB: all that 4 connections x 2 MiB in flight (map.ts) use, so none is garbage.
  constructor(readonly spareBytes = 8 * 1024 * 1024) {}

  /** `length` bytes (contents stale), lent until release(). */
  lend(length: number): Buffer {
    const c = classOf(length);
    let whole = this.spare.get(c)?.pop();
    if (whole) {
      this.spareHeld -= c;
    } else {
      // Memory of its own (not the shared slab): it keys the loan and is reused whole.
      whole = Buffer.allocUnsafeSlow(c);
      this.allocated += 1;
    }
    this.lent.set(whole.buffer, whole);
    return whole.subarray(0, length);
  }

  /** Hand back the buffer `view` is part of; it must not be read afterwards. */
  release(view: Uint8Array): void {
    const whole = this.lent.get(view.buffer);
    if (!whole) return;
    this.lent.delete(view.buffer);
    if (this.spareHeld + whole.length > this.spareBytes) return;
    const list = this.spare.get(whole.length) ?? [];
    list.push(whole);
    this.spare.set(whole.length, list);
    this.spareHeld += whole.length;
  }

  /** Forget the spare buffers. */
  clear(): void {
    this.spare.clear();
    this.spareHeld = 0;
  }
}
