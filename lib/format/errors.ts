/**
 * Typed errors for the sparse stream format. Every error about a stream names
 * where it happened: the frame's index in the stream (the meta frame is frame
 * 0, the first data or zero frame is frame 1, ...) and the byte offset of that
 * frame's header in the stream, so a sysadmin can look at the file with
 * `dd`/`xxd` and see it. Errors found after decompression (Lz4DataError) do not
 * know the byte offset any more; they name the disk offset instead.
 */

/** Where in a sparse stream something is. */
export interface StreamPosition {
  /** Index of the frame in the stream; the meta frame is frame 0. */
  frameIndex: number;
  /** Byte offset in the stream (of the frame header, unless the message says otherwise). */
  byteOffset: number;
}

/** Base class: the bytes are not a valid sparse stream. */
export class StreamFormatError extends Error {
  readonly frameIndex: number;
  /** Undefined only for errors found after the bytes were parsed (Lz4DataError). */
  readonly byteOffset: number | undefined;

  constructor(where: { frameIndex: number; byteOffset?: number }, detail: string, place?: string) {
    const at = place ?? (where.byteOffset === undefined ? '' : ` at byte ${where.byteOffset}`);
    super(`frame ${where.frameIndex}${at}: ${detail}`);
    this.name = new.target.name;
    this.frameIndex = where.frameIndex;
    this.byteOffset = where.byteOffset;
  }
}

/** A frame header is malformed: bad hex, wrong separators or terminator, bad fixed fields. */
export class FrameHeaderError extends StreamFormatError {}

/** A frame header names a kind other than meta, data, zero, stop or comp. */
export class UnknownFrameKindError extends FrameHeaderError {}

/** The stream ends inside a frame (header, metadata, payload or terminator). */
export class TruncatedStreamError extends StreamFormatError {}

/** The stream ends between frames but before the stop frame: a backup cut short. */
export class MissingStopFrameError extends TruncatedStreamError {}

/** A frame's range is impossible: empty, past the virtual size, out of order or overlapping. */
export class FrameRangeError extends StreamFormatError {}

/** Frames come in an impossible order: no meta frame first, a second meta frame, comp before stop. */
export class FrameSequenceError extends StreamFormatError {}

/** A payload (metadata or data) is not followed by `\r\n`. */
export class MissingTerminatorError extends StreamFormatError {}

/** The metadata JSON is unreadable or lacks what a restore needs. */
export class MetadataError extends StreamFormatError {}

/** The data frames do not hold the number of bytes the metadata announces (dataSize). */
export class DataSizeMismatchError extends StreamFormatError {}

/** The compression trailer is missing or malformed. */
export class TrailerError extends StreamFormatError {}

/** The compression trailer disagrees with the compressed sizes found in the stream. */
export class TrailerMismatchError extends TrailerError {}

/** An LZ4 frame inside a compressed payload has a bad header or block structure. */
export class Lz4FormatError extends StreamFormatError {}

/** Bytes follow the end of the stream (after stop, or after the comp frame). */
export class TrailingDataError extends StreamFormatError {}

/**
 * Decompression failed (block or content checksum mismatch, corrupt block)
 * or the decompressed pieces of a data frame do not add up to its length.
 */
export class Lz4DataError extends StreamFormatError {
  /** Disk offset of the data frame the bad piece belongs to. */
  readonly diskOffset: number;

  constructor(frameIndex: number, diskOffset: number, detail: string) {
    super({ frameIndex }, detail, ` (data frame at disk offset ${diskOffset})`);
    this.diskOffset = diskOffset;
  }
}

/**
 * SparseFramer was given chunks it cannot turn into a valid stream (out of
 * order, overlapping, incomplete frames, wrong payload). A bug upstream, not
 * bad input from disk, hence not a StreamFormatError.
 */
export class FramerInputError extends Error {
  /** Disk offset of the offending chunk, when there is one. */
  readonly diskOffset: number | undefined;

  constructor(detail: string, diskOffset?: number) {
    super(diskOffset === undefined ? detail : `chunk at disk offset ${diskOffset}: ${detail}`);
    this.name = 'FramerInputError';
    this.diskOffset = diskOffset;
  }
}
