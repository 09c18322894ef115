/**
 * Positioned reads of small pieces (frame headers, LZ4 block sizes, a
 * trailer) at increasing offsets of a file, through one read-ahead window:
 * a read the window already holds costs no system call, any other read
 * fills the window from its position. Small frames (scattered 64 KiB
 * blocks) then cost one read per window instead of one per header, while
 * large payloads are skipped without being read.
 */
import type { FileHandle } from 'node:fs/promises';

const DEFAULT_WINDOW = 64 * 1024;

export class WindowedReader {
  private window: Buffer;
  private windowAt = 0;
  private windowLength = 0;
  /** System calls made so far (for logs and tests). */
  reads = 0;

  constructor(
    private readonly handle: FileHandle,
    /** Size of the file; nothing is read past it. */
    readonly fileSize: number,
    windowSize = DEFAULT_WINDOW,
  ) {
    this.window = Buffer.allocUnsafe(windowSize);
  }

  /**
   * `length` bytes at `position`, fewer only where the file ends. The
   * result may be a view of the window: use it before the next read.
   */
  async read(position: number, length: number): Promise<Buffer> {
    const want = Math.max(0, Math.min(length, this.fileSize - position));
    if (position >= this.windowAt && position + want <= this.windowAt + this.windowLength) {
      return this.window.subarray(position - this.windowAt, position - this.windowAt + want);
    }
    if (want > this.window.length) {
      const out = Buffer.allocUnsafe(want);
      await this.fill(out, position);
      return out;
    }
    this.windowAt = position;
    this.windowLength = Math.min(this.window.length, this.fileSize - position);
    await this.fill(this.window.subarray(0, this.windowLength), position);
    return this.window.subarray(0, want);
  }

  private async fill(buf: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      this.reads++;
      const { bytesRead } = await this.handle.read(buf, done, buf.length - done, position + done);
      if (bytesRead === 0) {
        // The file shrank under us: forget the window so nothing stale is served.
        this.windowLength = 0;
        throw new Error(`unexpected end of file at byte ${position + done} (the file is ${this.fileSize} bytes; did it shrink?)`);
      }
      done += bytesRead;
    }
  }
}
