/**
 * SparseParser: bytes of a sparse stream -> Chunk (object mode). Reads the
 * stream front to back, without seeking, from input cut into any pieces
 * (down to single bytes). The meta frame sets `metadata` (and emits
 * 'metadata'); zero frames become zero chunks; uncompressed data frames
 * become data chunks of at most `maxPieceSize` bytes, with `frame` set when a
 * frame was split; a piece is cut short at a 64 KiB-aligned disk offset
 * where an input buffer ends, so most pieces are views of the input, not copies. In compressed streams each LZ4 frame of a data payload
 * becomes one chunk with `lz4` and `frame` set; since its uncompressed size
 * is unknown until decompression, such a chunk carries the whole data frame's
 * span as `offset`/`length` (so the first piece's offset is right) and
 * Lz4Decompress assigns each piece its true place. After the stop frame a
 * compressed stream's trailer is read, checked against the compressed sizes
 * seen and exposed as `trailer` (and 'trailer'). Every deviation from the
 * format, and a stream that ends before its stop frame, fails with a typed
 * StreamFormatError naming the frame and byte offset. Buffers: 40 header
 * bytes, the metadata JSON (<= maxMetadataSize), one piece of uncompressed
 * data (<= maxPieceSize) or one LZ4 frame (<= maxLz4FrameSize), and after
 * the stop frame the trailer (<= maxTrailerSize); plus, for compressed
 * streams, a few numbers per data frame for the trailer check.
 */
import { Transform, type TransformCallback } from 'node:stream';
import type { Chunk, FrameSpan } from '../lib/chunk.js';
import {
  DataSizeMismatchError,
  FrameHeaderError,
  FrameRangeError,
  FrameSequenceError,
  Lz4FormatError,
  MetadataError,
  MissingStopFrameError,
  MissingTerminatorError,
  TrailerError,
  TrailingDataError,
  TruncatedStreamError,
  type StreamPosition,
} from '../lib/format/errors.js';
import { FRAME_HEADER_LENGTH, parseFrameHeader, showBytes, type FrameHeader } from '../lib/format/frameHeader.js';
import { Lz4FrameViolation, Lz4FrameWalker } from '../lib/format/lz4Frame.js';
import { decodeMetadataJson, isCompressed, normalizeMetadata, type StreamMetadata } from '../lib/format/metadata.js';
import { CompressedSizeLog, parseTrailerSection, type CompressionTrailer } from '../lib/format/trailer.js';
import { BufferLender, NO_LOANS, type BufferLoans } from '../lib/bufferLender.js';

export interface SparseParserOptions {
  /** Largest data chunk emitted for uncompressed frames (default 4 MiB). */
  maxPieceSize?: number;
  /** Largest LZ4 frame accepted in a compressed payload (default 128 MiB). */
  maxLz4FrameSize?: number;
  /** Largest metadata JSON accepted (default 1 MiB). */
  maxMetadataSize?: number;
  /** Largest trailer section accepted (default 64 MiB). */
  maxTrailerSize?: number;
  /** Chunks buffered on the readable side (default 2). */
  readableHighWaterMark?: number;
  /**
   * The input's lender (FileSource): each input buffer is released once
   * consumed, and a view kept past that (a piece passed on, a part carried
   * to the next input) is retained; whoever ends up with a chunk's `data` or
   * `lz4` releases it when done (NbdWriter's onWritten, Lz4Decompress).
   */
  loans?: BufferLoans;
  /**
   * Emit each LZ4 frame in parts (`lz4More` on all but the last), cut where
   * an input buffer ends, instead of gathering it whole (up to 32 MiB):
   * for Lz4StreamDecompress.
   */
  lz4Parts?: boolean;
}

type State =
  | 'header'
  | 'metaBody'
  | 'terminator'
  | 'plainData'
  | 'lz4Frame'
  | 'lz4Next'
  | 'afterStop';

const CR = 0x0d;
const LF = 0x0a;
const LZ4_MAGIC_FIRST_BYTE = 0x04;

interface DataFrame {
  span: FrameSpan;
  /** Uncompressed bytes of the payload consumed (plain frames). */
  consumed: number;
}

/**
 * Uncompressed pieces are cut where an input buffer ends, at a disk offset
 * that is a multiple of this (qcow2's default cluster size, so writes stay
 * cluster-aligned); only the short rest is copied into the next piece.
 */
