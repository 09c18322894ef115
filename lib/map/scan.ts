/**
 * The scanner: where each frame of a sparse stream file lies, found by
 * reading frame headers only, with positioned reads, never the payloads.
 * An uncompressed payload is skipped by its header's length. A compressed
 * one is a run of LZ4 frames whose compressed sizes only the trailer at the
 * end of the file gives; without a usable trailer (none, or one that does
 * not fit the stream) each LZ4 frame is walked by its block headers
 * (lz4Skip.ts). The cost is proportional to the number of frames (and, when
 * walking, of LZ4 blocks), not to the size of the data.
 *
 * The stream is checked as it is walked (header syntax, frame order, range
 * inside the disk, payload terminators, stop frame, data size): a file that
 * is not exactly a sparse stream is refused with a MapInputError naming the
 * file, the frame and the byte offset. Payload bytes are not checked here:
 * a corrupt LZ4 block shows when a read reaches it (chainExport.ts).
 */
import type { FileHandle } from 'node:fs/promises';
import {
  DataSizeMismatchError,
  FrameRangeError,
  FrameSequenceError,
  Lz4FormatError,
  MetadataError,
  MissingStopFrameError,
  MissingTerminatorError,
  StreamFormatError,
  TrailerError,
  TrailerMismatchError,
  TrailingDataError,
  TruncatedStreamError,
  type StreamPosition,
} from '../format/errors.js';
import { FRAME_HEADER_LENGTH, parseFrameHeader } from '../format/frameHeader.js';
import { Lz4FrameViolation, LZ4_MAGIC_BYTES, parseLz4FrameDescriptor } from '../format/lz4Frame.js';
import { decodeMetadataJson, isCompressed, normalizeMetadata, type StreamMetadata } from '../format/metadata.js';
import { parseTrailerSection, type CompressionTrailer } from '../format/trailer.js';
import type { Frame, Lz4Piece } from './chainIndex.js';
import { MapInputError } from './errors.js';
import { skipLz4Frame } from './lz4Skip.js';
import { WindowedReader } from './windowedReader.js';

/** virtnbdbackup's request size (QEMU's NBD maximum): how long each LZ4 piece of a long frame is. */
export const DEFAULT_UNIT_SIZE = 32 * 1024 * 1024;
/** Largest metadata JSON accepted. */
const MAX_METADATA = 1024 * 1024;
/** Largest compression trailer accepted (a few numbers per data frame). */
const MAX_TRAILER = 64 * 1024 * 1024;
const CR = 0x0d;
const LF = 0x0a;

export type PayloadLocation = 'plain' | 'trailer' | 'lz4-headers';

export interface ScannedStream {
  /** The file, as given (for messages). */
  file: string;
  metadata: StreamMetadata;
  /** Data and zero frames, in disk order. */
  frames: Frame[];
  compressed: boolean;
  /** How the payloads were located: uncompressed, by the trailer, or by walking LZ4 headers. */
  located: PayloadLocation;
  /** Why the trailer was not used, when compressed payloads were walked instead. */
  trailerProblem?: string;
  fileSize: number;
  /** Read system calls the scan made. */
  reads: number;
}

export interface ScanOptions {
  /** Index of the file in its chain, recorded in each Frame (default 0). */
  fileIndex?: number;
  /**
   * Uncompressed length of each LZ4 piece but the last of a long data frame
   * whose pieces declare no content size (default 32 MiB, the request size
   * virtnbdbackup reads with).
   */
  unitSize?: number;
}

type Mode = { kind: 'plain' } | { kind: 'trailer'; trailer: CompressionTrailer; sectionAt: number } | { kind: 'walk' };

/**
 * Scan the sparse stream open in `handle` (read-only; the caller keeps and
 * closes it). `file` names it in messages. Throws MapInputError.
 */
