/**
 * LZ4 block decoding (https://github.com/lz4/lz4/blob/dev/doc/lz4_Block_format.md)
 * into a buffer the caller provides. Every literal run, match offset and
 * match length is checked against the buffers' bounds, so corrupt input can
 * neither write out of place nor loop. Matches may reach back before `out`
 * into what dst already holds: that is how linked blocks (python-lz4's
 * default) refer to the previous block.
 */
import { Lz4DecodeError } from './errors.js';

const MIN_MATCH = 4;

/**
 * Decode the LZ4 block src[from, to) into dst starting at `out`, where
 * dst[0, out) holds what came before (for matches into earlier blocks),
 * writing nothing at or past `outLimit`. Returns the end of the decoded
 * bytes in dst.
 */
export function decodeLz4Block(src: Uint8Array, from: number, to: number, dst: Uint8Array, out: number, outLimit: number): number {
  let ip = from;
  let op = out;
  for (;;) {
    if (ip >= to) throw new Lz4DecodeError('LZ4 block ends without its last literals');
    const token = src[ip++]!;
    let literals = token >>> 4;
    if (literals === 15) {
      let b: number;
      do {
        if (ip >= to) throw new Lz4DecodeError('LZ4 block ends inside a literal length');
        b = src[ip++]!;
        literals += b;
      } while (b === 255);
    }
    if (literals > 0) {
      if (ip + literals > to) throw new Lz4DecodeError('LZ4 literals run past the end of the block');
      if (op + literals > outLimit) throw new Lz4DecodeError('LZ4 block decodes to more bytes than expected');
      if (literals < 32) {
        for (let i = 0; i < literals; i++) dst[op + i] = src[ip + i]!;
      } else {
        dst.set(src.subarray(ip, ip + literals), op);
      }
      ip += literals;
      op += literals;
    }
    // The last sequence of a block has literals only.
    if (ip === to) return op;
    if (ip + 2 > to) throw new Lz4DecodeError('LZ4 block ends inside a match offset');
    const offset = src[ip]! | (src[ip + 1]! << 8);
    ip += 2;
    if (offset === 0 || offset > op) throw new Lz4DecodeError(`LZ4 match offset ${offset} points before the start of the data`);
    let length = token & 15;
    if (length === 15) {
      let b: number;
      do {
        if (ip >= to) throw new Lz4DecodeError('LZ4 block ends inside a match length');
        b = src[ip++]!;
        length += b;
      } while (b === 255);
    }
    length += MIN_MATCH;
    if (op + length > outLimit) throw new Lz4DecodeError('LZ4 block decodes to more bytes than expected');
    let m = op - offset;
    if (offset >= length) {
      if (length < 32) {
        for (let i = 0; i < length; i++) dst[op + i] = dst[m + i]!;
      } else {
        dst.copyWithin(op, m, m + length);
      }
      op += length;
    } else {
      // Overlapping copy: repeats the last `offset` bytes, byte by byte as the format defines it.
      const end = op + length;
      while (op < end) dst[op++] = dst[m++]!;
    }
  }
}
