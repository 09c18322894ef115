/**
 * xxHash32, written from the xxHash specification
 * (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md). LZ4 frames
 * use it for the header checksum (and for block and content checksums, which
 * lz4-napi verifies natively). All arithmetic is unsigned 32-bit: Math.imul
 * for products, `>>> 0` to bring sums back into range.
 */

const PRIME32_1 = 0x9e3779b1;
const PRIME32_2 = 0x85ebca77;
const PRIME32_3 = 0xc2b2ae3d;
const PRIME32_4 = 0x27d4eb2f;
const PRIME32_5 = 0x165667b1;

function rotl(value: number, bits: number): number {
  return ((value << bits) | (value >>> (32 - bits))) >>> 0;
}

function round(acc: number, lane: number): number {
  return Math.imul(rotl((acc + Math.imul(lane, PRIME32_2)) >>> 0, 13), PRIME32_1) >>> 0;
}

function readU32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

/** The 32-bit xxHash of `bytes` with `seed` (0 for LZ4). */
export function xxh32(bytes: Uint8Array, seed = 0): number {
  const length = bytes.length;
  let at = 0;
  let acc: number;
  if (length >= 16) {
    let v1 = (seed + PRIME32_1 + PRIME32_2) >>> 0;
    let v2 = (seed + PRIME32_2) >>> 0;
    let v3 = seed >>> 0;
    let v4 = (seed - PRIME32_1) >>> 0;
    const stripesEnd = length - (length % 16);
    while (at < stripesEnd) {
      v1 = round(v1, readU32(bytes, at));
      v2 = round(v2, readU32(bytes, at + 4));
      v3 = round(v3, readU32(bytes, at + 8));
      v4 = round(v4, readU32(bytes, at + 12));
      at += 16;
    }
    acc = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) >>> 0;
  } else {
    acc = (seed + PRIME32_5) >>> 0;
  }
  // The spec adds the length modulo 2^32.
  acc = (acc + (length >>> 0)) >>> 0;
  while (at + 4 <= length) {
    acc = Math.imul(rotl((acc + Math.imul(readU32(bytes, at), PRIME32_3)) >>> 0, 17), PRIME32_4) >>> 0;
    at += 4;
  }
  while (at < length) {
    acc = Math.imul(rotl((acc + Math.imul(bytes[at]!, PRIME32_5)) >>> 0, 11), PRIME32_1) >>> 0;
    at += 1;
  }
  acc ^= acc >>> 15;
  acc = Math.imul(acc, PRIME32_2) >>> 0;
  acc ^= acc >>> 13;
  acc = Math.imul(acc, PRIME32_3) >>> 0;
  acc ^= acc >>> 16;
  return acc >>> 0;
}