export async function scanStream(handle: FileHandle, file: string, options: ScanOptions = {}): Promise<ScannedStream> {
  const stat = await handle.stat();
  if (!stat.isFile()) throw new MapInputError(file, 'is not a regular file');
  const reader = new WindowedReader(handle, stat.size);
  try {
    const { metadata, firstFrameAt } = await readHead(reader, file);
    const base = { file, metadata, compressed: isCompressed(metadata), fileSize: stat.size };
    if (!base.compressed) {
      const frames = await walkFrames(reader, metadata, firstFrameAt, { kind: 'plain' }, options);
      return { ...base, frames, located: 'plain', reads: reader.reads };
    }
    let trailerProblem: string;
    try {
      const found = await readTrailer(reader);
      if (typeof found === 'string') {
        trailerProblem = found;
      } else {
        const frames = await walkFrames(reader, metadata, firstFrameAt, { kind: 'trailer', ...found }, options);
        return { ...base, frames, located: 'trailer', reads: reader.reads };
      }
    } catch (err) {
      // A trailer that does not fit the stream: the LZ4 headers still tell where the payloads are.
      if (!(err instanceof TrailerError)) throw err;
      trailerProblem = err.message;
    }
    const frames = await walkFrames(reader, metadata, firstFrameAt, { kind: 'walk' }, options);
    return { ...base, frames, located: 'lz4-headers', trailerProblem, reads: reader.reads };
  } catch (err) {
    if (err instanceof MapInputError) throw err;
    if (err instanceof StreamFormatError) throw new MapInputError(file, err.message, { cause: err });
    throw new MapInputError(file, `cannot be read: ${(err as Error).message}`, { cause: err });
  }
}

async function readHead(reader: WindowedReader, file: string): Promise<{ metadata: StreamMetadata; firstFrameAt: number }> {
  const head = await reader.read(0, FRAME_HEADER_LENGTH);
  if (head.subarray(0, 5).toString('latin1') !== 'meta ') {
    throw new MapInputError(
      file,
      'is not a sparse stream (it does not start with a meta frame). A raw image (a raw-format disk or a `-t raw` backup) ' +
        'needs no mapping: serve it with `qemu-nbd -r -f raw FILE`',
    );
  }
  const where: StreamPosition = { frameIndex: 0, byteOffset: 0 };
  if (head.length < FRAME_HEADER_LENGTH) throw new TruncatedStreamError(where, 'the file ends inside the meta frame header');
  const header = parseFrameHeader(head, where);
  if (header.length === 0 || header.length > MAX_METADATA) {
    throw new MetadataError(where, `metadata length ${header.length} is not within 1..${MAX_METADATA}`);
  }
  const body = await reader.read(FRAME_HEADER_LENGTH, header.length + 2);
  const jsonWhere = { frameIndex: 0, byteOffset: FRAME_HEADER_LENGTH };
  if (body.length < header.length + 2) throw new TruncatedStreamError(jsonWhere, 'the file ends inside the metadata');
  if (body[header.length] !== CR || body[header.length + 1] !== LF) {
    throw new MissingTerminatorError(jsonWhere, 'metadata is not followed by \\r\\n');
  }
  const metadata = normalizeMetadata(decodeMetadataJson(body.subarray(0, header.length), jsonWhere), jsonWhere);
  return { metadata, firstFrameAt: FRAME_HEADER_LENGTH + header.length + 2 };
}

/** The trailer and where its section starts, or why there is none. */
async function readTrailer(reader: WindowedReader): Promise<{ trailer: CompressionTrailer; sectionAt: number } | string> {
  const size = reader.fileSize;
  if (size < FRAME_HEADER_LENGTH) return 'the file is too short to end with a comp frame';
  const tail = Buffer.from(await reader.read(size - FRAME_HEADER_LENGTH, FRAME_HEADER_LENGTH));
  if (tail.subarray(0, 5).toString('latin1') !== 'comp ') return 'the file does not end with a comp frame';
  try {
    const comp = parseFrameHeader(tail, { frameIndex: -1, byteOffset: size - FRAME_HEADER_LENGTH });
    const sectionLength = comp.length + 2 + FRAME_HEADER_LENGTH;
    if (comp.length > MAX_TRAILER || sectionLength > size) return `the comp frame announces an impossible trailer of ${comp.length} bytes`;
    const sectionAt = size - sectionLength;
    const section = await reader.read(sectionAt, sectionLength);
    const trailer = parseTrailerSection(section, { frameIndex: -1, byteOffset: sectionAt });
    return { trailer, sectionAt };
  } catch (err) {
    // Its position has no frame index; keep the byte offset only.
    if (err instanceof StreamFormatError) return err.message.replace(/^frame -1 /, '');
    throw err;
  }
}

