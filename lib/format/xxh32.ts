/**
 * xxHash32, written from the xxHash specification
 * (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md). LZ4 frames
 * use it for the header checksum, block checksums and the content checksum.
 *
 * Speed matters (every byte a compressed backup writes or restores is hashed
 * once or twice), so lanes are read with a DataView (one unaligned 32-bit
 * load, not four byte loads), state stays in int32 locals and products use
 * Math.imul; values are brought to unsigned form only at the end. `Xxh32`
 * hashes input that arrives in pieces, with the same result as one call.
 */

const PRIME32_1 = 0x9e3779b1 | 0;
const PRIME32_2 = 0x85ebca77 | 0;
const PRIME32_3 = 0xc2b2ae3d | 0;
const PRIME32_4 = 0x27d4eb2f | 0;
const PRIME32_5 = 0x165667b1 | 0;

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Accumulators of the 16-byte stripe loop. */
interface Lanes {
  v1: number;
  v2: number;
  v3: number;
  v4: number;
}

/** Consume the whole 16-byte stripes of view[at, end) into `lanes`; returns where it stopped. */
function stripes(view: DataView, at: number, end: number, lanes: Lanes): number {
  let { v1, v2, v3, v4 } = lanes;
  const last = end - 16;
  while (at <= last) {
    v1 = v1 + Math.imul(view.getInt32(at, true), PRIME32_2);
    v1 = Math.imul((v1 << 13) | (v1 >>> 19), PRIME32_1);
    v2 = v2 + Math.imul(view.getInt32(at + 4, true), PRIME32_2);
    v2 = Math.imul((v2 << 13) | (v2 >>> 19), PRIME32_1);
    v3 = v3 + Math.imul(view.getInt32(at + 8, true), PRIME32_2);
    v3 = Math.imul((v3 << 13) | (v3 >>> 19), PRIME32_1);
    v4 = v4 + Math.imul(view.getInt32(at + 12, true), PRIME32_2);
    v4 = Math.imul((v4 << 13) | (v4 >>> 19), PRIME32_1);
    at += 16;
  }
  lanes.v1 = v1;
  lanes.v2 = v2;
  lanes.v3 = v3;
  lanes.v4 = v4;
  return at;
}

function seedLanes(seed: number): Lanes {
  return { v1: (seed + PRIME32_1 + PRIME32_2) | 0, v2: (seed + PRIME32_2) | 0, v3: seed | 0, v4: (seed - PRIME32_1) | 0 };
}

function converge(lanes: Lanes): number {
  const { v1, v2, v3, v4 } = lanes;
  return (((v1 << 1) | (v1 >>> 31)) + ((v2 << 7) | (v2 >>> 25)) + ((v3 << 12) | (v3 >>> 20)) + ((v4 << 18) | (v4 >>> 14))) | 0;
}

/** The tail (under 16 bytes) and the final avalanche. */
function finish(acc: number, view: DataView, at: number, end: number): number {
  while (at + 4 <= end) {
    acc = (acc + Math.imul(view.getInt32(at, true), PRIME32_3)) | 0;
    acc = Math.imul((acc << 17) | (acc >>> 15), PRIME32_4);
    at += 4;
  }
  while (at < end) {
    acc = (acc + Math.imul(view.getUint8(at), PRIME32_5)) | 0;
    acc = Math.imul((acc << 11) | (acc >>> 21), PRIME32_1);
    at += 1;
  }
  acc ^= acc >>> 15;
  acc = Math.imul(acc, PRIME32_2);
  acc ^= acc >>> 13;
  acc = Math.imul(acc, PRIME32_3);
  acc ^= acc >>> 16;
  return acc >>> 0;
}

/** The 32-bit xxHash of `bytes` with `seed` (0 for LZ4). */
export function xxh32(bytes: Uint8Array, seed = 0): number {
  const length = bytes.length;
  const view = viewOf(bytes);
  let at = 0;
  let acc: number;
  if (length >= 16) {
    const lanes = seedLanes(seed);
    at = stripes(view, 0, length, lanes);
    acc = converge(lanes);
  } else {
    acc = (seed + PRIME32_5) | 0;
  }
  // The spec adds the length modulo 2^32.
  acc = (acc + length) | 0;
  return finish(acc, view, at, length);
}

/** xxHash32 over input fed in pieces: update() any number of times, then digest(). */
export class Xxh32 {
  private lanes: Lanes;
  /** Bytes of an incomplete stripe carried to the next update. */
  private readonly pending = new Uint8Array(16);
  private readonly pendingView = viewOf(this.pending);
  private pendingLength = 0;
  private total = 0;

  constructor(private readonly seed = 0) {
    this.lanes = seedLanes(seed);
  }

  /** Start over (same seed). */
  reset(): void {
    this.lanes = seedLanes(this.seed);
    this.pendingLength = 0;
    this.total = 0;
  }

  update(bytes: Uint8Array, from = 0, to = bytes.length): this {
    let at = from;
    this.total += to - from;
    if (this.pendingLength > 0) {
      const take = Math.min(16 - this.pendingLength, to - at);
      this.pending.set(bytes.subarray(at, at + take), this.pendingLength);
      this.pendingLength += take;
      at += take;
      if (this.pendingLength < 16) return this;
      stripes(this.pendingView, 0, 16, this.lanes);
      this.pendingLength = 0;
    }
    if (to - at >= 16) at = stripes(viewOf(bytes), at, to, this.lanes);
    if (at < to) {
      this.pending.set(bytes.subarray(at, to), 0);
      this.pendingLength = to - at;
    }
    return this;
  }

  /** The hash of everything fed since construction or reset(). */
  digest(): number {
    let acc = this.total >= 16 ? converge(this.lanes) : (this.seed + PRIME32_5) | 0;
    acc = (acc + this.total) | 0;
    return finish(acc, this.pendingView, 0, this.pendingLength);
  }
}
