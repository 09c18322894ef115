/**
 * The compression trailer at the end of a compressed stream: a JSON list with
 * one entry per data frame, in stream order, giving the compressed size of
 * its payload. virtnbdbackup writes a plain number for a frame read in one
 * request (length < maxRequestSize) and `{"<total>": [size, ...]}` for a frame
 * read in pieces (length >= maxRequestSize, even if that makes one piece),
 * one size per LZ4 frame. Python's readers need it to seek; ours does not,
 * but checks it against what it found.
 */
import {
  MissingTerminatorError,
  StreamFormatError,
  TrailerError,
  TrailerMismatchError,
  TrailingDataError,
  type StreamPosition,
} from './errors.js';
import { encodeFrameHeader, FRAME_HEADER_LENGTH, parseFrameHeader, TERMINATOR, type FrameHeader } from './frameHeader.js';
import { pythonJsonDumps, type PythonJsonValue } from './pythonJson.js';

/** Compressed size of one data frame: a number, or the sizes of its LZ4 frames. */
export type TrailerEntry = number | { total: number; pieces: number[] };

export type CompressionTrailer = TrailerEntry[];

/** The compressed size of a whole data frame. */
export function trailerEntryTotal(entry: TrailerEntry): number {
  return typeof entry === 'number' ? entry : entry.total;
}

/**
 * The entry virtnbdbackup writes for a frame of `frameLength` bytes whose
 * payload is LZ4 frames of `pieceSizes` bytes.
 */
export function trailerEntryFor(
  frameLength: number,
  pieceSizes: readonly number[],
  maxRequestSize: number,
): TrailerEntry {
  const total = pieceSizes.reduce((sum, size) => sum + size, 0);
  return frameLength >= maxRequestSize ? { total, pieces: [...pieceSizes] } : total;
}

/** The trailer's JSON, as Python's `json.dumps(list)` writes it. */
export function encodeTrailer(trailer: CompressionTrailer): Buffer {
  const value: PythonJsonValue = trailer.map((entry) =>
    typeof entry === 'number' ? entry : { [String(entry.total)]: entry.pieces },
  );
  return Buffer.from(pythonJsonDumps(value), 'latin1');
}

/** Everything after the stop frame: JSON, `\r\n`, and the 40-byte comp header. */
export function encodeTrailerSection(trailer: CompressionTrailer): Buffer[] {
  const json = encodeTrailer(trailer);
  return [json, TERMINATOR, encodeFrameHeader('comp', 0, json.length)];
}

