/**
 * A FIFO of received bytes kept as the socket's own Buffers. Taking n bytes
 * returns a view when they lie in one buffer and copies only when they span
 * several, so payloads are not copied more than needed.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes already consumed from chunks[0]
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(buf: Buffer): void {
    if (buf.length === 0) return;
    this.chunks.push(buf);
    this.total += buf.length;
  }

  /** Remove and return exactly n bytes (n <= length). */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError(`ByteQueue: take(${n}) with ${this.total} bytes queued`);
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.consume(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyTo(out, 0, n);
    return out;
  }

  /**
   * Move up to n bytes into `target` at `at`; returns how many were moved.
   * Used to land READ payloads straight in the caller's result buffer.
   */
  takeInto(target: Buffer, at: number, n: number): number {
    const count = Math.min(n, this.total);
    this.copyTo(target, at, count);
    return count;
  }

  /** Drop up to n bytes; returns how many were dropped. */
  skip(n: number): number {
    const count = Math.min(n, this.total);
    this.consume(count);
    return count;
  }

  /** Read a big-endian u32 at byte `at` of the queue without consuming (at + 4 <= length). */
  peekUInt32BE(at = 0): number {
    if (this.chunks.length > 0 && this.chunks[0].length - this.head >= at + 4) {
      return this.chunks[0].readUInt32BE(this.head + at);
    }
    const b = Buffer.allocUnsafe(at + 4);
    let filled = 0;
    let idx = 0;
    let off = this.head;
    while (filled < b.length) {
      const c = this.chunks[idx];
      const n = Math.min(c.length - off, b.length - filled);
      c.copy(b, filled, off, off + n);
      filled += n;
      idx++;
      off = 0;
    }
    return b.readUInt32BE(at);
  }

  /**
   * Replace the newest buffer by a copy of its unconsumed bytes, because its
   * memory is about to be reused (a transport's scratch buffer).
   */
  copyLast(): void {
    const i = this.chunks.length - 1;
    if (i < 0) return;
    const start = i === 0 ? this.head : 0;
    this.chunks[i] = Buffer.from(this.chunks[i].subarray(start));
    if (i === 0) this.head = 0;
  }

  /** Remove and return everything queued. */
  drain(): Buffer[] {
    const out = this.chunks.map((c, i) => (i === 0 ? c.subarray(this.head) : c));
    this.chunks = [];
    this.head = 0;
    this.total = 0;
    return out;
  }

  private copyTo(target: Buffer, at: number, n: number): void {
    let done = 0;
    while (done < n) {
      const c = this.chunks[0];
      const avail = c.length - this.head;
      const step = Math.min(avail, n - done);
      c.copy(target, at + done, this.head, this.head + step);
      done += step;
      this.consume(step);
    }
  }

  private consume(n: number): void {
    this.total -= n;
    while (n > 0) {
      const c = this.chunks[0];
      const avail = c.length - this.head;
      if (n < avail) {
        this.head += n;
        return;
      }
      n -= avail;
      this.chunks.shift();
      this.head = 0;
    }
  }
}