async function walkFrames(reader: WindowedReader, metadata: StreamMetadata, firstFrameAt: number, mode: Mode, options: ScanOptions): Promise<Frame[]> {
  const fileIndex = options.fileIndex ?? 0;
  const unitSize = options.unitSize ?? DEFAULT_UNIT_SIZE;
  const frames: Frame[] = [];
  let pos = firstFrameAt;
  let frontier = 0;
  let dataBytes = 0;
  let dataFrames = 0;
  for (let index = 1; ; index++) {
    const where: StreamPosition = { frameIndex: index, byteOffset: pos };
    const bytes = await reader.read(pos, FRAME_HEADER_LENGTH);
    if (bytes.length === 0) throw new MissingStopFrameError(where, 'the file ends before its stop frame: the backup was cut short');
    if (bytes.length < FRAME_HEADER_LENGTH) throw new TruncatedStreamError(where, 'the file ends inside a frame header');
    const header = parseFrameHeader(bytes, where);
    if (header.kind === 'stop') {
      finish(reader, metadata, mode, where, dataBytes, dataFrames);
      return frames;
    }
    if (header.kind === 'meta') throw new FrameSequenceError(where, 'a second meta frame');
    if (header.kind === 'comp') throw new FrameSequenceError(where, 'a comp frame before the stop frame');
    const { start, length } = header;
    if (length === 0) throw new FrameRangeError(where, `empty ${header.kind} frame at disk offset ${start}`);
    if (start < frontier) throw new FrameRangeError(where, `${header.kind} frame at disk offset ${start} overlaps or precedes the frame before it (which ends at ${frontier})`);
    if (start + length > metadata.virtualSize) {
      throw new FrameRangeError(where, `${header.kind} frame ${start}+${length} reaches past the disk's virtual size ${metadata.virtualSize}`);
    }
    frontier = start + length;
    const frame: Frame = { file: fileIndex, index, headerAt: pos, kind: header.kind, offset: start, length };
    frames.push(frame);
    if (header.kind === 'zero') {
      pos += FRAME_HEADER_LENGTH;
      continue;
    }
    const payloadAt = pos + FRAME_HEADER_LENGTH;
    let payloadEnd: number;
    if (mode.kind === 'plain') {
      payloadEnd = payloadAt + length;
    } else {
      const located = mode.kind === 'trailer' ? piecesFromTrailer(mode.trailer, dataFrames, payloadAt, where) : await walkPayload(reader, payloadAt, where);
      frame.pieces = located.pieces;
      payloadEnd = located.end;
      await layOut(reader, frame, located.contentSizes, unitSize);
    }
    const terminator = await reader.read(payloadEnd, 2);
    if (terminator.length < 2) throw new TruncatedStreamError(where, `the file ends inside the payload of the data frame at disk offset ${start}`);
    if (terminator[0] !== CR || terminator[1] !== LF) {
      if (mode.kind === 'trailer') throw new TrailerMismatchError(where, `the compressed sizes in the trailer do not lead to the end of this frame's payload (no \\r\\n at byte ${payloadEnd})`);
      throw new MissingTerminatorError(where, `the payload of the data frame at disk offset ${start} is not followed by \\r\\n (at byte ${payloadEnd})`);
    }
    dataBytes += length;
    dataFrames++;
    pos = payloadEnd + 2;
  }
}

function finish(reader: WindowedReader, metadata: StreamMetadata, mode: Mode, where: StreamPosition, dataBytes: number, dataFrames: number): void {
  if (dataBytes !== metadata.dataSize) {
    throw new DataSizeMismatchError(where, `the data frames hold ${dataBytes} bytes, the metadata announces dataSize ${metadata.dataSize}`);
  }
  const after = where.byteOffset + FRAME_HEADER_LENGTH;
  if (mode.kind === 'plain' && after !== reader.fileSize) {
    throw new TrailingDataError(where, `${reader.fileSize - after} unexpected bytes follow the stop frame`);
  }
  if (mode.kind === 'trailer') {
    if (mode.trailer.length !== dataFrames) {
      throw new TrailerMismatchError(where, `the compression trailer has ${mode.trailer.length} entries, the stream has ${dataFrames} data frames`);
    }
    if (after !== mode.sectionAt) {
      throw new TrailerMismatchError(where, `the compression trailer does not start right after the stop frame (byte ${after}, found at ${mode.sectionAt})`);
    }
  }
}