function isSize(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** Parse and check the trailer's JSON. */
export function parseTrailer(bytes: Uint8Array, where: StreamPosition): CompressionTrailer {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (err) {
    throw new TrailerError(where, `compression trailer is not valid JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(value)) throw new TrailerError(where, 'compression trailer is not a JSON list');
  return value.map((item: unknown, index): TrailerEntry => {
    if (isSize(item)) return item;
    const bad = (why: string) =>
      new TrailerError(where, `compression trailer entry ${index} ${why}: ${JSON.stringify(item)}`);
    if (typeof item !== 'object' || item === null || Array.isArray(item)) {
      throw bad('is neither a size nor {"<total>": [sizes]}');
    }
    const keys = Object.keys(item);
    if (keys.length !== 1 || !/^(0|[1-9][0-9]*)$/.test(keys[0]!)) {
      throw bad('must have exactly one key, the total size');
    }
    const total = Number(keys[0]);
    const pieces: unknown = (item as Record<string, unknown>)[keys[0]!];
    if (!Array.isArray(pieces) || pieces.length === 0 || !pieces.every(isSize)) {
      throw bad('must list the sizes of its pieces');
    }
    if (pieces.reduce((sum: number, size: number) => sum + size, 0) !== total) {
      throw bad('has pieces that do not add up to its total');
    }
    return { total, pieces: pieces as number[] };
  });
}

/**
 * Parse everything that follows the stop frame of a compressed stream:
 * trailer JSON, `\r\n`, then `comp 0 <JSON length>\r\n` as the last 40 bytes.
 * `where` is the frame index and stream offset of the section's first byte.
 */
export function parseTrailerSection(section: Uint8Array, where: StreamPosition): CompressionTrailer {
  const minimum = TERMINATOR.length + FRAME_HEADER_LENGTH;
  if (section.length < minimum) {
    throw new TrailerError(where, `only ${section.length} bytes follow the stop frame, too few for a compression trailer`);
  }
  const compWhere = { frameIndex: where.frameIndex, byteOffset: where.byteOffset + section.length - FRAME_HEADER_LENGTH };
  let comp: FrameHeader;
  try {
    comp = parseFrameHeader(section.subarray(section.length - FRAME_HEADER_LENGTH), compWhere);
  } catch (err) {
    if (!(err instanceof StreamFormatError)) throw err;
    throw new TrailerError(compWhere, `the stream does not end with a comp frame: ${err.message}`);
  }
  if (comp.kind !== 'comp' || comp.start !== 0) {
    throw new TrailerError(compWhere, `the stream ends with a ${comp.kind} frame, not "comp 0 <length>"`);
  }
  const jsonLength = comp.length;
  const extra = section.length - minimum - jsonLength;
  if (extra > 0) {
    throw new TrailingDataError(where, `${extra} unexpected bytes between the stop frame and the ${jsonLength}-byte compression trailer`);
  }
  if (extra < 0) {
    throw new TrailerError(compWhere, `comp frame announces ${jsonLength} trailer bytes, only ${section.length - minimum} are there`);
  }
  if (section[jsonLength] !== TERMINATOR[0] || section[jsonLength + 1] !== TERMINATOR[1]) {
    throw new MissingTerminatorError(where, 'compression trailer is not followed by \\r\\n');
  }
  return parseTrailer(section.subarray(0, jsonLength), where);
}

/**
 * The compressed sizes a reader found, per data frame, kept as flat number
 * arrays (a stream may have very many frames), to check the trailer against.
 */
export class CompressedSizeLog {
  private readonly frameIndex: number[] = [];
  private readonly byteOffset: number[] = [];
  private readonly firstPiece: number[] = [];
  private readonly pieceSizes: number[] = [];

  /** A compressed data frame starts (its header at `where`). */
  startFrame(where: StreamPosition): void {
    this.frameIndex.push(where.frameIndex);
    this.byteOffset.push(where.byteOffset);
    this.firstPiece.push(this.pieceSizes.length);
  }

  /** One LZ4 frame of `size` bytes in the current data frame. */
  addPiece(size: number): void {
    this.pieceSizes.push(size);
  }

  get frames(): number {
    return this.frameIndex.length;
  }

  /** Throws TrailerMismatchError naming the first data frame the trailer gets wrong. */
  check(trailer: CompressionTrailer, where: StreamPosition): void {
    if (trailer.length !== this.frames) {
      throw new TrailerMismatchError(where, `compression trailer has ${trailer.length} entries, the stream has ${this.frames} data frames`);
    }
    trailer.forEach((entry, i) => {
      const end = i + 1 < this.frames ? this.firstPiece[i + 1]! : this.pieceSizes.length;
      const seen = this.pieceSizes.slice(this.firstPiece[i]!, end);
      const total = seen.reduce((sum, size) => sum + size, 0);
      const frameWhere = { frameIndex: this.frameIndex[i]!, byteOffset: this.byteOffset[i]! };
      if (trailerEntryTotal(entry) !== total) {
        throw new TrailerMismatchError(
          frameWhere,
          `compression trailer entry ${i} says ${trailerEntryTotal(entry)} compressed bytes, the payload has ${total}`,
        );
      }
      if (typeof entry !== 'number' && entry.pieces.join(',') !== seen.join(',')) {
        throw new TrailerMismatchError(
          frameWhere,
          `compression trailer entry ${i} lists LZ4 frames of [${entry.pieces.join(', ')}] bytes, the payload has [${seen.join(', ')}]`,
        );
      }
    });
  }
}
