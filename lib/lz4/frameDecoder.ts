/**
 * Reading LZ4 frames (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md)
 * into a buffer the caller provides, block record by block record, so the
 * frame can be fed in parts (a worker gets a few blocks at a time) while
 * linked blocks (python-lz4's default: matches reach into the previous
 * block) still decode, blocks landing one after the other in one buffer.
 *
 * Checked: block sizes against the frame's maximum, every block checksum
 * and the content checksum the frame carries, the declared content size,
 * and (by the block decoder) every match against the buffers' bounds.
 * Errors are Lz4DecodeError / Lz4ChecksumError with the byte of the frame
 * where it went wrong. Dictionaries are not supported (no writer we meet
 * uses them).
 */
import { parseLz4FrameDescriptor, type Lz4FrameDescriptor } from '../format/lz4Frame.js';
import { xxh32 } from '../format/xxh32.js';
import { decodeLz4Block } from './blockDecoder.js';
import { Lz4ChecksumError, Lz4DecodeError } from './errors.js';

const UNCOMPRESSED = 0x80000000;

function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

function hex(value: number): string {
  return '0x' + value.toString(16).padStart(8, '0');
}

/** Parse and check the frame header at src[from, ...); errors become Lz4DecodeError. */
export function readLz4FrameHeader(src: Uint8Array, from = 0, to = src.length): Lz4FrameDescriptor {
  let descriptor: Lz4FrameDescriptor;
  try {
    descriptor = parseLz4FrameDescriptor(src.subarray(from, Math.min(to, from + 19)));
  } catch (err) {
    const offset = (err as { offsetInFrame?: number }).offsetInFrame;
    throw new Lz4DecodeError((err as Error).message, offset);
  }
  if (descriptor.dictId !== undefined) throw new Lz4DecodeError('LZ4 frames with a dictionary are not supported', 4);
  return descriptor;
}

/**
 * End of the block record (size word, data, checksum) at frame[at, ...), or
 * -1 when `at` holds the end mark. `from` is where the frame starts (for
 * messages). Throws when the record is impossible or runs past `to`.
 */
export function lz4BlockRecordEnd(frame: Uint8Array, at: number, to: number, descriptor: Lz4FrameDescriptor, from = 0): number {
  if (at + 4 > to) throw new Lz4DecodeError('LZ4 frame ends before its end mark', at - from);
  const word = u32(frame, at);
  if (word === 0) return -1;
  const size = (word & ~UNCOMPRESSED) >>> 0;
  if (size > descriptor.blockMaxSize) {
    throw new Lz4DecodeError(`LZ4 block of ${size} bytes exceeds the frame's maximum block size ${descriptor.blockMaxSize}`, at - from);
  }
  const end = at + 4 + size + (descriptor.blockChecksum ? 4 : 0);
  if (end > to) throw new Lz4DecodeError('LZ4 frame ends inside a block', at - from);
  return end;
}

/** The checksum stored after the block body src[body, end) must match it; `where` is the block's byte in the frame. */
export function checkLz4BlockChecksum(src: Uint8Array, body: number, end: number, where: number): void {
  const stored = u32(src, end);
  const computed = xxh32(src.subarray(body, end));
  if (stored !== computed) {
    throw new Lz4ChecksumError('block', `LZ4 block checksum mismatch in the block at byte ${where} of the LZ4 frame (stored ${hex(stored)}, computed ${hex(computed)})`, where);
  }
}

/** Decodes the blocks of one frame into one output buffer: begin(), blocks() any number of times, end(). */
export class Lz4FrameDecoder {
  private descriptor: Lz4FrameDescriptor | undefined;
  private dst: Uint8Array = new Uint8Array(0);
  private op = 0;

  begin(descriptor: Lz4FrameDescriptor, dst: Uint8Array): void {
    this.descriptor = descriptor;
    this.dst = dst;
    this.op = 0;
  }

  /** Bytes decoded so far. */
  get decoded(): number {
    return this.op;
  }

