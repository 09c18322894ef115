/**
 * Finding where an LZ4 frame ends without decompressing it
 * (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md).
 *
 * A compressed data frame's payload is one or more LZ4 frames back to back
 * and the sparse stream does not say how long each is (only the trailer at
 * the very end does). Lz4FrameWalker follows the frame structure as bytes
 * arrive in any slicing: magic, descriptor (checked against its xxh32 header
 * checksum), then block after block (4-byte size, data, optional block
 * checksum) up to the EndMark and the optional content checksum. It buffers
 * at most the 19 header bytes; block data is only counted.
 */
import { xxh32 } from './xxh32.js';

export const LZ4_FRAME_MAGIC = 0x184d2204;
/** The magic as it appears in the stream (little-endian). */
export const LZ4_MAGIC_BYTES: Buffer = Buffer.from([0x04, 0x22, 0x4d, 0x18]);

const LEGACY_MAGIC = 0x184c2102;
const SKIPPABLE_MASK = 0xfffffff0;
const SKIPPABLE_MAGIC = 0x184d2a50;
/** magic(4) + FLG + BD + content size(8) + dict id(4) + HC */
const MAX_HEADER_LENGTH = 19;
const BLOCK_UNCOMPRESSED_FLAG = 0x80000000;

export interface Lz4FrameDescriptor {
  blockIndependence: boolean;
  blockChecksum: boolean;
  contentChecksum: boolean;
  /** Uncompressed size, when the frame declares it. */
  contentSize: number | undefined;
  dictId: number | undefined;
  /** Largest uncompressed block size (64 KiB .. 4 MiB). */
  blockMaxSize: number;
  /** Bytes from the magic up to and including the header checksum. */
  headerLength: number;
}

/** The bytes are not a valid LZ4 frame; `offsetInFrame` is where it went wrong. */
export class Lz4FrameViolation extends Error {
  constructor(
    message: string,
    readonly offsetInFrame: number,
  ) {
    super(message);
    this.name = 'Lz4FrameViolation';
  }
}

function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

function hex32(value: number): string {
  return '0x' + value.toString(16).padStart(8, '0');
}

function checkMagic(magic: number): void {
  if (magic === LZ4_FRAME_MAGIC) return;
  let why = `bad LZ4 frame magic ${hex32(magic)}, expected ${hex32(LZ4_FRAME_MAGIC)}`;
  if (magic === LEGACY_MAGIC) why += ' (legacy LZ4 format is not supported)';
  else if ((magic & SKIPPABLE_MASK) >>> 0 === SKIPPABLE_MAGIC) why += ' (skippable frames are not supported)';
  throw new Lz4FrameViolation(why, 0);
}

/** Header length implied by the FLG byte (at offset 4), checking version and reserved bits. */
function headerLengthFor(flg: number): number {
  if (flg >> 6 !== 0b01) throw new Lz4FrameViolation(`unsupported LZ4 frame version ${flg >> 6}`, 4);
  if (flg & 0b10) throw new Lz4FrameViolation('reserved bit set in LZ4 frame FLG byte', 4);
  return 7 + (flg & 0b1000 ? 8 : 0) + (flg & 0b1 ? 4 : 0);
}

/**
 * Parse a complete LZ4 frame header (magic through header checksum) and
 * check its header checksum. `bytes` may extend past the header.
 */
export function parseLz4FrameDescriptor(bytes: Uint8Array): Lz4FrameDescriptor {
  if (bytes.length < 7) throw new Lz4FrameViolation('LZ4 frame header is incomplete', bytes.length);
  checkMagic(u32(bytes, 0));
  const flg = bytes[4]!;
  const bd = bytes[5]!;
  const headerLength = headerLengthFor(flg);
  if (bytes.length < headerLength) throw new Lz4FrameViolation('LZ4 frame header is incomplete', bytes.length);
  if (bd & 0b10001111) throw new Lz4FrameViolation('reserved bit set in LZ4 frame BD byte', 5);
  const sizeId = (bd >> 4) & 0b111;
  if (sizeId < 4) throw new Lz4FrameViolation(`invalid LZ4 block maximum size id ${sizeId}`, 5);
  let at = 6;
  let contentSize: number | undefined;
  if (flg & 0b1000) {
    const size = u32(bytes, at) + u32(bytes, at + 4) * 2 ** 32;
    if (!Number.isSafeInteger(size)) throw new Lz4FrameViolation('LZ4 content size is too large', at);
    contentSize = size;
    at += 8;
  }
  let dictId: number | undefined;
  if (flg & 0b1) {
    dictId = u32(bytes, at);
    at += 4;
  }
  const expected = (xxh32(bytes.subarray(4, at)) >>> 8) & 0xff;
  if (bytes[at] !== expected) {
    throw new Lz4FrameViolation(
      `LZ4 frame header checksum mismatch: found 0x${bytes[at]!.toString(16)}, computed 0x${expected.toString(16)}`,
      at,
    );
  }
  return {
    blockIndependence: (flg & 0b100000) !== 0,
    blockChecksum: (flg & 0b10000) !== 0,
    contentChecksum: (flg & 0b100) !== 0,
    contentSize,
    dictId,
    blockMaxSize: 1 << (8 + 2 * sizeId),
    headerLength,
  };
}

