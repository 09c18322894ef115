/**
 * ChainExport: a read-only NBD Export of a backup chain, served straight
 * from the data files through their ChainIndex. A read is cut into the
 * index's segments: bytes of an uncompressed data frame are read from its
 * file with one positioned read, bytes of a compressed one are copied out
 * of its LZ4 pieces, decoded (lz4Decoder.ts) into the buffers of a small
 * bounded cache (PieceCache), and zero frames and ranges
 * no file covers are holes (NBD_REPLY_TYPE_OFFSET_HOLE, never zeros on the
 * wire). Block status (`base:allocation`) says the same: data frames are
 * data, the rest hole+zero.
 *
 * A piece that does not decompress (bad LZ4 block or checksum, wrong
 * size) fails the reads that touch its range with EIO, naming the file
 * and the frame; every other range is still served. `onCorruptFrame`
 * hears of each bad frame once, for the log. The files are opened
 * read-only by the caller and are never written; close() closes them.
 */
import type { FileHandle } from 'node:fs/promises';
import type { Chunk } from '../chunk.js';
import { ExportError, type AllocationExtent, type BlockSizeConstraints, type Export } from '../nbd/export.js';
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from '../nbd/protocol.js';
import { FRAME_HEADER_LENGTH } from '../format/frameHeader.js';
import type { ChainIndex, Frame, Lz4Piece } from './chainIndex.js';
import { decodeLz4Frame } from './lz4Decoder.js';
import { PieceCache, type PieceCacheOptions, type PieceLease } from './pieceCache.js';

/** An open data file of the chain; `file` names it in messages. */
export interface ChainFileHandle {
  file: string;
  handle: FileHandle;
}

/** A piece of a compressed frame that cannot be served. */
export interface CorruptFrame {
  file: string;
  /** Index of the frame in its stream, and where its header is. */
  frameIndex: number;
  headerAt: number;
  /** Disk range that reads fail for. */
  offset: number;
  length: number;
  reason: string;
}

export interface ChainExportOptions {
  description?: string;
  /** A cache to share, or options for a cache of its own. */
  cache?: PieceCache | PieceCacheOptions;
  /** Called once for each frame whose data cannot be decompressed. */
  onCorruptFrame?: (problem: CorruptFrame) => void;
  /** Largest read served (default 32 MiB, the NBD server's default). */
  maxPayload?: number;
}

/** Block status answers at most this many extents per call (the client asks again for the rest). */
const MAX_EXTENTS = 65536;
const HOLE = NBD_STATE_HOLE | NBD_STATE_ZERO;
/** Largest piece accepted while a frame's layout is unknown (virtnbdbackup's are at most 32 MiB). */
const MAX_UNKNOWN_PIECE = 64 * 1024 * 1024;

export class ChainExport implements Export {
  readonly size: number;
  readonly readOnly = true;
  readonly canMultiConn = true;
  readonly description?: string;
  readonly blockSize: BlockSizeConstraints;
  readonly cache: PieceCache;
  private readonly onCorrupt?: (problem: CorruptFrame) => void;
  /** Frames found corrupt (reported once); pieces keep failing on each read. */
  private readonly reported = new Set<Frame>();
  /** Frames whose piece layout is being learnt, so it is learnt once. */
  private readonly layouts = new Map<Frame, Promise<void>>();

  constructor(
    readonly index: ChainIndex,
    private readonly files: readonly ChainFileHandle[],
    options: ChainExportOptions = {},
  ) {
    this.size = index.size;
    this.description = options.description;
    this.blockSize = { minimum: 1, preferred: 4096, maximum: options.maxPayload ?? 32 * 1024 * 1024 };
    this.cache = options.cache instanceof PieceCache ? options.cache : new PieceCache(options.cache);
    this.onCorrupt = options.onCorruptFrame;
  }

  async read(offset: number, length: number): Promise<Chunk[]> {
    this.checkRange(offset, length);
    const segments = this.index.segments(offset, length);
    const hasData = segments.some((s) => s.frame?.kind === 'data');
    const buf = hasData ? Buffer.allocUnsafe(length) : undefined;
    if (buf) {
      await Promise.all(
        segments.map((s) => (s.frame?.kind === 'data' ? this.fill(s.frame, s.offset, buf.subarray(s.offset - offset, s.offset - offset + s.length)) : undefined)),
      );
    }
    // Neighbouring data segments are one run of `buf`; holes between them stay holes.
    const chunks: Chunk[] = [];
    for (const s of segments) {
      const data = s.frame?.kind === 'data';
      const last = chunks[chunks.length - 1];
      if (last && !last.zero === data) {
        last.length += s.length;
        if (data) last.data = buf!.subarray(last.offset - offset, last.offset - offset + last.length);
        continue;
      }
      chunks.push(data ? { offset: s.offset, length: s.length, data: buf!.subarray(s.offset - offset, s.offset - offset + s.length) } : { offset: s.offset, length: s.length, zero: true });
    }
    return chunks;
  }