  /**
   * Decode the whole block records src[from, to); `frameOffset` is the
   * position of src[from] in the frame (for error messages).
   */
  blocks(src: Uint8Array, from: number, to: number, frameOffset: number): void {
    const descriptor = this.descriptor;
    if (!descriptor) throw new Error('LZ4 frame decoding not begun');
    const dst = this.dst;
    let at = from;
    while (at < to) {
      const where = frameOffset + (at - from);
      const recordEnd = lz4BlockRecordEnd(src, at, to, descriptor, at - where);
      if (recordEnd < 0) throw new Lz4DecodeError('unexpected LZ4 end mark among blocks', where);
      const word = u32(src, at);
      const body = at + 4;
      const end = body + ((word & ~UNCOMPRESSED) >>> 0);
      if (descriptor.blockChecksum) checkLz4BlockChecksum(src, body, end, where);
      const limit = Math.min(dst.length, this.op + descriptor.blockMaxSize);
      try {
        if (word & UNCOMPRESSED) {
          if (this.op + (end - body) > limit) throw new Lz4DecodeError('LZ4 frame decodes to more bytes than expected');
          dst.set(src.subarray(body, end), this.op);
          this.op += end - body;
        } else {
          this.op = decodeLz4Block(src, body, end, dst, this.op, limit);
        }
      } catch (err) {
        if (err instanceof Lz4DecodeError && err.offsetInFrame === undefined) {
          throw new Lz4DecodeError(`${err.message} (block at byte ${where} of the LZ4 frame)`, where);
        }
        throw err;
      }
      at = recordEnd;
    }
  }

  /**
   * After the end mark: check the content checksum (when the frame has one;
   * `checksumOffset` is its byte in the frame) and the declared content
   * size. Returns the number of bytes decoded.
   */
  end(contentChecksum: number | undefined, checksumOffset: number): number {
    const descriptor = this.descriptor;
    if (!descriptor) throw new Error('LZ4 frame decoding not begun');
    this.descriptor = undefined;
    const length = this.op;
    if (descriptor.contentSize !== undefined && descriptor.contentSize !== length) {
      throw new Lz4DecodeError(`LZ4 frame declares ${descriptor.contentSize} bytes of content, holds ${length}`, checksumOffset);
    }
    if (descriptor.contentChecksum) {
      if (contentChecksum === undefined) throw new Lz4DecodeError('LZ4 frame ends inside its content checksum', checksumOffset);
      const computed = xxh32(this.dst.subarray(0, length));
      if (computed !== contentChecksum) {
        throw new Lz4ChecksumError(
          'content',
          `LZ4 content checksum mismatch at byte ${checksumOffset} of the LZ4 frame (stored ${hex(contentChecksum)}, computed ${hex(computed)})`,
          checksumOffset,
        );
      }
    }
    this.dst = new Uint8Array(0);
    return length;
  }
}

/** The most bytes the frame at src[from, to) can decode to: its content size, or blocks x maximum block size. */
export function lz4DecodedBound(src: Uint8Array, from = 0, to = src.length): number {
  const descriptor = readLz4FrameHeader(src, from, to);
  if (descriptor.contentSize !== undefined) return descriptor.contentSize;
  let blocks = 0;
  for (let at = from + descriptor.headerLength; ; blocks++) {
    const end = lz4BlockRecordEnd(src, at, to, descriptor, from);
    if (end < 0) break;
    at = end;
  }
  return blocks * descriptor.blockMaxSize;
}

/**
 * Decode the one LZ4 frame src[from, to) (nothing may follow it) into a new
 * buffer, or into `dst` when given. Single-threaded.
 */
export function decompressLz4Frame(src: Uint8Array, from = 0, to = src.length, dst?: Uint8Array): Buffer {
  const descriptor = readLz4FrameHeader(src, from, to);
  const out = dst ?? Buffer.allocUnsafe(lz4DecodedBound(src, from, to));
  const decoder = new Lz4FrameDecoder();
  decoder.begin(descriptor, out);
  let at = from + descriptor.headerLength;
  const blocksStart = at;
  for (;;) {
    const end = lz4BlockRecordEnd(src, at, to, descriptor, from);
    if (end < 0) break;
    at = end;
  }
  decoder.blocks(src, blocksStart, at, blocksStart - from);
  at += 4;
  let checksum: number | undefined;
  if (descriptor.contentChecksum && at + 4 <= to) checksum = u32(src, at);
  const length = decoder.end(checksum, at - from);
  if (descriptor.contentChecksum) at += 4;
  if (at !== to) throw new Lz4DecodeError(`${to - at} bytes follow the LZ4 frame`, at - from);
  const bytes = Buffer.from(out.buffer, out.byteOffset, length);
  return bytes;
}
