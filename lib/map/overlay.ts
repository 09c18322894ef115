/**
 * CowOverlay: a writable Export over a read-only one (a backup chain),
 * copy-on-write: writes go into a sparse overlay file of the disk's size,
 * at the same offsets, and a map of 64 KiB blocks says where each block's
 * current contents are: still in the base, written into the overlay, or
 * zeroed (trimmed or write-zeroes; reads as zeros, nothing stored). A
 * partial write to a block still in the base (or zeroed) first copies the
 * whole block into the overlay (read-modify-write), so the overlay always
 * holds complete blocks. The base is never written.
 *
 * The overlay is scratch space that close() deletes: so flush does not
 * sync it to disk (nothing would survive a crash anyway), and writes are
 * seen by every connection as soon as they are answered (multi-conn).
 * Overlapping writes are serialised per block range, so a read-modify-write
 * never loses a concurrent write. Memory: one byte per block (16 MiB for a
 * 1 TiB disk).
 */
import { isLending } from '../nbd/server-read-loans.js';
import { open, rm, type FileHandle } from 'node:fs/promises';
import type { Chunk } from '../chunk.js';
import { ExportError, type AllocationExtent, type BlockSizeConstraints, type Export, type WriteZeroesOptions } from '../nbd/export.js';
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from '../nbd/protocol.js';

const BLOCK = 64 * 1024;
const IN_BASE = 0;
const WRITTEN = 1;
const ZEROED = 2;
const HOLE = NBD_STATE_HOLE | NBD_STATE_ZERO;

export interface CowOverlayOptions {
  /** The sparse overlay file to create (must not exist; deleted by close()). */
  path: string;
  description?: string;
}

interface Lock {
  first: number;
  last: number;
  done: Promise<void>;
}

/** Bytes of a read result as Chunks exactly covering [offset, offset+length). */
function asChunks(result: Buffer | Chunk[], offset: number, length: number): Chunk[] {
  if (!Buffer.isBuffer(result)) return result;
  return length === 0 ? [] : [{ offset, length, data: result }];
}

export class CowOverlay implements Export {
  /** Granularity of the block map. */
  static readonly BLOCK = BLOCK;

  readonly size: number;
  readonly readOnly = false;
  readonly canMultiConn = true;
  readonly description?: string;
  readonly blockSize?: BlockSizeConstraints;
  private readonly state: Uint8Array;
  private readonly locks: Lock[] = [];
  private changed = 0;
  private closed = false;

  private constructor(
    private readonly base: Export,
    private readonly handle: FileHandle,
    /** The overlay file. */
    readonly path: string,
    description: string | undefined,
  ) {
    this.size = base.size;
    this.description = description;
    this.blockSize = base.blockSize;
    this.state = new Uint8Array(Math.ceil(base.size / BLOCK));
  }

  /** Create the overlay file (exclusively, mode 0600, sparse) over `base`. */
  static async create(base: Export, options: CowOverlayOptions): Promise<CowOverlay> {
    const handle = await open(options.path, 'wx+', 0o600);
    try {
      await handle.truncate(base.size);
    } catch (err) {
      await handle.close();
      await rm(options.path, { force: true });
      throw err;
    }
    return new CowOverlay(base, handle, options.path, options.description);
  }

  /** Blocks written or zeroed so far, in bytes (what the overlay took over from the base). */
  get changedBytes(): number {
    return this.changed * BLOCK;
  }

  async read(offset: number, length: number): Promise<Chunk[]> {
    this.checkRange(offset, length);
    if (this.changed === 0) return asChunks(await this.base.read(offset, length), offset, length);
    const parts = await Promise.all(
      this.runs(offset, length).map(async ({ at, len, state }): Promise<Chunk[]> => {
        if (state === IN_BASE) return asChunks(await this.base.read(at, len), at, len);
        if (state === ZEROED) return [{ offset: at, length: len, zero: true }];
        const data = Buffer.allocUnsafe(len);
        await this.readOverlay(data, at);
        return [{ offset: at, length: len, data }];
      }),
    );
    return parts.flat();
  }