  async blockStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    this.checkRange(offset, length);
    const extents: AllocationExtent[] = [];
    for (const s of this.index.segments(offset, length, MAX_EXTENTS)) {
      const flags = s.frame?.kind === 'data' ? 0 : HOLE;
      const last = extents[extents.length - 1];
      if (last && last.flags === flags) last.length += s.length;
      else extents.push({ offset: s.offset, length: s.length, flags });
    }
    return extents;
  }

  async close(): Promise<void> {
    this.cache.clear();
    await Promise.all(this.files.map((f) => f.handle.close().catch(() => undefined)));
  }

  private checkRange(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new ExportError('EINVAL', `range ${offset}+${length} is outside the ${this.size}-byte export`);
    }
  }

  /** Fill `target` with the disk bytes from `at` that data frame `frame` holds. */
  private async fill(frame: Frame, at: number, target: Buffer): Promise<void> {
    if (!frame.pieces) {
      await this.readFully(frame, frame.headerAt + FRAME_HEADER_LENGTH + (at - frame.offset), target);
      return;
    }
    if (!frame.layoutKnown) await this.learnLayout(frame);
    const end = at + target.length;
    const work: Promise<void>[] = [];
    for (const piece of frame.pieces) {
      const pieceEnd = piece.offset + piece.length;
      if (pieceEnd <= at || piece.offset >= end) continue;
      work.push(
        this.piece(frame, piece, piece.length).then((lease) => {
          const from = Math.max(at, piece.offset);
          const to = Math.min(end, pieceEnd);
          lease.data.copy(target, from - at, from - piece.offset, to - piece.offset);
          lease.release();
        }),
      );
    }
    await Promise.all(work);
  }

  private async readFully(frame: Frame, position: number, target: Buffer): Promise<void> {
    const { handle, file } = this.files[frame.file]!;
    let done = 0;
    while (done < target.length) {
      const { bytesRead } = await handle.read(target, done, target.length - done, position + done);
      if (bytesRead === 0) {
        throw new ExportError('EIO', `${file}: ends at byte ${position + done}, inside data frame ${frame.index} (was the file truncated after mapping?)`);
      }
      done += bytesRead;
    }
  }

  /**
   * The decompressed bytes of `piece`, leased from the cache. `expected` is
   * its length when the frame's layout is known, else an upper bound.
   */
  private piece(frame: Frame, piece: Lz4Piece, expected: number): Promise<PieceLease> {
    const exact = frame.layoutKnown === true;
    return this.cache.acquire(`${frame.file}:${piece.position}`, expected, async (target) => {
      const raw = this.cache.pool.take(piece.size);
      try {
        await this.readFully(frame, piece.position, raw.subarray(0, piece.size));
        let length: number;
        try {
          length = decodeLz4Frame(raw, target.subarray(0, expected), 0, piece.size);
        } catch (err) {
          throw this.corrupt(frame, piece, `its LZ4 frame at byte ${piece.position} does not decompress (${(err as Error).message})`);
        }
        if (exact && length !== expected) {
          throw this.corrupt(frame, piece, `its LZ4 frame at byte ${piece.position} holds ${length} bytes, ${expected} expected`);
        }
        return length;
      } finally {
        this.cache.pool.give(raw);
      }
    });
  }

  /** Decompress the pieces of `frame` in order to learn how many disk bytes each holds. */
  private learnLayout(frame: Frame): Promise<void> {
    let learning = this.layouts.get(frame);
    if (!learning) {
      learning = (async () => {
        let offset = frame.offset;
        for (const piece of frame.pieces!) {
          // Each piece holds at most what is left of the frame, and no writer makes pieces over 64 MiB.
          const bound = Math.min(frame.offset + frame.length - offset, MAX_UNKNOWN_PIECE);
          if (bound <= 0) break;
          const lease = await this.piece(frame, piece, bound);
          piece.offset = offset;
          piece.length = lease.data.length;
          lease.release();
          offset += piece.length;
        }
        if (offset !== frame.offset + frame.length) {
          throw this.corrupt(frame, frame.pieces![0]!, `its LZ4 frames hold ${offset - frame.offset} bytes, the frame ${frame.length}`);
        }
        frame.layoutKnown = true;
      })();
      this.layouts.set(frame, learning);
    }
    return learning;
  }

  private corrupt(frame: Frame, piece: Lz4Piece, why: string): ExportError {
    const { file } = this.files[frame.file]!;
    const range = frame.layoutKnown ? { offset: piece.offset, length: piece.length } : { offset: frame.offset, length: frame.length };
    const reason = `data frame ${frame.index} (header at byte ${frame.headerAt}, disk ${frame.offset}+${frame.length}) is corrupt: ${why}`;
    if (!this.reported.has(frame)) {
      this.reported.add(frame);
      this.onCorrupt?.({ file, frameIndex: frame.index, headerAt: frame.headerAt, ...range, reason });
    }
    return new ExportError('EIO', `${file}: ${reason}; disk range ${range.offset}+${range.length} cannot be read`);
  }
}
