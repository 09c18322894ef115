/**
 * Decoding one LZ4 frame into a buffer the caller provides
 * (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md and
 * lz4_Block_format.md). Why not lz4-napi's decompressFrame: it returns a
 * fresh buffer of up to 32 MiB per call, and on this kind of host touching
 * fresh memory costs more than decoding (300 ms per 32 MiB in page faults),
 * while the freed buffers pile up in the allocator's arenas (1.3 GB of RSS
 * serving one disk). Decoding into the export's reused cache buffers keeps
 * memory bounded and the work in cache-warm pages.
 *
 * Checked: the header checksum, every block checksum the frame has (they
 * cover every stored byte, so a corrupt piece is caught), block sizes and
 * every match offset and length against the buffers' bounds (corrupt input
 * can neither write out of place nor loop), the declared content size, and
 * the content checksum when there are no block checksums (with them it
 * would only hash the same bytes a second time: xxh32 is most of the cost). Linked blocks (a match reaching into the previous
 * block, as python-lz4 writes them) work because blocks are decoded one
 * after the other into the same buffer (the block decoder is lib/lz4's).
 * Dictionaries are not supported (neither writer uses them).
 */
import { parseLz4FrameDescriptor } from '../format/lz4Frame.js';
import { xxh32 } from '../format/xxh32.js';
import { decodeLz4Block } from '../lz4/blockDecoder.js';
import { Lz4DecodeError } from '../lz4/errors.js';

export { Lz4DecodeError };

const UNCOMPRESSED = 0x80000000;

function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

/**
 * Decode the LZ4 frame src[from, to) into dst[0, ...); returns the number of
 * bytes decoded. Throws Lz4DecodeError for anything invalid or when the
 * frame ends before `to` (trailing bytes) or decodes to more than dst holds.
 */
export function decodeLz4Frame(src: Uint8Array, dst: Uint8Array, from = 0, to = src.length): number {
  let descriptor;
  try {
    descriptor = parseLz4FrameDescriptor(src.subarray(from, Math.min(to, from + 19)));
  } catch (err) {
    throw new Lz4DecodeError((err as Error).message);
  }
  if (descriptor.dictId !== undefined) throw new Lz4DecodeError('LZ4 frames with a dictionary are not supported');
  let ip = from + descriptor.headerLength;
  let op = 0;
  for (;;) {
    if (ip + 4 > to) throw new Lz4DecodeError('LZ4 frame ends before its end mark');
    const word = u32(src, ip);
    ip += 4;
    if (word === 0) break;
    const size = (word & ~UNCOMPRESSED) >>> 0;
    if (size > descriptor.blockMaxSize) throw new Lz4DecodeError(`LZ4 block of ${size} bytes exceeds the maximum block size ${descriptor.blockMaxSize}`);
    const end = ip + size;
    if (end + (descriptor.blockChecksum ? 4 : 0) > to) throw new Lz4DecodeError('LZ4 frame ends inside a block');
    if (descriptor.blockChecksum && xxh32(src.subarray(ip, end)) !== u32(src, end)) {
      throw new Lz4DecodeError(`LZ4 block checksum mismatch in the block at byte ${ip - 4 - from} of the frame`);
    }
    const limit = Math.min(dst.length, op + descriptor.blockMaxSize);
    if (word & UNCOMPRESSED) {
      if (op + size > limit) throw new Lz4DecodeError('LZ4 frame decodes to more bytes than expected');
      dst.set(src.subarray(ip, end), op);
      op += size;
    } else {
      op = decodeLz4Block(src, ip, end, dst, op, limit);
    }
    ip = end + (descriptor.blockChecksum ? 4 : 0);
  }
  if (descriptor.contentChecksum) {
    if (ip + 4 > to) throw new Lz4DecodeError('LZ4 frame ends inside its content checksum');
    // Block checksums already vouch for every stored byte; hashing the output again would double the cost.
    if (!descriptor.blockChecksum && xxh32(dst.subarray(0, op)) !== u32(src, ip)) throw new Lz4DecodeError('LZ4 content checksum mismatch');
    ip += 4;
  }
  if (descriptor.contentSize !== undefined && descriptor.contentSize !== op) {
    throw new Lz4DecodeError(`LZ4 frame declares ${descriptor.contentSize} bytes of content, holds ${op}`);
  }
  if (ip !== to) throw new Lz4DecodeError(`${to - ip} bytes follow the LZ4 frame`);
  return op;
}