  /** Reads pass on the base's buffers: hand them back to it (ours it ignores). */
  releaseRead(result: Buffer | Chunk[]): void {
    if (isLending(this.base)) this.base.releaseRead(result);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    await this.locked(offset, data.length, () => this.writeBlocks(offset, data));
  }

  async writeZeroes(offset: number, length: number, options: WriteZeroesOptions): Promise<void> {
    this.checkRange(offset, length);
    if (length === 0) return;
    await this.locked(offset, length, async () => {
      // Whole blocks become zeroed (or, with NO_HOLE, written zeros); partial ones are patched.
      const { headEnd, tailStart } = this.wholeBlocks(offset, length);
      if (headEnd > offset) await this.writeBlocks(offset, Buffer.alloc(headEnd - offset));
      if (tailStart < offset + length && tailStart >= headEnd) await this.writeBlocks(tailStart, Buffer.alloc(offset + length - tailStart));
      if (tailStart > headEnd) {
        if (options.noHole) {
          for (let at = headEnd; at < tailStart; at += BLOCK) await this.writeBlocks(at, Buffer.alloc(Math.min(BLOCK, tailStart - at)));
        } else {
          this.mark(headEnd / BLOCK, Math.ceil(tailStart / BLOCK) - 1, ZEROED);
        }
      }
    });
  }

  async trim(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    // A hint: whole blocks read as zeros afterwards; partial blocks keep their data.
    const { headEnd, tailStart } = this.wholeBlocks(offset, length);
    if (tailStart <= headEnd) return;
    await this.locked(headEnd, tailStart - headEnd, async () => this.mark(headEnd / BLOCK, Math.ceil(tailStart / BLOCK) - 1, ZEROED));
  }

  /** Nothing to sync: the overlay is deleted at the end anyway. */
  async flush(): Promise<void> {}