const PIECE_ALIGNMENT = 64 * 1024;

export class SparseParser extends Transform {
  /** The stream's metadata, once the meta frame has been read. */
  metadata: StreamMetadata | undefined;
  /** The metadata JSON as decoded, with any keys newer or older versions wrote. */
  rawMetadata: Record<string, unknown> | undefined;
  /** The compression trailer, after the end of a compressed stream. */
  trailer: CompressionTrailer | undefined;

  private readonly maxPieceSize: number;
  private readonly maxLz4FrameSize: number;
  private readonly maxMetadataSize: number;
  private readonly maxTrailerSize: number;
  private readonly loans: BufferLoans;
  private readonly lz4Parts: boolean;
  /** Bytes of the current LZ4 frame already emitted in parts. */
  private lz4Emitted = 0;
  /** Pieces completed across two inputs (< PIECE_ALIGNMENT bytes) are copied into these, handed back with release(). */
  private readonly joins = new BufferLender(PIECE_ALIGNMENT, 16);

  private state: State = 'header';
  private compressed = false;
  /** Stream offset of the next byte to consume. */
  private position = 0;
  private frameIndex = 0;
  private frameStart = 0;
  private readonly headerBytes = Buffer.alloc(FRAME_HEADER_LENGTH);
  private headerFill = 0;
  private terminatorFill = 0;
  /** Collected slices: metadata JSON, a plain piece, an LZ4 frame, or the trailer. */
  private parts: Buffer[] = [];
  private partsLength = 0;
  /** The parts are the tail of an input cut at an aligned offset: complete them only up to the next one. */
  private carrying = false;
  private metaLength = 0;
  private data: DataFrame | undefined;
  private walker: Lz4FrameWalker | undefined;
  private lz4Start = 0;
  /** End of the last data or zero frame. */
  private frontier = 0;
  private dataBytes = 0;
  private stopStart = 0;
  /** Compressed sizes seen, for the trailer check. */
  private readonly sizes = new CompressedSizeLog();

