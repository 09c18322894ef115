/**
 * Writing LZ4 frames (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md)
 * as virtnbdbackup's frames are flagged: content size, block checksums and
 * content checksum on. Blocks are independent (each is compressed on its own,
 * so any worker could take any block and a reader needs no history), of at
 * most `blockSize` bytes; a block that would not shrink is stored
 * uncompressed (high bit of its size word). The frame is written into a
 * buffer the caller provides, of at least lz4FrameBound() bytes, as content
 * arrives: begin(), write() any number of times, end(). Or in parts, each
 * in a buffer of its own (so a frame streams out without ever being whole
 * in memory): begin() with `wholeFrame` false, write(), cut() to close a
 * part and resume() into the next buffer, ..., end() in the last one.
 */
import { Xxh32, xxh32 } from '../format/xxh32.js';
import { LZ4_FRAME_MAGIC } from '../format/lz4Frame.js';
import { Lz4BlockEncoder } from './blockEncoder.js';

/** The block sizes the frame format allows. */
export type Lz4BlockSize = 65536 | 262144 | 1048576 | 4194304;

/**
 * 1 MiB: a block costs 8 bytes, and the matcher finds matches across the
 * whole 64 KiB window everywhere but at block starts, so the ratio stays at
 * python-lz4's (linked 64 KiB blocks); 4 MiB blocks made the parts in
 * flight (one per slot, a whole number of blocks) 4 times larger.
 */
export const DEFAULT_BLOCK_SIZE: Lz4BlockSize = 1048576;

/** magic, FLG, BD, content size (8), HC */
const HEADER_LENGTH = 15;
/** Version 01, independent blocks, block checksums, content size, content checksum. */
const FLG = 0b0111_1100;
const UNCOMPRESSED = 0x80000000;

const BLOCK_SIZE_IDS: Record<Lz4BlockSize, number> = { 65536: 4, 262144: 5, 1048576: 6, 4194304: 7 };

export function isLz4BlockSize(size: number): size is Lz4BlockSize {
  return Object.prototype.hasOwnProperty.call(BLOCK_SIZE_IDS, size);
}

function writeU32(dst: Uint8Array, at: number, value: number): void {
  dst[at] = value & 0xff;
  dst[at + 1] = (value >>> 8) & 0xff;
  dst[at + 2] = (value >>> 16) & 0xff;
  dst[at + 3] = (value >>> 24) & 0xff;
}

/** The largest frame `contentSize` bytes can become (each block stored raw at worst). */
export function lz4FrameBound(contentSize: number, blockSize: Lz4BlockSize = DEFAULT_BLOCK_SIZE): number {
  const blocks = Math.ceil(contentSize / blockSize);
  return HEADER_LENGTH + blocks * 8 + contentSize + 8;
}

/**
 * The largest part of a frame (see Lz4FrameEncoder.resume) `contentBytes`
 * of content can become: the header if `first`, its blocks, the end mark
 * and content checksum if `last`.
 */
export function lz4PartBound(contentBytes: number, first: boolean, last: boolean, blockSize: Lz4BlockSize = DEFAULT_BLOCK_SIZE): number {
  return (first ? HEADER_LENGTH : 0) + Math.ceil(contentBytes / blockSize) * 8 + contentBytes + (last ? 8 : 0);
}

export class Lz4FrameEncoder {
  readonly blockSize: Lz4BlockSize;
  private readonly encoder: Lz4BlockEncoder;
  private readonly hash = new Xxh32();
  private dst: Uint8Array = new Uint8Array(0);
  private at = 0;
  private contentSize = 0;
  private written = 0;
  private hashing = true;
  private open = false;

  /** Frame encoders working one after the other may share one block encoder (its hash table). */
  constructor(blockSize: Lz4BlockSize = DEFAULT_BLOCK_SIZE, encoder = new Lz4BlockEncoder()) {
    if (!isLz4BlockSize(blockSize)) throw new RangeError(`LZ4 block size must be 64 KiB, 256 KiB, 1 MiB or 4 MiB, got ${blockSize}`);
    this.blockSize = blockSize;
    this.encoder = encoder;
  }

