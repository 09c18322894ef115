/**
 * The chain index: for every byte of a virtual disk, which frame of which
 * data file holds its newest contents. Built from one layer per data file
 * (the full or copy backup first, then each incremental or differential one
 * in chain order), each layer being that file's data and zero frames in
 * disk order; a later layer overrides what earlier ones say for the ranges
 * it covers. The result is a sorted list of non-overlapping ranges, each
 * pointing at the frame it reads from; ranges no file covers are holes.
 * Pure: no I/O (scan.ts reads the frames, chainExport.ts serves them).
 *
 * Building costs one linear merge per layer (O(ranges so far + frames of
 * the layer)), a lookup one binary search plus the ranges it returns.
 */

/** One LZ4 frame inside a compressed data frame's payload. */
export interface Lz4Piece {
  /** Byte offset of the LZ4 frame in its data file. */
  position: number;
  /** Compressed size in bytes. */
  size: number;
  /** Disk offset of its first uncompressed byte (valid when the frame's layoutKnown). */
  offset: number;
  /** Uncompressed length (valid when the frame's layoutKnown). */
  length: number;
}

/** A data or zero frame of a data file. */
export interface Frame {
  /** Index of the data file in the chain (0 = the full or copy backup). */
  file: number;
  /** Index of the frame in its stream (the meta frame is 0), for messages. */
  index: number;
  /** Byte offset of the frame header in the file; an uncompressed payload starts 40 bytes later. */
  headerAt: number;
  kind: 'data' | 'zero';
  /** Disk offset. */
  offset: number;
  /** Uncompressed length. */
  length: number;
  /** Compressed data frames: the LZ4 frames of the payload, in order. */
  pieces?: Lz4Piece[];
  /**
   * Compressed data frames: false while the pieces' uncompressed lengths are
   * unknown (no content size in their headers and not the usual split); the
   * export then learns them by decompressing the pieces in order.
   */
  layoutKnown?: boolean;
}

/** A range of the disk and the frame its bytes come from. */
export interface MappedRange {
  offset: number;
  length: number;
  frame: Frame;
}

/** A piece of a lookup: `frame` undefined means no data file covers it (a hole). */
export interface Segment {
  offset: number;
  length: number;
  frame?: Frame;
}

export interface ChainIndexStats {
  /** Bytes read from data frames. */
  dataBytes: number;
  /** Bytes of zero frames. */
  zeroBytes: number;
  /** Bytes no file covers. */
  unbackedBytes: number;
  /** Per data file (chain order): bytes of the disk it still provides (data and zero frames). */
  bytesByFile: number[];
}

function checkLayer(layer: readonly Frame[], which: number): void {
  let end = 0;
  for (const f of layer) {
    if (!Number.isSafeInteger(f.offset) || !Number.isSafeInteger(f.length) || f.offset < 0 || f.length <= 0) {
      throw new RangeError(`chain index layer ${which}: frame ${f.index} has an invalid range ${f.offset}+${f.length}`);
    }
    if (f.offset < end) {
      throw new RangeError(`chain index layer ${which}: frame ${f.index} at ${f.offset} overlaps or precedes the frame before it (ending at ${end})`);
    }
    end = f.offset + f.length;
  }
}

/**
 * The ranges of `lower` not covered by `upper`, merged with `upper`: both
 * sorted and non-overlapping in, sorted and non-overlapping out. Linear.
 */