  constructor(options: SparseParserOptions = {}) {
    super({
      writableObjectMode: false,
      readableObjectMode: true,
      readableHighWaterMark: options.readableHighWaterMark ?? 2,
    });
    this.maxPieceSize = options.maxPieceSize ?? 4 * 1024 * 1024;
    this.maxLz4FrameSize = options.maxLz4FrameSize ?? 128 * 1024 * 1024;
    this.maxMetadataSize = options.maxMetadataSize ?? 1024 * 1024;
    this.maxTrailerSize = options.maxTrailerSize ?? 64 * 1024 * 1024;
    this.loans = options.loans ?? NO_LOANS;
    this.lz4Parts = options.lz4Parts ?? false;
    for (const [name, value] of Object.entries({
      maxPieceSize: this.maxPieceSize,
      maxLz4FrameSize: this.maxLz4FrameSize,
      maxMetadataSize: this.maxMetadataSize,
      maxTrailerSize: this.maxTrailerSize,
    })) {
      if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`);
    }
  }

  override _transform(input: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.consume(input);
      if (this.lz4Parts && this.state === 'lz4Frame' && this.partsLength > 0) this.emitLz4Part();
      this.loans.release(input);
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.finishStream();
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  private here(): StreamPosition {
    return { frameIndex: this.frameIndex, byteOffset: this.frameStart };
  }

  private consume(input: Buffer): void {
    let at = 0;
    while (at < input.length) {
      const available = input.length - at;
      switch (this.state) {
        case 'header': {
          const take = Math.min(FRAME_HEADER_LENGTH - this.headerFill, available);
          input.copy(this.headerBytes, this.headerFill, at, at + take);
          this.headerFill += take;
          this.advance(take);
          at += take;
          if (this.headerFill === FRAME_HEADER_LENGTH) {
            this.headerFill = 0;
            this.onHeader(parseFrameHeader(this.headerBytes, this.here()));
          }
          break;
        }
        case 'metaBody': {
          const take = Math.min(this.metaLength - this.partsLength, available);
          this.collect(input, at, take);
          at += take;
          if (this.partsLength === this.metaLength) {
            const json = this.takeParts();
            this.onMetadata(json);
            this.loans.release(json);
          }
          break;
        }
        case 'terminator': {
          const byte = input[at]!;
          const expected = this.terminatorFill === 0 ? CR : LF;
          if (byte !== expected) {
            const what = this.frameIndex === 0 ? 'metadata' : 'data payload';
            throw new MissingTerminatorError(
              this.here(),
              `${what} is not followed by \\r\\n: byte ${this.position} is ` +
                `${showBytes(input.subarray(at, at + 1))}`,
            );
          }
          this.terminatorFill += 1;
          this.advance(1);
          at += 1;
          if (this.terminatorFill === 2) {
            this.terminatorFill = 0;
            this.nextFrame();
          }
          break;
        }
        case 'plainData': {
          const frame = this.data!;
          const left = frame.span.length - frame.consumed;
          const limit = this.carrying ? PIECE_ALIGNMENT - this.partsLength : this.maxPieceSize - this.partsLength;
          const take = Math.min(left, limit, available);
          const completes = take === left || take === limit;
          if (!completes && this.partsLength === 0) {
            // The input ends inside this piece: pass its part up to an aligned disk offset on
            // without copying, and complete the rest (< PIECE_ALIGNMENT) from the next input.
            const start = frame.span.offset + frame.consumed;
            const cut = Math.floor((start + take) / PIECE_ALIGNMENT) * PIECE_ALIGNMENT - start;
            if (cut > 0 && !this.carrying) {
              this.collect(input, at, cut);
              frame.consumed += cut;
              at += cut;
              this.emitPlainPiece();
              this.carrying = true;
              break;
            }
            // Less than an aligned step left in this input: carry it, so the next input completes
            // only this short piece (a small copy) and the pieces after it are views again.
            this.carrying = true;
          }
          this.collect(input, at, take);
          frame.consumed += take;
          at += take;
          if (completes) {
            this.emitPlainPiece();
            this.carrying = false;
          }
          break;
        }
        case 'lz4Frame': {
          const walker = this.walker!;
          let take: number;
          try {
            take = walker.feed(input, at);
          } catch (err) {
            if (!(err instanceof Lz4FrameViolation)) throw err;
            throw new Lz4FormatError(
              this.here(),
              `${err.message} in the LZ4 frame starting at byte ${this.lz4Start} (its byte ${err.offsetInFrame})`,
            );
          }
          this.collect(input, at, take);
          at += take;
          if (this.lz4Emitted + this.partsLength > this.maxLz4FrameSize) {
            throw new Lz4FormatError(
              this.here(),
              `LZ4 frame starting at byte ${this.lz4Start} is larger than maxLz4FrameSize ${this.maxLz4FrameSize}`,
            );
          }
          if (walker.done) this.emitLz4Piece();
          break;
        }
        case 'lz4Next': {
          // After an LZ4 frame comes either the next one (magic 04 22 4d 18) or the payload's \r\n.
          const byte = input[at]!;
          if (byte === CR) this.endDataFrame();
          else if (byte === LZ4_MAGIC_FIRST_BYTE) this.startLz4Frame();
          else {
            throw new MissingTerminatorError(
              this.here(),
              `byte ${this.position} after an LZ4 frame is ${showBytes(input.subarray(at, at + 1))}: ` +
                'neither the next LZ4 frame nor the \\r\\n ending the payload',
            );
          }
          break;
        }
        case 'afterStop': {
          if (!this.compressed) {
            throw new TrailingDataError(
              { frameIndex: this.frameIndex, byteOffset: this.position },
              `${available} or more bytes follow the stop frame of an uncompressed stream`,
            );
          }
          this.collect(input, at, available);
          at += available;
          if (this.partsLength > this.maxTrailerSize) {
            throw new TrailerError(
              { frameIndex: this.frameIndex, byteOffset: this.stopStart + FRAME_HEADER_LENGTH },
              `more than maxTrailerSize ${this.maxTrailerSize} bytes follow the stop frame`,
            );
          }
          break;
        }
      }
    }
  }

  private advance(count: number): void {
    this.position += count;
  }

  private collect(input: Buffer, at: number, count: number): void {
    if (count === 0) return;
    const part = input.subarray(at, at + count);
    this.loans.retain(part);
    this.parts.push(part);
    this.partsLength += count;
    this.advance(count);
  }

  /** The collected parts as one buffer: the one part itself (still held), or a copy (the parts released). */
  private takeParts(): Buffer {
    let bytes: Buffer;
    if (this.parts.length === 1) bytes = this.parts[0]!;
    else {
      bytes = Buffer.concat(this.parts, this.partsLength);
      for (const part of this.parts) this.loans.release(part);
    }
    this.parts = [];
    this.partsLength = 0;
    return bytes;
  }

  /** takeParts() into one of `joins` (short pieces joined from two inputs: frequent, so no fresh buffer each). */
  private joinParts(): Buffer {
    const joined = this.joins.lend().subarray(0, this.partsLength);
    let at = 0;
    for (const part of this.parts) {
      at += part.copy(joined, at);
      this.loans.release(part);
    }
    this.parts = [];
    this.partsLength = 0;
    return joined;
  }

  private nextFrame(): void {
    this.frameIndex += 1;
    this.frameStart = this.position;
    this.state = 'header';
  }

  private expectTerminator(): void {
    this.state = 'terminator';
  }

  private onHeader(header: FrameHeader): void {
    const where = this.here();
    if (this.frameIndex === 0 && header.kind !== 'meta') {
      throw new FrameSequenceError(where, `stream starts with a ${header.kind} frame, not a meta frame`);
    }
    switch (header.kind) {
      case 'meta':
        if (this.frameIndex !== 0) throw new FrameSequenceError(where, 'second meta frame');
        if (header.start !== 0) throw new FrameHeaderError(where, `meta frame start is ${header.start}, not 0`);
        if (header.length === 0 || header.length > this.maxMetadataSize) {
          throw new MetadataError(where, `metadata length ${header.length} is not within 1..${this.maxMetadataSize}`);
        }
        this.metaLength = header.length;
        this.state = 'metaBody';
        return;
      case 'zero':
        this.claim(header);
        this.push({ offset: header.start, length: header.length, zero: true } satisfies Chunk);
        this.nextFrame();
        return;
      case 'data':
        this.claim(header);
        this.data = { span: { offset: header.start, length: header.length }, consumed: 0 };
        this.dataBytes += header.length;
        if (this.compressed) {
          this.sizes.startFrame(where);
          this.startLz4Frame();
        } else {
          this.state = 'plainData';
        }
        return;
      case 'stop':
        if (header.start !== 0 || header.length !== 0) {
          throw new FrameHeaderError(where, `stop frame must be "stop 0 0", has start ${header.start}, length ${header.length}`);
        }
        if (this.dataBytes !== this.metadata!.dataSize) {
          throw new DataSizeMismatchError(
            where,
            `data frames hold ${this.dataBytes} bytes, the metadata's dataSize is ${this.metadata!.dataSize}`,
          );
        }
        this.stopStart = this.frameStart;
        this.frameIndex += 1;
        this.frameStart = this.position;
        this.state = 'afterStop';
        return;
      case 'comp':
        throw new FrameSequenceError(where, 'comp frame before the stop frame');
    }
  }

  /** A data or zero frame must be non-empty, after the previous one, and inside the disk. */
  private claim(header: FrameHeader): void {
    const where = this.here();
    const end = header.start + header.length;
    if (header.length === 0) throw new FrameRangeError(where, `empty ${header.kind} frame at disk offset ${header.start}`);
    if (header.start < this.frontier) {
      throw new FrameRangeError(
        where,
        `${header.kind} frame at disk offset ${header.start} is out of order or overlaps the previous frame ending at ${this.frontier}`,
      );
    }
    if (end > this.metadata!.virtualSize) {
      throw new FrameRangeError(
        where,
        `${header.kind} frame [${header.start}, ${end}) is past the virtual size ${this.metadata!.virtualSize}`,
      );
    }
    this.frontier = end;
  }

  private onMetadata(json: Buffer): void {
    const where = { frameIndex: 0, byteOffset: FRAME_HEADER_LENGTH };
    const raw = decodeMetadataJson(json, where);
    const metadata = normalizeMetadata(raw, where);
    this.rawMetadata = raw;
    this.metadata = metadata;
    this.compressed = isCompressed(metadata);
    this.expectTerminator();
    this.emit('metadata', metadata);
  }

  /**
   * Hand back a chunk's `data` once nothing reads it any more: to the
   * input's lender, or to this parser's own buffers (pieces joined from two
   * inputs). Other buffers are ignored.
   */
  release(data: Uint8Array): void {
    this.joins.release(data);
    this.loans.release(data);
  }

  private emitPlainPiece(): void {
    const frame = this.data!;
    const data = this.parts.length > 1 && this.partsLength <= PIECE_ALIGNMENT ? this.joinParts() : this.takeParts();
    const offset = frame.span.offset + frame.consumed - data.length;
    const whole = data.length === frame.span.length;
    this.push((whole ? { offset, length: data.length, data } : { offset, length: data.length, data, frame: { ...frame.span } }) satisfies Chunk);
    if (frame.consumed === frame.span.length) {
      this.data = undefined;
      this.expectTerminator();
    }
  }

  private startLz4Frame(): void {
    this.walker = new Lz4FrameWalker();
    this.lz4Start = this.position;
    this.state = 'lz4Frame';
  }

  /** The LZ4 frame's bytes so far, passed on as a part (the frame goes on in the next input). */
  private emitLz4Part(): void {
    const frame = this.data!;
    const lz4 = this.takeParts();
    this.lz4Emitted += lz4.length;
    this.push({ offset: frame.span.offset, length: frame.span.length, lz4, frame: { ...frame.span }, lz4More: true } satisfies Chunk);
  }

  private emitLz4Piece(): void {
    const frame = this.data!;
    const lz4 = this.takeParts();
    const size = this.lz4Emitted + lz4.length;
    this.lz4Emitted = 0;
    const declared = this.walker!.descriptor?.contentSize;
    if (declared !== undefined && declared > frame.span.length) {
      throw new Lz4FormatError(
        this.here(),
        `LZ4 frame at byte ${this.lz4Start} declares ${declared} bytes, more than its data frame's ${frame.span.length}`,
      );
    }
    this.walker = undefined;
    this.sizes.addPiece(size);
    this.state = 'lz4Next';
    this.push({ offset: frame.span.offset, length: frame.span.length, lz4, frame: { ...frame.span } } satisfies Chunk);
  }

  private endDataFrame(): void {
    this.data = undefined;
    this.expectTerminator();
  }

  private finishStream(): void {
    if (this.state === 'afterStop') {
      if (this.compressed) this.readTrailer();
      return;
    }
    const where = this.here();
    const at = this.position;
    switch (this.state) {
      case 'header':
        if (this.headerFill === 0) {
          if (at === 0) throw new TruncatedStreamError(where, 'stream is empty');
          throw new MissingStopFrameError(
            where,
            `stream ends at byte ${at} after ${this.frameIndex} frames, without a stop frame (incomplete backup?)`,
          );
        }
        throw new TruncatedStreamError(
          where,
          `stream ends inside a frame header (${this.headerFill} of ${FRAME_HEADER_LENGTH} bytes)`,
        );
      case 'metaBody':
        throw new TruncatedStreamError(where, `stream ends inside the metadata (${this.partsLength} of ${this.metaLength} bytes)`);
      case 'terminator':
        throw new TruncatedStreamError(where, `stream ends at byte ${at}, before the \\r\\n that ends the payload`);
      case 'plainData': {
        const frame = this.data!;
        throw new TruncatedStreamError(
          where,
          `stream ends at byte ${at}, inside the payload of the data frame at disk offset ${frame.span.offset} ` +
            `(${frame.consumed} of ${frame.span.length} bytes)`,
        );
      }
      case 'lz4Frame':
        throw new TruncatedStreamError(
          where,
          `stream ends at byte ${at}, inside the LZ4 frame starting at byte ${this.lz4Start} ` +
            `(data frame at disk offset ${this.data!.span.offset})`,
        );
      case 'lz4Next':
        throw new TruncatedStreamError(where, `stream ends at byte ${at}, before the \\r\\n that ends the payload`);
    }
  }

  /** Everything after the stop frame: JSON, \r\n, `comp 0 <json length>\r\n`; checked against the stream. */
  private readTrailer(): void {
    const where: StreamPosition = { frameIndex: this.frameIndex, byteOffset: this.frameStart };
    const section = this.takeParts();
    if (section.length === 0) {
      // virtnbdbackup --compress 0 writes level 0 and, by a quirk, no trailer; the data is all there.
      if (this.metadata!.compressed === 0) return;
      throw new TrailerError(where, 'compressed stream ends after the stop frame, without its compression trailer');
    }
    const trailer = parseTrailerSection(section, where);
    this.loans.release(section);
    this.sizes.check(trailer, where);
    this.trailer = trailer;
    this.emit('trailer', trailer);
  }
}