  /**
   * Start a frame of exactly `contentSize` bytes in dst (at least
   * lz4FrameBound(contentSize) long). With `hashContent` false the caller
   * computes the content checksum and hands it to end().
   */
  begin(dst: Uint8Array, contentSize: number, hashContent = true, wholeFrame = true): void {
    if (!Number.isSafeInteger(contentSize) || contentSize < 0) throw new RangeError(`bad LZ4 content size ${contentSize}`);
    const need = wholeFrame ? lz4FrameBound(contentSize, this.blockSize) : HEADER_LENGTH;
    if (dst.length < need) throw new RangeError('LZ4 frame buffer is too small');
    this.dst = dst;
    this.contentSize = contentSize;
    this.written = 0;
    this.hashing = hashContent;
    this.hash.reset();
    this.open = true;
    writeU32(dst, 0, LZ4_FRAME_MAGIC);
    dst[4] = FLG;
    dst[5] = BLOCK_SIZE_IDS[this.blockSize] << 4;
    writeU32(dst, 6, contentSize % 2 ** 32);
    writeU32(dst, 10, Math.floor(contentSize / 2 ** 32));
    dst[14] = (xxh32(dst.subarray(4, 14)) >>> 8) & 0xff;
    this.at = HEADER_LENGTH;
  }

  /**
   * Add content src[from, to). Blocks are cut every blockSize bytes of
   * content, so every write but the one that completes the content must be
   * a whole number of blocks.
   */
  write(src: Uint8Array, from = 0, to = src.length): void {
    if (!this.open) throw new Error('LZ4 frame not begun');
    const length = to - from;
    if (this.written + length > this.contentSize) throw new RangeError(`LZ4 frame content exceeds its declared ${this.contentSize} bytes`);
    if (this.written + length < this.contentSize && length % this.blockSize !== 0) {
      throw new RangeError(`LZ4 frame writes must be whole ${this.blockSize}-byte blocks until the last`);
    }
    // Typed arrays drop writes past their end silently: a short part buffer must fail loudly instead.
    if (this.at + lz4PartBound(length, false, false, this.blockSize) > this.dst.length) throw new RangeError('LZ4 frame buffer is too small');
    if (this.hashing) this.hash.update(src, from, to);
    const dst = this.dst;
    for (let start = from; start < to; start += this.blockSize) {
      const end = Math.min(to, start + this.blockSize);
      const size = end - start;
      const body = this.at + 4;
      // Compressed only if strictly smaller than the raw bytes.
      let stored = this.encoder.compress(src, start, end, dst, body, body + size - 1);
      if (stored < 0) {
        dst.set(src.subarray(start, end), body);
        writeU32(dst, this.at, (size | UNCOMPRESSED) >>> 0);
        stored = body + size;
      } else {
        writeU32(dst, this.at, stored - body);
      }
      writeU32(dst, stored, xxh32(dst.subarray(body, stored)));
      this.at = stored + 4;
    }
    this.written += length;
  }

  /** Finish the frame: end mark and content checksum. Returns the frame's length in dst. */
  end(contentChecksum?: number): number {
    if (!this.open) throw new Error('LZ4 frame not begun');
    if (this.written !== this.contentSize) throw new RangeError(`LZ4 frame got ${this.written} of its ${this.contentSize} bytes`);
    const checksum = contentChecksum ?? (this.hashing ? this.hash.digest() : undefined);
    if (checksum === undefined) throw new Error('LZ4 content checksum missing');
    if (this.at + 8 > this.dst.length) throw new RangeError('LZ4 frame buffer is too small');
    writeU32(this.dst, this.at, 0);
    writeU32(this.dst, this.at + 4, checksum);
    this.at += 8;
    this.open = false;
    const length = this.at;
    this.dst = new Uint8Array(0);
    return length;
  }

  /** Close the current part of an unfinished frame: returns its length in its buffer. Continue with resume(). */
  cut(): number {
    if (!this.open) throw new Error('LZ4 frame not begun');
    const length = this.at;
    this.dst = new Uint8Array(0);
    this.at = 0;
    return length;
  }

  /** Write the frame's next part, from its start, into `dst` (after cut()). */
  resume(dst: Uint8Array): void {
    if (!this.open) throw new Error('LZ4 frame not begun');
    if (this.at !== 0) throw new Error('LZ4 frame part not cut before resume');
    this.dst = dst;
  }
}

/** One LZ4 frame of `data`, in a buffer of its own (the synchronous, single-threaded way). */
export function compressLz4Frame(data: Uint8Array, encoder = new Lz4FrameEncoder()): Buffer {
  const out = Buffer.allocUnsafe(lz4FrameBound(data.length, encoder.blockSize));
  encoder.begin(out, data.length);
  encoder.write(data);
  return out.subarray(0, encoder.end());
}
