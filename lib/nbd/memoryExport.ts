/**
 * MemoryExport: a sparse disk in memory, for tests and examples. Storage is
 * a map of 64 KiB blocks; a block never written (or trimmed, or zeroed
 * without NO_HOLE) is a hole: reads return it as a zero Chunk, so the
 * server sends NBD_REPLY_TYPE_OFFSET_HOLE, and block status reports it as
 * hole+zero. Memory use is the written blocks only.
 */
import type { Chunk } from '../chunk.js';
import { ExportError, type AllocationExtent, type Export, type WriteZeroesOptions } from './export.js';
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from './protocol.js';

export interface MemoryExportOptions {
  readOnly?: boolean;
  description?: string;
}

export class MemoryExport implements Export {
  /** Allocation granularity in bytes. */
  static readonly BLOCK = 64 * 1024;

  readonly size: number;
  readonly readOnly: boolean;
  readonly canMultiConn = true;
  readonly description?: string;
  private readonly blocks = new Map<number, Buffer>();

  constructor(size: number, options: MemoryExportOptions = {}) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`MemoryExport: invalid size ${size}`);
    this.size = size;
    this.readOnly = options.readOnly ?? false;
    this.description = options.description;
  }

  /** An export holding a copy of `data`; all-zero blocks stay holes. */
  static from(data: Buffer, options: MemoryExportOptions = {}): MemoryExport {
    const exp = new MemoryExport(data.length, options);
    for (let at = 0; at < data.length; at += MemoryExport.BLOCK) {
      const piece = data.subarray(at, at + MemoryExport.BLOCK);
      if (!isZero(piece)) exp.storeBlock(at / MemoryExport.BLOCK).set(piece);
    }
    return exp;
  }

  /** Bytes held in memory (allocated blocks). */
  get allocatedBytes(): number {
    return this.blocks.size * MemoryExport.BLOCK;
  }

  /** The whole disk as one buffer (tests). */
  toBuffer(): Buffer {
    const out = Buffer.alloc(this.size);
    for (const [idx, block] of this.blocks) block.copy(out, idx * MemoryExport.BLOCK, 0, Math.min(block.length, this.size - idx * MemoryExport.BLOCK));
    return out;
  }

  async read(offset: number, length: number): Promise<Chunk[]> {
    this.checkRange(offset, length);
    const pieces: Chunk[] = [];
    let run: Buffer[] = [];
    let runStart = offset;
    const endRun = (at: number): void => {
      // Copy, so later writes never change bytes already handed to the socket.
      if (run.length > 0) pieces.push({ offset: runStart, length: at - runStart, data: Buffer.concat(run) });
      run = [];
    };
    this.forEachBlock(offset, length, (at, len, block, inBlock) => {
      if (block) {
        if (run.length === 0) runStart = at;
        run.push(block.subarray(inBlock, inBlock + len));
        return;
      }
      endRun(at);
      const last = pieces[pieces.length - 1];
      if (last?.zero && last.offset + last.length === at) last.length += len;
      else pieces.push({ offset: at, length: len, zero: true });
    });
    endRun(offset + length);
    return pieces;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.checkRange(offset, data.length);
    this.forEachBlock(offset, data.length, (at, len, _block, inBlock, idx) => {
      data.copy(this.storeBlock(idx), inBlock, at - offset, at - offset + len);
    });
  }

  async writeZeroes(offset: number, length: number, options: WriteZeroesOptions): Promise<void> {
    this.checkRange(offset, length);
    this.forEachBlock(offset, length, (_at, len, block, inBlock, idx) => {
      if (len === MemoryExport.BLOCK && !options.noHole) this.blocks.delete(idx);
      else if (block) block.fill(0, inBlock, inBlock + len);
      else if (options.noHole) this.storeBlock(idx);
    });
  }

  async trim(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    // Only whole blocks can be dropped; partial ones keep their data (trim is a hint).
    this.forEachBlock(offset, length, (_at, len, _block, _inBlock, idx) => {
      if (len === MemoryExport.BLOCK) this.blocks.delete(idx);
    });
  }

  async flush(): Promise<void> {}

  async blockStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    this.checkRange(offset, length);
    const extents: AllocationExtent[] = [];
    this.forEachBlock(offset, length, (at, len, block) => {
      const flags = block ? 0 : NBD_STATE_HOLE | NBD_STATE_ZERO;
      const last = extents[extents.length - 1];
      if (last && last.flags === flags) last.length += len;
      else extents.push({ offset: at, length: len, flags });
    });
    return extents;
  }

  private checkRange(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new ExportError('EINVAL', `range ${offset}+${length} is outside the ${this.size}-byte export`);
    }
  }

  private storeBlock(idx: number): Buffer {
    let block = this.blocks.get(idx);
    if (!block) {
      block = Buffer.alloc(MemoryExport.BLOCK);
      this.blocks.set(idx, block);
    }
    return block;
  }

  /** Visit [offset, offset+length) block by block. */
  private forEachBlock(
    offset: number,
    length: number,
    visit: (at: number, len: number, block: Buffer | undefined, inBlock: number, idx: number) => void,
  ): void {
    const B = MemoryExport.BLOCK;
    for (let at = offset, end = offset + length; at < end; ) {
      const idx = Math.floor(at / B);
      const inBlock = at - idx * B;
      const len = Math.min(B - inBlock, end - at);
      visit(at, len, this.blocks.get(idx), inBlock, idx);
      at += len;
    }
  }
}

const ZERO_BLOCK = Buffer.alloc(MemoryExport.BLOCK);

function isZero(buf: Buffer): boolean {
  return buf.equals(ZERO_BLOCK.subarray(0, buf.length));
}
