import { Writable } from 'node:stream';
import { open, lstat, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { partialFileName } from '../lib/format/naming.js';
import { errnoCode, reason } from './fsErrors.js';

/**
 * FileSink: bytes in, a file out. It writes `<path>.partial` (created
 * exclusively, so two writers, or a leftover of a crashed run, are caught
 * rather than interleaved or silently truncated) and only when the input
 * has ended successfully fsyncs it, renames it to `<path>` and fsyncs the
 * directory, so nothing half-written ever carries the final name. On error
 * or destroy() it closes and removes the partial file. An existing `<path>`
 * is refused before anything is written unless `overwrite` is set.
 * It buffers up to `highWaterMark` bytes (default 2 MiB) and writes all
 * queued chunks in one writev(), for large sequential writes. `onWritten`
 * learns of each buffer once its bytes are in the file, so a producer can
 * reuse the buffer (NbdReader.release).
 */

export interface FileSinkOptions {
  /** Replace an existing file under the final name (default: refuse). */
  overwrite?: boolean;
  /** fsync the file before and its directory after the rename (default true). */
  sync?: boolean;
  /** Bytes queued before write() asks the producer to wait (default 2 MiB: 4 MiB kept 2 MB more of a compressed backup's parts resident, no faster). */
  highWaterMark?: number;
  /** Permission bits of the new file, before the umask (default 0o666). */
  mode?: number;
  /** Called with each written buffer once the sink no longer needs it. */
  onWritten?: (buffer: Buffer) => void;
}

/** Why a FileSink could not deliver its file; `path` is the final name. */
export class FileSinkError extends Error {
  override readonly name = 'FileSinkError';
  constructor(
    message: string,
    /** The final file name the sink was writing. */
    readonly path: string,
    /** The errno code (ENOSPC, EEXIST, EACCES...) when the system gave one. */
    readonly code?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export class FileSink extends Writable {
  /** The final file name. */
  readonly path: string;
  /** The name written until success: `<path>.partial`. */
  readonly partialPath: string;
  private readonly overwrite: boolean;
  private readonly sync: boolean;
  private readonly mode: number;
  private readonly onWritten: ((buffer: Buffer) => void) | undefined;
  private handle: FileHandle | undefined;
  /** We created the partial file, so it is ours to remove. */
  private created = false;
  /** The partial file has been renamed to the final name. */
  private committed = false;
  /** The file operation in flight, awaited by _destroy before closing the fd. */
  private pending: Promise<unknown> | undefined;
  private written = 0;

  constructor(path: string, options: FileSinkOptions = {}) {
    super({ highWaterMark: options.highWaterMark ?? 2 * 1024 * 1024, decodeStrings: true });
    this.path = path;
    this.partialPath = partialFileName(path);
    this.overwrite = options.overwrite ?? false;
    this.sync = options.sync ?? true;
    this.mode = options.mode ?? 0o666;
    this.onWritten = options.onWritten;
  }

  /** Bytes written to the file so far. */
  get bytesWritten(): number {
    return this.written;
  }

  override _construct(callback: (error?: Error | null) => void): void {
    this.track(this.openPartial()).then(() => callback(), callback);
  }

  private async openPartial(): Promise<void> {
    if (!this.overwrite) await this.refuseExisting();
    try {
      this.handle = await open(this.partialPath, 'wx', this.mode);
      this.created = true;
    } catch (error) {
      if (errnoCode(error) === 'EEXIST') {
        throw new FileSinkError(
          `Cannot write ${this.path}: ${this.partialPath} already exists (another backup is writing it, or an earlier one was interrupted; remove it first)`,
          this.path,
          'EEXIST',
          { cause: error },
        );
      }
      throw new FileSinkError(`Cannot create ${this.partialPath}: ${reason(error)}`, this.path, errnoCode(error), { cause: error });
    }
  }

  private async refuseExisting(): Promise<void> {
    try {
      await lstat(this.path);
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') return;
      throw new FileSinkError(`Cannot check ${this.path}: ${reason(error)}`, this.path, errnoCode(error), { cause: error });
    }
    throw new FileSinkError(`Refusing to overwrite existing file ${this.path}`, this.path, 'EEXIST');
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.track(this.writeAll([chunk])).then(() => callback(), callback);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    this.track(this.writeAll(chunks.map((c) => c.chunk))).then(() => callback(), callback);
  }

  /** Writes every byte of `buffers`, resuming after short writes. */
  private async writeAll(buffers: Buffer[]): Promise<void> {
    const handle = this.handle;
    if (handle === undefined) throw new FileSinkError(`Cannot write ${this.path}: file is closed`, this.path);
    let rest = buffers.filter((b) => b.length > 0);
    try {
      while (rest.length > 0) {
        const { bytesWritten } = await handle.writev(rest);
        this.written += bytesWritten;
        rest = skipBytes(rest, bytesWritten);
      }
      if (this.onWritten) for (const b of buffers) this.onWritten(b);
    } catch (error) {
      throw new FileSinkError(`Cannot write ${this.path}: ${reason(error)}`, this.path, errnoCode(error), { cause: error });
    }
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.track(this.commit()).then(() => callback(), callback);
  }

  private async commit(): Promise<void> {
    const handle = this.handle;
    if (handle === undefined) throw new FileSinkError(`Cannot finish ${this.path}: file is closed`, this.path);
    try {
      if (this.sync) await handle.sync();
      this.handle = undefined;
      await handle.close();
    } catch (error) {
      throw new FileSinkError(`Cannot write ${this.path}: ${reason(error)}`, this.path, errnoCode(error), { cause: error });
    }
    // A file may have appeared under the final name while we wrote.
    if (!this.overwrite) await this.refuseExisting();
    try {
      await rename(this.partialPath, this.path);
      this.committed = true;
    } catch (error) {
      throw new FileSinkError(`Cannot rename ${this.partialPath} to ${this.path}: ${reason(error)}`, this.path, errnoCode(error), { cause: error });
    }
    if (this.sync) await syncDirectory(dirname(this.path), this.path);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.cleanUp().then(
      () => callback(error),
      (cleanupError: unknown) => callback(error ?? (cleanupError as Error)),
    );
  }

  /** Closes the file once no operation is in flight, and removes the partial file unless committed. */
  private async cleanUp(): Promise<void> {
    // Closing while a write is queued in the thread pool could let the fd
    // number be reused and the write land in another file.
    await this.pending?.catch(() => undefined);
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close().catch(() => undefined);
    if (this.created && !this.committed) {
      try {
        await unlink(this.partialPath);
      } catch (error) {
        if (errnoCode(error) !== 'ENOENT') {
          throw new FileSinkError(`Cannot remove ${this.partialPath}: ${reason(error)}`, this.path, errnoCode(error), { cause: error });
        }
      }
    }
  }

  private track<T>(operation: Promise<T>): Promise<T> {
    this.pending = operation;
    return operation;
  }
}

/** `buffers` without their first `count` bytes. */
function skipBytes(buffers: Buffer[], count: number): Buffer[] {
  let i = 0;
  let left = count;
  while (i < buffers.length && left >= buffers[i].length) {
    left -= buffers[i].length;
    i++;
  }
  const rest = buffers.slice(i);
  if (left > 0 && rest.length > 0) rest[0] = rest[0].subarray(left);
  return rest;
}

/** fsync a directory so a rename in it survives a crash. */
async function syncDirectory(directory: string, path: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(directory, 'r');
    await handle.sync();
  } catch (error) {
    throw new FileSinkError(`Wrote ${path}, but cannot sync its directory ${directory}: ${reason(error)}`, path, errnoCode(error), { cause: error });
  } finally {
    await handle?.close().catch(() => undefined);
  }
}
