/**
 * ChainExport: a read-only NBD Export of a backup chain, served straight
 * from the data files through their ChainIndex. A read is cut into the
 * index's segments: bytes of an uncompressed data frame are read from its
 * file with one positioned read, bytes of a compressed one are copied out
 * of its LZ4 pieces, decoded about 1 MiB at a time (lz4Spans.ts) into the
 * buffers of a small bounded cache (PieceCache), each piece checked whole
 * once before any of it is served (lz4Verify.ts), and zero frames and ranges
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
import { Lz4DecodeError } from '../lz4/errors.js';
import { Lz4Spans } from './lz4Spans.js';
import { verifyLz4Piece } from './lz4Verify.js';
import { ReadBuffers } from './readBuffers.js';
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
/** Linked-block pieces whose decoding position (and 64 KiB history) is kept: a few sequential readers. */
const MAX_FRONTIERS = 8;

export class ChainExport implements Export {
  readonly size: number;
  readonly readOnly = true;
  readonly canMultiConn = true;
  readonly description?: string;
  readonly blockSize: BlockSizeConstraints;
  readonly cache: PieceCache;
  /** Buffers reads are served in, handed back by the server (releaseRead). */
  private readonly buffers = new ReadBuffers();
  private readonly onCorrupt?: (problem: CorruptFrame) => void;
  /** Frames found corrupt (reported once); pieces keep failing on each read. */
  private readonly reported = new Set<Frame>();
  /** Span decoders of the compressed pieces read so far (their marks are small). */
  private readonly spans = new Map<Lz4Piece, Lz4Spans>();
  /** Whole-piece checks, passed or under way. */
  private readonly checks = new Map<Lz4Spans, Promise<void>>();
  /** Decoders whose frontier holds history, least recently used first. */
  private readonly histories = new Set<Lz4Spans>();
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
    const buf = hasData ? this.buffers.lend(length) : undefined;
    if (buf) {
      // On failure the buffer is not handed back (fills may still write into it): the garbage collector takes it.
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

  /** The server is done with what read() returned: its buffer is reused. */
  releaseRead(result: Buffer | Chunk[]): void {
    if (Buffer.isBuffer(result)) return this.buffers.release(result);
    // Each distinct buffer once (an overlay passes on chunks of several reads); foreign ones are ignored.
    const seen = new Set<ArrayBufferLike>();
    for (const c of result) {
      if (!c.data || seen.has(c.data.buffer)) continue;
      seen.add(c.data.buffer);
      this.buffers.release(c.data);
    }
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
    this.buffers.clear();
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
      const from = Math.max(at, piece.offset);
      const to = Math.min(end, pieceEnd);
      work.push(this.copyPiece(frame, piece, from - piece.offset, to - piece.offset, target.subarray(from - at, to - at)));
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

  /** The span decoder of `piece`; `limit` bounds its output while the frame's layout is unknown. */
  private spansOf(frame: Frame, piece: Lz4Piece, limit: number): Lz4Spans {
    let spans = this.spans.get(piece);
    if (!spans) {
      spans = new Lz4Spans((buf, position) => this.readFully(frame, position, buf), piece.position, piece.size, limit);
      this.spans.set(piece, spans);
    }
    return spans;
  }

  /**
   * The decompressed span of `piece` holding piece byte `x`, leased from
   * the cache, and where it starts; undefined past the piece's end.
   */
  private async spanAt(frame: Frame, piece: Lz4Piece, spans: Lz4Spans, x: number): Promise<{ lease: PieceLease; start: number } | undefined> {
    let capacity: number;
    try {
      capacity = await spans.capacity();
    } catch (err) {
      throw this.undecodable(frame, piece, err);
    }
    for (;;) {
      const k = spans.spanOf(x);
      const start = spans.marks[k]!.out;
      const lease = await this.cache.acquire(`${frame.file}:${piece.position}:${k}`, capacity, (target) =>
        spans.decode(k, target).catch((err: unknown) => Promise.reject(this.undecodable(frame, piece, err))),
      );
      this.trackHistory(spans);
      if (x < start + lease.data.length) return { lease, start };
      lease.release();
      if (spans.total !== undefined && k === spans.marks.length - 1) return undefined;
    }
  }

  /** Copy piece bytes [from, to) into `target`. */
  private async copyPiece(frame: Frame, piece: Lz4Piece, from: number, to: number, target: Buffer): Promise<void> {
    const spans = this.spansOf(frame, piece, piece.length);
    await this.verified(frame, piece, spans);
    for (let x = from; x < to; ) {
      const span = await this.spanAt(frame, piece, spans, x);
      if (!span) throw this.corrupt(frame, piece, `its LZ4 frame at byte ${piece.position} holds ${spans.total} bytes, ${piece.length} expected`);
      const { lease, start } = span;
      const upto = Math.min(to, start + lease.data.length);
      lease.data.copy(target, x - from, x - start, upto - start);
      lease.release();
      x = upto;
    }
    if (spans.total !== undefined && spans.total !== piece.length) {
      throw this.corrupt(frame, piece, `its LZ4 frame at byte ${piece.position} holds ${spans.total} bytes, ${piece.length} expected`);
    }
  }

  /** Linked-block frontiers each keep 64 KiB of history: only the few most recent do. */
  private trackHistory(spans: Lz4Spans): void {
    if (!spans.holdsHistory) return;
    this.histories.delete(spans);
    this.histories.add(spans);
    for (const old of this.histories) {
      if (this.histories.size <= MAX_FRONTIERS) break;
      this.histories.delete(old);
      old.dropHistory();
    }
  }

  private undecodable(frame: Frame, piece: Lz4Piece, err: unknown): Error {
    if (err instanceof ExportError || !(err instanceof Lz4DecodeError)) return err as Error;
    return this.corrupt(frame, piece, `its LZ4 frame at byte ${piece.position} does not decompress (${err.message})`);
  }

  /**
   * Check all of `piece` once (lz4Verify.ts) before serving any of it; a
   * failure is not kept, so every later read checks again and fails again.
   */
  private verified(frame: Frame, piece: Lz4Piece, spans: Lz4Spans): Promise<void> {
    let check = this.checks.get(spans);
    if (!check) {
      check = this.cache.limited(() => verifyLz4Piece(spans, !frame.layoutKnown)).then(
        (total) => {
          this.trackHistory(spans);
          if (frame.layoutKnown && total !== undefined && total !== piece.length) {
            throw this.corrupt(frame, piece, `its LZ4 frame at byte ${piece.position} holds ${total} bytes, ${piece.length} expected`);
          }
        },
        (err: unknown) => {
          this.trackHistory(spans);
          throw this.undecodable(frame, piece, err);
        },
      );
      this.checks.set(spans, check);
      check.catch(() => this.checks.delete(spans));
    }
    return check;
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
          const spans = this.spansOf(frame, piece, bound);
          await this.verified(frame, piece, spans);
          piece.offset = offset;
          piece.length = spans.total!;
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