export function overlayRanges(lower: readonly MappedRange[], upper: readonly MappedRange[]): MappedRange[] {
  const out: MappedRange[] = [];
  let i = 0;
  let u = 0;
  // Where the part of lower[i] not emitted yet starts.
  let at = lower.length > 0 ? lower[0]!.offset : 0;
  while (i < lower.length || u < upper.length) {
    const low = lower[i];
    const up = upper[u];
    if (up && (!low || up.offset <= at)) {
      out.push(up);
      u++;
      const upEnd = up.offset + up.length;
      // Lower ranges it hides entirely are dropped; a lower range it cuts resumes after it.
      while (i < lower.length && lower[i]!.offset + lower[i]!.length <= upEnd) i++;
      if (i < lower.length) at = Math.max(at, lower[i]!.offset, upEnd);
      continue;
    }
    // Here lower[i] exists (the loop runs while something is left) and comes first.
    const cur = low!;
    const lowEnd = cur.offset + cur.length;
    const stop = up ? Math.min(lowEnd, up.offset) : lowEnd;
    out.push({ offset: at, length: stop - at, frame: cur.frame });
    if (stop === lowEnd) {
      i++;
      if (i < lower.length) at = lower[i]!.offset;
    } else {
      at = stop;
    }
  }
  return out;
}

export class ChainIndex {
  private readonly starts: Float64Array;

  private constructor(
    /** Size of the virtual disk in bytes. */
    readonly size: number,
    private readonly ranges: readonly MappedRange[],
    /** Number of layers (data files) it was built from. */
    readonly layers: number,
  ) {
    this.starts = Float64Array.from(ranges, (r) => r.offset);
  }

  /**
   * Index a chain: `layers[0]` is the full or copy backup's frames, each
   * later layer a newer file's. Frames reaching past `size` are cut there
   * (a disk that shrank). Throws RangeError for frames out of order.
   */
  static build(size: number, layers: readonly (readonly Frame[])[]): ChainIndex {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`chain index: invalid disk size ${size}`);
    let ranges: MappedRange[] = [];
    layers.forEach((layer, which) => {
      checkLayer(layer, which);
      const upper: MappedRange[] = [];
      for (const frame of layer) {
        if (frame.offset >= size) break;
        upper.push({ offset: frame.offset, length: Math.min(frame.length, size - frame.offset), frame });
      }
      ranges = which === 0 ? upper : overlayRanges(ranges, upper);
    });
    return new ChainIndex(size, ranges, layers.length);
  }

  get rangeCount(): number {
    return this.ranges.length;
  }

  /** All ranges that some file covers, in disk order. */
  allRanges(): readonly MappedRange[] {
    return this.ranges;
  }

  /** Index of the last range starting at or before `offset`, or -1. */
  private find(offset: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.starts[mid]! <= offset) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found;
  }

  /**
   * [offset, offset+length) as contiguous segments in disk order: pieces of
   * ranges (with their frame) and the holes between them (without).
   * `limit` caps the number of segments (the rest is left out).
   */
  segments(offset: number, length: number, limit = Infinity): Segment[] {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`chain index: range ${offset}+${length} is outside the ${this.size}-byte disk`);
    }
    const out: Segment[] = [];
    const end = offset + length;
    let at = offset;
    let i = this.find(offset);
    if (i < 0) i = 0;
    while (at < end && out.length < limit) {
      const r = this.ranges[i];
      if (!r || r.offset >= end) {
        out.push({ offset: at, length: end - at });
        break;
      }
      const rEnd = r.offset + r.length;
      if (rEnd <= at) {
        i++;
        continue;
      }
      if (r.offset > at) {
        out.push({ offset: at, length: r.offset - at });
        at = r.offset;
        continue;
      }
      const stop = Math.min(rEnd, end);
      out.push({ offset: at, length: stop - at, frame: r.frame });
      at = stop;
      i++;
    }
    return out;
  }

  stats(): ChainIndexStats {
    const stats: ChainIndexStats = { dataBytes: 0, zeroBytes: 0, unbackedBytes: this.size, bytesByFile: new Array<number>(this.layers).fill(0) };
    for (const r of this.ranges) {
      if (r.frame.kind === 'data') stats.dataBytes += r.length;
      else stats.zeroBytes += r.length;
      stats.unbackedBytes -= r.length;
      stats.bytesByFile[r.frame.file] = (stats.bytesByFile[r.frame.file] ?? 0) + r.length;
    }
    return stats;
  }
}
