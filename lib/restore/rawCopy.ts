/**
 * Copying a raw image as it is (raw-format disks with --raw, and `-t raw`
 * backups), thin: the bytes go to a new file at their offsets, but blocks
 * of zeros are not written, so they stay holes, and the file is cut to the
 * image's length at the end. The file is fsynced before it counts as done.
 * Memory: one stream chunk at a time. On a remote hypervisor the bytes go
 * over ssh to `dd conv=sparse` there, thin the same way.
 */
import { open, rm, type FileHandle } from 'node:fs/promises';
import { Transform, Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { SshHostFiles } from '../remote/sshHostFiles.js';
import { RestoreError } from './errors.js';

/** Zero detection granularity: the usual filesystem and qcow2 cluster size. */
const BLOCK = 64 * 1024;
const ZEROS = Buffer.alloc(BLOCK);

class SparseFileWriter extends Writable {
  position = 0;
  written = 0;

  constructor(
    private readonly handle: FileHandle,
    private readonly onData?: (bytes: number) => void,
  ) {
    super({ highWaterMark: 4 * 1024 * 1024 });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.writeChunk(chunk).then(() => callback(), callback);
  }

  private async writeChunk(chunk: Buffer): Promise<void> {
    let at = 0;
    while (at < chunk.length) {
      // Cut at block boundaries of the file, so holes line up with blocks.
      const blockEnd = BLOCK - (this.position % BLOCK);
      const piece = chunk.subarray(at, at + Math.min(blockEnd, chunk.length - at));
      if (!piece.equals(ZEROS.subarray(0, piece.length))) {
        await this.handle.write(piece, 0, piece.length, this.position);
        this.written += piece.length;
      }
      this.position += piece.length;
      at += piece.length;
    }
    this.onData?.(chunk.length);
  }
}

export interface RawCopyResult {
  /** Length of the image. */
  size: number;
  /** Bytes actually written (not zero). */
  written: number;
}

/** Copy `source` into a new file `path` (which must not exist), thin, and fsync it. On failure the file is removed. */
export async function copyRawImage(
  source: Readable,
  path: string,
  file: string,
  options: { onData?: (bytes: number) => void; signal?: AbortSignal } = {},
): Promise<RawCopyResult> {
  const handle = await open(path, 'wx');
  try {
    const writer = new SparseFileWriter(handle, options.onData);
    await pipeline(source, writer, options.signal ? { signal: options.signal } : {});
    await handle.truncate(writer.position);
    await handle.sync();
    await handle.close();
    return { size: writer.position, written: writer.written };
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(path, { force: true });
    const err = error as Error;
    if (err.name === 'AbortError' || err instanceof RestoreError) throw err;
    throw new RestoreError(`${file}: copying the raw image failed: ${err.message}`, { cause: err });
  }
}

/** copyRawImage() onto a remote hypervisor. On failure the file there is removed. */
export async function copyRawImageRemote(
  source: Readable,
  path: string,
  file: string,
  files: SshHostFiles,
  options: { onData?: (bytes: number) => void; signal?: AbortSignal } = {},
): Promise<void> {
  const counted = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      options.onData?.(chunk.length);
      callback(null, chunk);
    },
  });
  const abort = (): void => {
    counted.destroy(options.signal?.reason instanceof Error ? options.signal.reason : new Error('aborted'));
  };
  options.signal?.addEventListener('abort', abort, { once: true });
  source.once('error', (e) => counted.destroy(e));
  try {
    await files.writeNewSparse(path, source.pipe(counted));
  } catch (error) {
    await files.remove(path).catch(() => undefined);
    if (options.signal?.aborted) throw options.signal.reason;
    throw new RestoreError(`${file}: copying the raw image to ${path} on ${files.description} failed: ${(error as Error).message}`, { cause: error });
  } finally {
    options.signal?.removeEventListener('abort', abort);
  }
}
