/**
 * RawImageSink: Chunk (object mode) in, a sparse raw disk image out, as
 * virtnbdbackup's `-t raw` and `--raw` backups write them. Data chunks are
 * written at their disk offsets into `<path>.partial` (created
 * exclusively); zero chunks are skipped, since a new file reads as zeros
 * where nothing was written, which keeps the image sparse. When the input
 * has ended it truncates the file to the disk's virtual size, fsyncs it,
 * renames it to `<path>` and fsyncs the directory, so nothing half-written
 * ever carries the final name; on error or destroy() it closes and removes
 * the partial file. Buffers: one chunk being written plus `highWaterMark`
 * chunks (default 4) queued by the writer.
 */
import { Writable } from 'node:stream';
import { lstat, open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Chunk } from '../lib/chunk.js';
import { partialFileName } from '../lib/format/naming.js';
import { errnoCode } from './fsErrors.js';

export interface RawImageSinkOptions {
  /** Size of the virtual disk: the image's final length. */
  virtualSize: number;
  /** fsync the file and its directory (default true). */
  sync?: boolean;
  /** Chunks queued before the producer must wait (default 4). */
  highWaterMark?: number;
}

/** Why a RawImageSink could not deliver its image; `path` is the final name. */
export class RawImageSinkError extends Error {
  override readonly name = 'RawImageSinkError';
  constructor(
    message: string,
    readonly path: string,
    /** errno code when the system gave one (ENOSPC, EEXIST...). */
    readonly code?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class RawImageSink extends Writable {
  readonly path: string;
  readonly partialPath: string;
  private readonly virtualSize: number;
  private readonly sync: boolean;
  private handle: FileHandle | undefined;
  private created = false;
  private committed = false;
  /** The file operation in flight; _destroy waits for it before closing. */
  private pending: Promise<unknown> | undefined;
  /** Bytes of data written. */
  bytesWritten = 0;

  constructor(path: string, options: RawImageSinkOptions) {
    super({ objectMode: true, highWaterMark: options.highWaterMark ?? 4 });
    if (!Number.isSafeInteger(options.virtualSize) || options.virtualSize < 0) {
      throw new RangeError(`virtualSize must be a non-negative integer, got ${options.virtualSize}`);
    }
    this.path = path;
    this.partialPath = partialFileName(path);
    this.virtualSize = options.virtualSize;
    this.sync = options.sync ?? true;
  }

  override _construct(callback: (error?: Error | null) => void): void {
    this.track(this.openPartial()).then(() => callback(), callback);
  }

  private async openPartial(): Promise<void> {
    const exists = await lstat(this.path).then(
      () => true,
      (e: unknown) => (errnoCode(e) === 'ENOENT' ? false : Promise.reject(e)),
    );
    if (exists) throw new RawImageSinkError(`Refusing to overwrite existing file ${this.path}`, this.path, 'EEXIST');
    try {
      this.handle = await open(this.partialPath, 'wx');
      this.created = true;
    } catch (error) {
      throw new RawImageSinkError(`Cannot create ${this.partialPath}: ${describe(error)}`, this.path, errnoCode(error), { cause: error });
    }
  }

  override _write(chunk: Chunk, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.track(this.writeChunk(chunk)).then(() => callback(), callback);
  }

  private async writeChunk(chunk: Chunk): Promise<void> {
    if (chunk.zero) return;
    const data = chunk.data;
    if (data === undefined || data.length !== chunk.length) {
      throw new RawImageSinkError(`Chunk at disk offset ${chunk.offset} has no data of length ${chunk.length}`, this.path);
    }
    if (chunk.offset + chunk.length > this.virtualSize) {
      throw new RawImageSinkError(`Chunk at disk offset ${chunk.offset} runs past the virtual size ${this.virtualSize}`, this.path);
    }
    const handle = this.handle;
    if (handle === undefined) throw new RawImageSinkError(`Cannot write ${this.path}: file is closed`, this.path);
    try {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await handle.write(data, done, data.length - done, chunk.offset + done);
        done += bytesWritten;
      }
      this.bytesWritten += done;
    } catch (error) {
      throw new RawImageSinkError(`Cannot write ${this.path}: ${describe(error)}`, this.path, errnoCode(error), { cause: error });
    }
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.track(this.commit()).then(() => callback(), callback);
  }

  private async commit(): Promise<void> {
    const handle = this.handle;
    if (handle === undefined) throw new RawImageSinkError(`Cannot finish ${this.path}: file is closed`, this.path);
    try {
      await handle.truncate(this.virtualSize);
      if (this.sync) await handle.sync();
      this.handle = undefined;
      await handle.close();
      await rename(this.partialPath, this.path);
      this.committed = true;
      if (this.sync) {
        const dir = await open(dirname(this.path), 'r');
        try {
          await dir.sync();
        } finally {
          await dir.close();
        }
      }
    } catch (error) {
      throw new RawImageSinkError(`Cannot complete ${this.path}: ${describe(error)}`, this.path, errnoCode(error), { cause: error });
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.cleanUp().then(
      () => callback(error),
      (cleanupError: unknown) => callback(error ?? (cleanupError as Error)),
    );
  }

  private async cleanUp(): Promise<void> {
    // Closing while a write is in the thread pool could let it land in a reused fd.
    await this.pending?.catch(() => undefined);
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close().catch(() => undefined);
    if (this.created && !this.committed) {
      await unlink(this.partialPath).catch((e: unknown) => (errnoCode(e) === 'ENOENT' ? undefined : Promise.reject(e)));
    }
  }

  private track<T>(operation: Promise<T>): Promise<T> {
    this.pending = operation;
    return operation;
  }
}