  async blockStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    this.checkRange(offset, length);
    const baseStatus = async (at: number, len: number): Promise<AllocationExtent[]> =>
      this.base.blockStatus ? this.base.blockStatus(at, len) : [{ offset: at, length: len, flags: 0 }];
    if (this.changed === 0) return baseStatus(offset, length);
    const extents: AllocationExtent[] = [];
    const push = (e: AllocationExtent): void => {
      const last = extents[extents.length - 1];
      if (last && last.flags === e.flags && last.offset + last.length === e.offset) last.length += e.length;
      else extents.push({ ...e });
    };
    for (const { at, len, state } of this.runs(offset, length)) {
      if (state !== IN_BASE) {
        push({ offset: at, length: len, flags: state === ZEROED ? HOLE : 0 });
        continue;
      }
      const fromBase = await baseStatus(at, len);
      let covered = 0;
      for (const e of fromBase) {
        const len2 = Math.min(e.length, at + len - e.offset);
        if (len2 <= 0) break;
        push({ offset: e.offset, length: len2, flags: e.flags });
        covered = e.offset + len2 - at;
      }
      // The base may answer for less than asked: the client asks again from there.
      if (covered < len) break;
    }
    return extents;
  }

  /** Close and delete the overlay file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close().catch(() => undefined);
    await rm(this.path, { force: true });
  }

  private checkRange(offset: number, length: number): void {
    if (this.closed) throw new ExportError('ESHUTDOWN', 'the overlay is closed');
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new ExportError('EINVAL', `range ${offset}+${length} is outside the ${this.size}-byte export`);
    }
  }

  /** Where the whole blocks of [offset, offset+length) begin and end. */
  private wholeBlocks(offset: number, length: number): { headEnd: number; tailStart: number } {
    const end = offset + length;
    const headEnd = Math.min(end, Math.ceil(offset / BLOCK) * BLOCK);
    // The disk's last block may be short: it is whole when the range reaches the disk's end.
    const tailStart = end === this.size ? end : Math.max(headEnd, Math.floor(end / BLOCK) * BLOCK);
    return { headEnd, tailStart };
  }

  /** Consecutive blocks of the same state over the range, clipped to it. */
  private runs(offset: number, length: number): { at: number; len: number; state: number }[] {
    const out: { at: number; len: number; state: number }[] = [];
    const end = offset + length;
    for (let at = offset; at < end; ) {
      const block = Math.floor(at / BLOCK);
      const next = Math.min(end, (block + 1) * BLOCK);
      const state = this.state[block]!;
      const last = out[out.length - 1];
      if (last && last.state === state) last.len += next - at;
      else out.push({ at, len: next - at, state });
      at = next;
    }
    return out;
  }

  private mark(first: number, last: number, state: number): void {
    for (let b = first; b <= last; b++) {
      if (this.state[b] === IN_BASE) this.changed++;
      this.state[b] = state;
    }
  }

  /** Write `data` at `offset` (under the lock): partial blocks not yet in the overlay are completed from their old contents first. */
  private async writeBlocks(offset: number, data: Buffer): Promise<void> {
    const end = offset + data.length;
    const first = Math.floor(offset / BLOCK);
    const last = Math.floor((end - 1) / BLOCK);
    let directFrom = offset;
    let directTo = end;
    const completions: Promise<void>[] = [];
    const complete = (block: number): void => {
      completions.push(this.completeBlock(block, offset, data));
    };
    if (offset % BLOCK !== 0 || (first === last && end < Math.min(this.size, (first + 1) * BLOCK))) {
      if (this.state[first] !== WRITTEN) {
        complete(first);
        directFrom = Math.min(end, (first + 1) * BLOCK);
      }
    }
    if (last !== first && end % BLOCK !== 0 && end !== this.size && this.state[last] !== WRITTEN) {
      complete(last);
      directTo = last * BLOCK;
    }
    if (directTo > directFrom) await this.writeOverlay(data.subarray(directFrom - offset, directTo - offset), directFrom);
    await Promise.all(completions);
    this.mark(first, last, WRITTEN);
  }

  /** Write block `block` whole: its current contents patched with the part of `data` (at `offset`) that falls in it. */
  private async completeBlock(block: number, offset: number, data: Buffer): Promise<void> {
    const start = block * BLOCK;
    const len = Math.min(BLOCK, this.size - start);
    const buf = Buffer.alloc(len);
    if (this.state[block] === IN_BASE) {
      for (const c of asChunks(await this.base.read(start, len), start, len)) {
        if (!c.zero) c.data!.copy(buf, c.offset - start);
      }
    }
    const from = Math.max(start, offset);
    const to = Math.min(start + len, offset + data.length);
    data.copy(buf, from - start, from - offset, to - offset);
    await this.writeOverlay(buf, start);
  }

  private async writeOverlay(data: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  }

  private async readOverlay(target: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < target.length) {
      const { bytesRead } = await this.handle.read(target, done, target.length - done, position + done);
      if (bytesRead === 0) throw new ExportError('EIO', `overlay ${this.path} ends at byte ${position + done}`);
      done += bytesRead;
    }
  }

  /** Run `work` once no other write-like operation holds a block of the range. */
  private async locked(offset: number, length: number, work: () => Promise<void>): Promise<void> {
    const first = Math.floor(offset / BLOCK);
    const last = Math.floor((offset + length - 1) / BLOCK);
    for (;;) {
      const clash = this.locks.find((l) => l.first <= last && first <= l.last);
      if (!clash) break;
      await clash.done;
    }
    let release!: () => void;
    const lock: Lock = { first, last, done: new Promise<void>((resolve) => (release = resolve)) };
    this.locks.push(lock);
    try {
      await work();
    } finally {
      this.locks.splice(this.locks.indexOf(lock), 1);
      release();
    }
  }
}