type WalkState = 'header' | 'blockSize' | 'blockBody' | 'contentChecksum' | 'done';

/**
 * Follows one LZ4 frame through bytes fed in any slicing. feed() returns how
 * many of the offered bytes belong to the frame; once `done`, the frame ended
 * exactly there and the rest of the buffer is not the walker's. Throws
 * Lz4FrameViolation on a bad magic, header checksum or block size.
 */
export class Lz4FrameWalker {
  private state: WalkState = 'header';
  private readonly scratch = Buffer.alloc(MAX_HEADER_LENGTH);
  private filled = 0;
  private needed = 4;
  /** Bytes of block data (+ checksum) or content checksum still to skip. */
  private skip = 0;
  private seen = 0;
  private blockCount = 0;
  private header: Lz4FrameDescriptor | undefined;

  /** True once the whole frame has been fed. */
  get done(): boolean {
    return this.state === 'done';
  }

  /** Bytes of this frame fed so far (its total size once done). */
  get bytesSeen(): number {
    return this.seen;
  }

  /** Data blocks seen so far (EndMark not counted). */
  get blocks(): number {
    return this.blockCount;
  }

  /** The parsed header, once it has been fed. */
  get descriptor(): Lz4FrameDescriptor | undefined {
    return this.header;
  }

  /** Feed bytes [start, end) of `bytes`; returns how many belong to this frame. */
  feed(bytes: Uint8Array, start = 0, end = bytes.length): number {
    let at = start;
    while (at < end && this.state !== 'done') {
      if (this.state === 'blockBody' || this.state === 'contentChecksum') {
        const take = Math.min(this.skip, end - at);
        this.skip -= take;
        at += take;
        this.seen += take;
        if (this.skip === 0) this.state = this.state === 'blockBody' ? 'blockSize' : 'done';
        if (this.state === 'blockSize') this.expect(4);
        continue;
      }
      const take = Math.min(this.needed - this.filled, end - at);
      this.scratch.set(bytes.subarray(at, at + take), this.filled);
      this.filled += take;
      at += take;
      this.seen += take;
      if (this.filled === this.needed) {
        if (this.state === 'header') this.onHeaderBytes();
        else this.onBlockSize();
      }
    }
    return at - start;
  }

  private expect(count: number): void {
    this.filled = 0;
    this.needed = count;
  }

  private onHeaderBytes(): void {
    // The header arrives in steps so a wrong byte is reported as soon as it is seen.
    if (this.needed === 4) {
      checkMagic(u32(this.scratch, 0));
      this.needed = 5;
      return;
    }
    if (this.needed === 5) {
      this.needed = headerLengthFor(this.scratch[4]!);
      return;
    }
    this.header = parseLz4FrameDescriptor(this.scratch.subarray(0, this.filled));
    this.state = 'blockSize';
    this.expect(4);
  }

  private onBlockSize(): void {
    const word = u32(this.scratch, 0);
    const header = this.header!;
    if (word === 0) {
      if (header.contentChecksum) {
        this.state = 'contentChecksum';
        this.skip = 4;
      } else {
        this.state = 'done';
      }
      return;
    }
    const size = (word & ~BLOCK_UNCOMPRESSED_FLAG) >>> 0;
    if (size > header.blockMaxSize) {
      throw new Lz4FrameViolation(
        `LZ4 block ${this.blockCount} is ${size} bytes, more than the frame's maximum block size ${header.blockMaxSize}`,
        this.seen - 4,
      );
    }
    this.blockCount += 1;
    this.skip = size + (header.blockChecksum ? 4 : 0);
    this.state = 'blockBody';
    if (this.skip === 0) {
      this.state = 'blockSize';
      this.expect(4);
    }
  }
}
