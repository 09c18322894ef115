/**
 * SparseFramer: Chunk (object mode) -> bytes of a sparse stream, as
 * virtnbdbackup writes it. It writes the meta frame first, then for each
 * data chunk a `data` frame (a chunk carrying `frame` is one piece of that
 * frame: the header goes out with the first piece, `\r\n` after the piece
 * that reaches the frame's end), for each zero chunk a `zero` frame (dropped
 * in incremental streams, which virtnbdbackup writes without zero frames),
 * and at the end the stop frame and, for compressed metadata, the compression
 * trailer. Payloads are `chunk.lz4` when the metadata says compressed, else
 * `chunk.data`; they are pushed as they are, never copied, with headers as
 * separate small buffers. An LZ4 frame arriving in parts (`lz4More`, see
 * lib/chunk.ts) is written part by part, and its size for the trailer is
 * the sum of its parts. It buffers nothing but the trailer's sizes (a few
 * numbers per data frame). Chunks out of order, overlapping, past the
 * virtual size, with the wrong payload or incomplete frames fail the stream
 * with FramerInputError, as does a data total that differs from
 * metadata.dataSize, since a stream announcing a wrong size is unrestorable.
 */
import { Transform, type TransformCallback } from 'node:stream';
import type { Chunk, FrameSpan } from '../lib/chunk.js';
import { FramerInputError } from '../lib/format/errors.js';
import { nextPieceFrame } from '../lib/format/framePiece.js';
import { encodeFrameHeader, TERMINATOR } from '../lib/format/frameHeader.js';
import { isCompressed, serializeMetadata, type StreamMetadata } from '../lib/format/metadata.js';
import { encodeTrailerSection, trailerEntryFor, type CompressionTrailer } from '../lib/format/trailer.js';

/** virtnbdbackup's default request size (QEMU's NBD maximum block size): 32 MiB. */
export const DEFAULT_MAX_REQUEST_SIZE = 33554432;

export interface SparseFramerOptions {
  metadata: StreamMetadata;
  /**
   * The NBD server's maximum request size the extents were read with
   * (default 32 MiB). Compressed frames at least this long get the
   * `{"<total>": [sizes]}` trailer entry; shorter ones must be one piece.
   */
  maxRequestSize?: number;
  /** Chunks buffered on the writable side (default 2). */
  writableHighWaterMark?: number;
}

interface OpenFrame {
  span: FrameSpan;
  /** Disk offset the next piece must start at. */
  next: number;
  pieceSizes: number[];
  /** The piece whose LZ4 frame is arriving in parts: its compressed bytes so far. */
  partial: { offset: number; length: number; size: number } | undefined;
}

export class SparseFramer extends Transform {
  readonly metadata: StreamMetadata;
  readonly maxRequestSize: number;
  readonly compressed: boolean;
  /** Compressed sizes per data frame so far; complete after 'end' (compressed streams). */
  readonly trailer: CompressionTrailer = [];
  private started = false;
  private open: OpenFrame | undefined;
  /** End of the last data or zero frame. */
  private frontier = 0;
  private dataBytes = 0;

  constructor(options: SparseFramerOptions) {
    super({
      writableObjectMode: true,
      readableObjectMode: false,
      writableHighWaterMark: options.writableHighWaterMark ?? 2,
    });
    this.metadata = options.metadata;
    this.maxRequestSize = options.maxRequestSize ?? DEFAULT_MAX_REQUEST_SIZE;
    if (!Number.isSafeInteger(this.maxRequestSize) || this.maxRequestSize < 1) {
      throw new RangeError(`maxRequestSize must be a positive integer, got ${this.maxRequestSize}`);
    }
    this.compressed = isCompressed(this.metadata);
  }

