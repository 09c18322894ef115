/**
 * FileExport: an Export over a raw image file through an fs FileHandle:
 * positional reads and writes, flush = fdatasync.
 *
 * Block status: Node has no lseek(SEEK_DATA/SEEK_HOLE) (nor fallocate), so
 * the allocation map of a sparse file is out of reach, and by default we
 * report everything as data, which is always correct. With `detectZeroes`,
 * reads send all-zero 64 KiB blocks as holes, and block status reads the
 * range to mark such blocks zero: the zero flag is then a fact (we read
 * the bytes); the hole flag is added when the file is sparse (fewer blocks
 * allocated than its size), where zeros are most likely unallocated.
 * Fewer bytes on the wire, for the price of scanning them.
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { Chunk } from '../chunk.js';
import { ExportError, type AllocationExtent, type Export } from './export.js';
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from './protocol.js';

export interface FileExportOptions {
  readOnly?: boolean;
  description?: string;
  /** Report and send all-zero blocks as holes (costs reading them for block status). */
  detectZeroes?: boolean;
}

/** Granularity of zero detection. */
const ZERO_BLOCK = 64 * 1024;
const ZEROS = Buffer.alloc(ZERO_BLOCK);
/** Largest range one block status call scans with detectZeroes (the client asks again for the rest). */
const MAX_SCAN = 8 * 1024 * 1024;

export class FileExport implements Export {
  readonly readOnly: boolean;
  readonly description?: string;
  readonly canMultiConn = true;
  private readonly detectZeroes: boolean;

  private constructor(
    private readonly handle: FileHandle,
    readonly path: string,
    readonly size: number,
    options: FileExportOptions,
  ) {
    this.readOnly = options.readOnly ?? false;
    this.description = options.description;
    this.detectZeroes = options.detectZeroes ?? false;
  }

  static async open(path: string, options: FileExportOptions = {}): Promise<FileExport> {
    const handle = await open(path, options.readOnly ? 'r' : 'r+');
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw new ExportError('EINVAL', `${path} is not a regular file`);
      return new FileExport(handle, path, st.size, options);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  async read(offset: number, length: number): Promise<Buffer | Chunk[]> {
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(buf, offset);
    return this.detectZeroes ? splitZeroes(buf, offset) : buf;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  async flush(): Promise<void> {
    await this.handle.datasync();
  }

  async blockStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    if (!this.detectZeroes) return [{ offset, length, flags: 0 }];
    const st = await this.handle.stat();
    const sparse = st.blocks * 512 < st.size;
    const zeroFlags = sparse ? NBD_STATE_HOLE | NBD_STATE_ZERO : NBD_STATE_ZERO;
    const scan = Math.min(length, MAX_SCAN);
    const buf = Buffer.allocUnsafe(scan);
    await this.readInto(buf, offset);
    const extents: AllocationExtent[] = [];
    for (const piece of splitZeroes(buf, offset)) {
      const flags = piece.zero ? zeroFlags : 0;
      const last = extents[extents.length - 1];
      if (last && last.flags === flags) last.length += piece.length;
      else extents.push({ offset: piece.offset, length: piece.length, flags });
    }
    return extents;
  }

  private async readInto(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.handle.read(buf, done, buf.length - done, offset + done);
      if (bytesRead === 0) {
        throw new ExportError('EIO', `${this.path}: unexpected end of file at ${offset + done} (file shrank?)`);
      }
      done += bytesRead;
    }
  }
}

/** Split a buffer read at `offset` into data pieces and holes for its all-zero aligned blocks. */
function splitZeroes(buf: Buffer, offset: number): Chunk[] {
  const pieces: Chunk[] = [];
  let at = 0;
  while (at < buf.length) {
    // Blocks are aligned to the disk, not to the request.
    const next = Math.min(buf.length, at + ZERO_BLOCK - ((offset + at) % ZERO_BLOCK));
    const slice = buf.subarray(at, next);
    const zero = slice.equals(ZEROS.subarray(0, slice.length));
    const last = pieces[pieces.length - 1];
    if (last && (last.zero ?? false) === zero) {
      last.length += slice.length;
      if (!zero) last.data = buf.subarray(last.offset - offset, next);
    } else {
      pieces.push(zero ? { offset: offset + at, length: slice.length, zero: true } : { offset: offset + at, length: slice.length, data: slice });
    }
    at = next;
  }
  return pieces;
}
