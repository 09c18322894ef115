/**
 * Lz4FrameStream: one LZ4 frame decoded as its bytes arrive, in parts of any
 * size, into pieces of about `pieceSize` decoded bytes, so no stage ever
 * holds a whole frame (a compressed backup's frames hold up to 32 MiB; a
 * restore that decoded them whole peaked at 800 MB).
 *
 * Each piece is a view of a buffer of its own, lent (BufferLoans): hand it
 * back with release() once written and a later piece reuses it. One
 * decoder serves frame after frame (begin()), reusing its buffers. Blocks are
 * decoded one after the other into the current buffer; a new buffer starts
 * with the last 64 KiB of the previous one, where matches of linked blocks
 * (python-lz4's default) may reach. A block record split across parts is
 * gathered first (at most one block: 4 MiB).
 *
 * Checked as Lz4FrameDecoder does: block sizes, block checksums (before the
 * block is decoded), matches against the buffer's bounds, and at the end the
 * declared content size and the content checksum. Those two can only be
 * checked once every piece was handed out: a caller that must not use
 * unchecked bytes waits for finish(); a restore need not, since a failed
 * frame fails the restore and its image is discarded.
 */
import type { Lz4FrameDescriptor } from '../format/lz4Frame.js';
import { Xxh32 } from '../format/xxh32.js';
import { BufferLender, type BufferLoans } from '../bufferLender.js';
import { decodeLz4Block } from './blockDecoder.js';
import { checkLz4BlockChecksum, readLz4FrameHeader } from './frameDecoder.js';
import { Lz4ChecksumError, Lz4DecodeError } from './errors.js';

/** How far back a match may reach. */
const HISTORY = 64 * 1024;
/** The largest block the format allows. */
const MAX_BLOCK = 4 * 1024 * 1024;
const UNCOMPRESSED = 0x80000000;
/** Magic, FLG, BD: enough to know the header's length. */
const HEADER_PREFIX = 6;

type State = 'header' | 'size' | 'record' | 'checksum' | 'done';

function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

function hex(value: number): string {
  return '0x' + value.toString(16).padStart(8, '0');
}

export class Lz4FrameStream implements BufferLoans {
  private readonly lender: BufferLender;
  private state: State = 'done';
  private descriptor: Lz4FrameDescriptor | undefined;
  /** Bytes of the frame consumed so far (error messages name frame bytes). */
  private position = 0;
  /** A header, size word, block record or checksum being gathered across parts. */
  private gather = Buffer.allocUnsafe(64);
  private gathered = 0;
  /** Bytes the item being gathered needs. */
  private need = HEADER_PREFIX;
  private out: Buffer | undefined;
  /** Decoded bytes end here in `out`; the next piece starts at `pieceStart`. */
  private op = 0;
  private pieceStart = 0;
  private decodedTotal = 0;
  private readonly hash = new Xxh32();

  constructor(private readonly pieceSize = 1024 * 1024) {
    this.lender = new BufferLender(HISTORY + pieceSize + MAX_BLOCK, 16);
  }

  /** Start decoding a new frame (after the previous one's finish()). */
  begin(): void {
    this.state = 'header';
    this.descriptor = undefined;
    this.position = 0;
    this.gathered = 0;
    this.need = HEADER_PREFIX;
    this.decodedTotal = 0;
    this.hash.reset();
    this.out = undefined;
    this.op = this.pieceStart = 0;
  }

  /** Decoded bytes so far. */
  get decoded(): number {
    return this.decodedTotal;
  }

  /** The frame's end mark (and content checksum) were read. */
  get done(): boolean {
    return this.state === 'done';
  }

  retain(view: Uint8Array): void {
    this.lender.retain(view);
  }

  release(view: Uint8Array): void {
    this.lender.release(view);
  }

  /** Feed the frame's next bytes; returns the pieces they completed (maybe none). */
  push(bytes: Uint8Array): Buffer[] {
    const pieces: Buffer[] = [];
    let at = 0;
    while (at < bytes.length) {
      if (this.state === 'done') throw new Lz4DecodeError(`${bytes.length - at} bytes follow the end of the LZ4 frame`, this.position);
      if (this.gathered === 0 && this.state !== 'header' && bytes.length - at >= this.need) {
        // The whole item is in this part: use it where it is.
        const used = this.item(bytes, at, pieces);
        at += used;
        this.position += used;
        continue;
      }
      // Gather the item across parts (headers always: they are tiny and their length comes in their 5th byte).
      const take = Math.min(this.need - this.gathered, bytes.length - at);
      if (this.gather.length < this.need) this.growGather();
      this.gather.set(bytes.subarray(at, at + take), this.gathered);
      this.gathered += take;
      at += take;
      if (this.gathered < this.need) break;
      const have = this.gathered;
      this.gathered = 0;
      const used = this.item(this.gather, 0, pieces);
      this.position += used;
      // A size word is the start of its block record, a header prefix the start of its header: keep them.
      if (used < have) this.gathered = have - used;
    }
    return pieces;
  }