interface LocatedPayload {
  pieces: Lz4Piece[];
  /** Byte offset just past the last LZ4 frame (where `\r\n` must be). */
  end: number;
  /** Each piece's declared uncompressed size, where known. */
  contentSizes: (number | undefined)[];
}

function piecesFromTrailer(trailer: CompressionTrailer, dataFrame: number, payloadAt: number, where: StreamPosition): LocatedPayload {
  const entry = trailer[dataFrame];
  if (entry === undefined) throw new TrailerMismatchError(where, `the compression trailer has only ${trailer.length} entries, this is data frame ${dataFrame + 1}`);
  const sizes = typeof entry === 'number' ? [entry] : entry.pieces;
  const pieces: Lz4Piece[] = [];
  let at = payloadAt;
  for (const size of sizes) {
    if (size <= 0) throw new TrailerMismatchError(where, `the compression trailer gives an LZ4 frame of ${size} bytes`);
    pieces.push({ position: at, size, offset: 0, length: 0 });
    at += size;
  }
  return { pieces, end: at, contentSizes: [] };
}

async function walkPayload(reader: WindowedReader, payloadAt: number, where: StreamPosition): Promise<LocatedPayload> {
  const pieces: Lz4Piece[] = [];
  const contentSizes: (number | undefined)[] = [];
  let at = payloadAt;
  for (;;) {
    const next = await reader.read(at, 4);
    if (pieces.length > 0 && next.length >= 2 && next[0] === CR && next[1] === LF) return { pieces, end: at, contentSizes };
    if (next.length < 4) throw new TruncatedStreamError(where, `the file ends inside a compressed payload (at byte ${at})`);
    if (!next.equals(LZ4_MAGIC_BYTES)) {
      throw new Lz4FormatError(where, `expected an LZ4 frame or the end of the payload at byte ${at}, found ${next.toString('hex')}`);
    }
    try {
      const frame = await skipLz4Frame(reader, at);
      pieces.push({ position: at, size: frame.size, offset: 0, length: 0 });
      contentSizes.push(frame.contentSize);
      at += frame.size;
    } catch (err) {
      if (!(err instanceof Lz4FrameViolation)) throw err;
      throw new Lz4FormatError(where, `LZ4 frame at byte ${at}: ${err.message} (at byte ${at + err.offsetInFrame})`);
    }
  }
}

/**
 * Give each piece of a compressed frame its disk range: one piece holds the
 * whole frame; several take their content sizes when all declare one
 * (virtnbdbackup's pieces do), else the split virtnbdbackup makes (unitSize
 * bytes each, the last one the rest). When neither fits, the layout is left
 * for the export to learn by decompressing (layoutKnown false).
 */
async function layOut(reader: WindowedReader, frame: Frame, contentSizes: (number | undefined)[], unitSize: number): Promise<void> {
  const pieces = frame.pieces!;
  const assign = (lengths: readonly number[]): void => {
    let offset = frame.offset;
    pieces.forEach((p, i) => {
      p.offset = offset;
      p.length = lengths[i]!;
      offset += p.length;
    });
    frame.layoutKnown = true;
  };
  if (pieces.length === 1) return assign([frame.length]);
  let sizes = contentSizes;
  if (sizes.length !== pieces.length) {
    // One after the other: the reader's window is not for concurrent use.
    sizes = [];
    for (const p of pieces) sizes.push(await declaredSize(reader, p));
  }
  if (sizes.every((s) => s !== undefined && s > 0) && sizes.reduce<number>((a, s) => a + s!, 0) === frame.length) {
    return assign(sizes as number[]);
  }
  if (sizes.every((s) => s === undefined) && Math.ceil(frame.length / unitSize) === pieces.length) {
    return assign(pieces.map((_, i) => Math.min(unitSize, frame.length - i * unitSize)));
  }
  frame.layoutKnown = false;
}

/** The content size an LZ4 piece's header declares; undefined when it declares none or is unreadable (a read will say why). */
async function declaredSize(reader: WindowedReader, piece: Lz4Piece): Promise<number | undefined> {
  try {
    return parseLz4FrameDescriptor(await reader.read(piece.position, 19)).contentSize;
  } catch (err) {
    if (err instanceof Lz4FrameViolation) return undefined;
    throw err;
  }
}