  override _transform(chunk: Chunk, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.start();
      if (chunk.zero) this.zeroChunk(chunk);
      else this.dataChunk(chunk);
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.start();
      if (this.open) {
        throw new FramerInputError(
          `input ended inside the data frame at ${this.open.span.offset} (length ${this.open.span.length}): ` +
            `next piece expected at ${this.open.next}`,
        );
      }
      if (this.dataBytes !== this.metadata.dataSize) {
        throw new FramerInputError(
          `data chunks held ${this.dataBytes} bytes but metadata.dataSize says ${this.metadata.dataSize}`,
        );
      }
      this.push(encodeFrameHeader('stop', 0, 0));
      if (this.compressed) for (const part of encodeTrailerSection(this.trailer)) this.push(part);
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  private start(): void {
    if (this.started) return;
    this.started = true;
    const json = serializeMetadata(this.metadata);
    this.push(encodeFrameHeader('meta', 0, json.length));
    this.push(json);
    this.push(TERMINATOR);
  }

  /** A new frame [offset, offset+length) must follow the previous one and fit the disk. */
  private claim(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 1) {
      throw new FramerInputError(`bad range: offset ${offset}, length ${length}`, offset);
    }
    if (offset < this.frontier) {
      throw new FramerInputError(`out of order or overlapping: previous frame ends at ${this.frontier}`, offset);
    }
    if (offset + length > this.metadata.virtualSize) {
      throw new FramerInputError(
        `frame ends at ${offset + length}, past the virtual size ${this.metadata.virtualSize}`,
        offset,
      );
    }
    this.frontier = offset + length;
  }

  private zeroChunk(chunk: Chunk): void {
    if (this.open) throw new FramerInputError('zero chunk inside an incomplete data frame', chunk.offset);
    this.claim(chunk.offset, chunk.length);
    if (!this.metadata.incremental) this.push(encodeFrameHeader('zero', chunk.offset, chunk.length));
  }

  private payloadOf(chunk: Chunk): Buffer {
    if (this.compressed) {
      if (chunk.lz4 === undefined) throw new FramerInputError('compressed stream needs chunks with lz4', chunk.offset);
      return chunk.lz4;
    }
    if (chunk.data === undefined) {
      throw new FramerInputError(
        chunk.lz4 ? 'compressed chunk for an uncompressed stream' : 'data chunk without data',
        chunk.offset,
      );
    }
    if (chunk.data.length !== chunk.length) {
      throw new FramerInputError(`chunk length ${chunk.length} but ${chunk.data.length} bytes of data`, chunk.offset);
    }
    return chunk.data;
  }

  private dataChunk(chunk: Chunk): void {
    const payload = this.payloadOf(chunk);
    const span = chunk.frame ?? { offset: chunk.offset, length: chunk.length };
    let open = this.open;
    const partial = open?.partial;
    if (open && partial) {
      if (chunk.offset !== partial.offset || chunk.length !== partial.length || span.offset !== open.span.offset || span.length !== open.span.length) {
        throw new FramerInputError(
          `expected the next part of the LZ4 frame of the piece at ${partial.offset} (length ${partial.length})`,
          chunk.offset,
        );
      }
      this.push(payload);
      partial.size += payload.length;
      if (chunk.lz4More) return;
      open.partial = undefined;
      this.endPiece(open, chunk.length, partial.size);
      return;
    }
    nextPieceFrame(chunk, open);
    if (!open) {
      this.claim(span.offset, span.length);
      open = { span: { offset: span.offset, length: span.length }, next: span.offset, pieceSizes: [], partial: undefined };
      this.open = open;
      this.push(encodeFrameHeader('data', span.offset, span.length));
    }
    const frameEnd = open.span.offset + open.span.length;
    if (!Number.isSafeInteger(chunk.length) || chunk.length < 1 || chunk.offset + chunk.length > frameEnd) {
      throw new FramerInputError(`piece of length ${chunk.length} does not fit its frame ending at ${frameEnd}`, chunk.offset);
    }
    this.push(payload);
    if (this.compressed && chunk.lz4More) {
      open.partial = { offset: chunk.offset, length: chunk.length, size: payload.length };
      return;
    }
    this.endPiece(open, chunk.length, payload.length);
  }

  /** A piece of `length` bytes, `size` bytes as written, is complete. */
  private endPiece(open: OpenFrame, length: number, size: number): void {
    open.pieceSizes.push(size);
    open.next += length;
    this.dataBytes += length;
    if (open.next === open.span.offset + open.span.length) this.closeFrame(open);
  }

  private closeFrame(open: OpenFrame): void {
    this.push(TERMINATOR);
    this.open = undefined;
    if (!this.compressed) return;
    if (open.span.length < this.maxRequestSize && open.pieceSizes.length > 1) {
      // virtnbdbackup's reader decompresses such a frame as a single LZ4 frame.
      throw new FramerInputError(
        `compressed frame shorter than maxRequestSize ${this.maxRequestSize} came in ${open.pieceSizes.length} pieces`,
        open.span.offset,
      );
    }
    this.trailer.push(trailerEntryFor(open.span.length, open.pieceSizes, this.maxRequestSize));
  }
}
