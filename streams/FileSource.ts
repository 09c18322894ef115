/**
 * FileSource: a Readable of a file's bytes, front to back, in reads of
 * `bufferSize` (default 1 MiB), that lends its buffers (BufferLoans): a
 * consumer that releases a buffer once nothing reads it any more (SparseParser
 * -> NbdWriter's onWritten, in a restore) lets a later read reuse it, so
 * reading a big data file allocates a fixed set of buffers rather than one
 * per read. Consumers that never release simply get fresh buffers.
 */
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { BufferLender, type BufferLoans } from '../lib/bufferLender.js';

export interface FileSourceOptions {
  /** Bytes per read (default 1 MiB). */
  bufferSize?: number;
  /**
   * Released buffers kept for reuse (default 48: what a restore holds at
   * once: an LZ4 frame's inputs until it is complete (32 MiB of data frames
   * compress to less), the pieces in flight).
   */
  spare?: number;
}

const DEFAULT_BUFFER_SIZE = 1024 * 1024;

export class FileSource extends Readable implements BufferLoans {
  private readonly lender: BufferLender;
  /** Bytes read so far (the offset of the next read). */
  bytesRead = 0;

  private constructor(
    private readonly handle: FileHandle,
    options: FileSourceOptions,
  ) {
    const size = options.bufferSize ?? DEFAULT_BUFFER_SIZE;
    // One read ahead of the consumer: the buffer list holds at most one full buffer.
    super({ highWaterMark: size });
    this.lender = new BufferLender(size, options.spare ?? 48);
  }

  /** Open `path` for reading; fails (ENOENT, EACCES...) before any stream exists. */
  static async open(path: string, options: FileSourceOptions = {}): Promise<FileSource> {
    return new FileSource(await open(path, 'r'), options);
  }

  /** Buffers this source allocated so far (reads into reused ones not counted). */
  get buffersAllocated(): number {
    return this.lender.allocated;
  }

  retain(view: Uint8Array): void {
    this.lender.retain(view);
  }

  release(view: Uint8Array): void {
    if (!this.destroyed) this.lender.release(view);
  }

  override _read(): void {
    const buffer = this.lender.lend();
    this.handle.read(buffer, 0, buffer.length, this.bytesRead).then(
      ({ bytesRead }) => {
        if (bytesRead === 0) {
          this.push(null);
          return;
        }
        this.bytesRead += bytesRead;
        this.push(buffer.subarray(0, bytesRead));
      },
      (error: Error) => this.destroy(error),
    );
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.lender.drop();
    this.handle.close().then(
      () => callback(error),
      (closeError: Error) => callback(error ?? closeError),
    );
  }
}