  /** After the last part: the last piece. Throws when the frame is not complete. */
  finish(): Buffer[] {
    if (this.state !== 'done') throw new Lz4DecodeError('LZ4 frame ends before its end mark', this.position);
    return this.takePiece(true);
  }

  /**
   * Handle the item src[at, at + need): returns the bytes it used; fewer
   * when it turned out to be the start of a longer item (`need` grew).
   */
  private item(src: Uint8Array, at: number, pieces: Buffer[]): number {
    const start = this.position;
    switch (this.state) {
      case 'header': {
        const length = 7 + (src[at + 4]! & 0x08 ? 8 : 0) + (src[at + 4]! & 0x01 ? 4 : 0);
        if (this.need < length) {
          this.need = length;
          return 0;
        }
        this.descriptor = readLz4FrameHeader(src, at, at + length);
        this.expect('size', 4);
        return length;
      }
      case 'size': {
        const word = u32(src, at);
        if (word === 0) {
          if (this.descriptor!.contentChecksum) this.expect('checksum', 4);
          else this.end(undefined, start);
          return 4;
        }
        const size = (word & ~UNCOMPRESSED) >>> 0;
        if (size > this.descriptor!.blockMaxSize) {
          throw new Lz4DecodeError(`LZ4 block of ${size} bytes exceeds the frame's maximum block size ${this.descriptor!.blockMaxSize}`, start);
        }
        // The record: the size word again (decoding reads it), body, checksum.
        this.expect('record', 4 + size + (this.descriptor!.blockChecksum ? 4 : 0));
        return 0;
      }
      case 'record': {
        const used = this.need;
        this.block(src, at, start);
        this.expect('size', 4);
        if (this.op - this.pieceStart >= this.pieceSize) pieces.push(...this.takePiece(false));
        return used;
      }
      case 'checksum':
        this.end(u32(src, at), start);
        return 4;
      case 'done':
        return 0;
    }
  }

  /** Room for the item being gathered (a block record at most: 4 MiB and 8 bytes), keeping what is there. */
  private growGather(): void {
    const bigger = Buffer.allocUnsafe(Math.max(this.need, Math.min(MAX_BLOCK + 8, this.gather.length * 4)));
    this.gather.copy(bigger, 0, 0, this.gathered);
    this.gather = bigger;
  }

  private expect(state: State, need: number): void {
    this.state = state;
    this.need = need;
  }

  /** Check and decode the block record src[at, at + need), which starts at frame byte `where`. */
  private block(src: Uint8Array, at: number, where: number): void {
    const descriptor = this.descriptor!;
    const word = u32(src, at);
    const body = at + 4;
    const end = body + ((word & ~UNCOMPRESSED) >>> 0);
    if (descriptor.blockChecksum) checkLz4BlockChecksum(src, body, end, where);
    const out = (this.out ??= this.lender.lend());
    const from = this.op;
    const limit = Math.min(out.length, from + descriptor.blockMaxSize);
    try {
      if (word & UNCOMPRESSED) {
        if (from + (end - body) > limit) throw new Lz4DecodeError('LZ4 block holds more than the maximum block size');
        out.set(src.subarray(body, end), from);
        this.op = from + (end - body);
      } else {
        this.op = decodeLz4Block(src, body, end, out, from, limit);
      }
    } catch (err) {
      if (err instanceof Lz4DecodeError && err.offsetInFrame === undefined) {
        throw new Lz4DecodeError(`${err.message} (block at byte ${where} of the LZ4 frame)`, where);
      }
      throw err;
    }
    if (descriptor.contentChecksum) this.hash.update(out, from, this.op);
    this.decodedTotal += this.op - from;
  }

  /** The decoded bytes not handed out yet, as a piece; the next buffer starts with the history. */
  private takePiece(last: boolean): Buffer[] {
    const out = this.out;
    if (!out || this.op === this.pieceStart) return [];
    const piece = out.subarray(this.pieceStart, this.op);
    if (last) {
      this.out = undefined;
      return [piece];
    }
    const next = this.lender.lend();
    const history = Math.min(HISTORY, this.op);
    out.copy(next, 0, this.op - history, this.op);
    this.out = next;
    this.op = this.pieceStart = history;
    return [piece];
  }

  private end(contentChecksum: number | undefined, where: number): void {
    const descriptor = this.descriptor!;
    if (descriptor.contentSize !== undefined && descriptor.contentSize !== this.decodedTotal) {
      throw new Lz4DecodeError(`LZ4 frame declares ${descriptor.contentSize} bytes of content, holds ${this.decodedTotal}`, where);
    }
    if (contentChecksum !== undefined) {
      const computed = this.hash.digest();
      if (computed !== contentChecksum) {
        throw new Lz4ChecksumError('content', `LZ4 content checksum mismatch at byte ${where} of the LZ4 frame (stored ${hex(contentChecksum)}, computed ${hex(computed)})`, where);
      }
    }
    this.state = 'done';
  }
}
