/**
 * Scratch buffers (a piece's input window, the frontier's work area),
 * reused and bounded by bytes: a fresh megabyte per span decoded was
 * garbage the allocator kept as RSS. Up to 1 MiB (a span), sizes round up to powers
 * of two from 64 KiB (a small piece's window is small); beyond, sizes are
 * exact (a 4 MiB block's window is 4 MiB and a few bytes, rounding would
 * double it), and those are few: one or two per block size.
 */
const MIN_SCRATCH = 64 * 1024;
const ROUNDED_UPTO = 1024 * 1024;
// 4 MiB: one span's window and work area (8 MiB measured ~4 MB more peak RSS, no faster).
const SCRATCH_IDLE_BYTES = 4 * 1024 * 1024;
const scratch = new Map<number, Buffer[]>();
let scratchIdle = 0;
function scratchClass(size: number): number {
  if (size > ROUNDED_UPTO) return size;
  let c = MIN_SCRATCH;
  while (c < size) c *= 2;
  return c;
}
/** A buffer of at least `size` bytes; contents are stale. */
export function takeScratch(size: number): Buffer {
  const c = scratchClass(size);
  const buf = scratch.get(c)?.pop();
  if (!buf) return Buffer.allocUnsafeSlow(c);
  scratchIdle -= buf.length;
  return buf;
}
/** Hand back a buffer from takeScratch(); it must not be used afterwards. */
export function giveScratch(buf: Buffer): void {
  const list = scratch.get(buf.length) ?? [];
  // One of each size is kept even over the bound: a 4 MiB block's window would otherwise be allocated per span.
  if (list.length > 0 && scratchIdle + buf.length > SCRATCH_IDLE_BYTES) return;
  list.push(buf);
  scratch.set(buf.length, list);
  scratchIdle += buf.length;
}
