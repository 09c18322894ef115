/**
 * Lz4FrameStream: one LZ4 frame decoded as its bytes arrive, in parts of any
 * size, into pieces of about `pieceSize` decoded bytes, so no stage ever
 * holds a whole frame (a compressed backup's frames hold up to 32 MiB; a
 * restore that decoded them whole peaked at 800 MB).
 *
 * Pieces are views of lent buffers (BufferLoans), at most `pieceSize`
 * bytes each: hand each back with release() once written; a buffer is
 * reused once every piece of it came back. Blocks are decoded one after
 * the other into the current buffer, and the small frames of a fragmented
 * disk one after the other too, so memory follows the bytes in flight, not
 * the count of pieces (a buffer per frame cost ~200 MB with 4 MiB blocks).
 * A new buffer starts with the last 64 KiB of the frame so far, where
 * matches of linked blocks (python-lz4's default) may reach. A block record
 * split across parts is gathered first (at most one block: 4 MiB).
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
  private state: State = 'done';
  private descriptor: Lz4FrameDescriptor | undefined;
  /** Bytes of the frame consumed so far (error messages name frame bytes). */
  private position = 0;
  /** A header, size word, block record or checksum being gathered across parts. */
  private gather = Buffer.allocUnsafe(64);
  private gathered = 0;
  /** Bytes the item being gathered needs. */
  private need = HEADER_PREFIX;
  /** The buffer being decoded into; the decoder holds it until it moves on to another. */
  private out: Buffer | undefined;
  /** Decoded bytes end here in `out`; the next piece starts at `pieceStart`; this frame's bytes at `frameStart`. */
  private op = 0;
  private pieceStart = 0;
  private frameStart = 0;
  private decodedTotal = 0;
  private readonly hash = new Xxh32();

  /** Buffers of two sizes: for blocks up to a piece, and for larger ones (up to 4 MiB). */
  private readonly lenders: BufferLender[];

  constructor(private readonly pieceSize = 1024 * 1024) {
    // A buffer holds the history, less than a piece not handed out yet, and the block being decoded.
    // Spares enough for a restore's pieces in flight (8 writes and the queues): fewer made garbage that malloc keeps.
    this.lenders = [new BufferLender(HISTORY + 2 * pieceSize, 12), new BufferLender(HISTORY + pieceSize + Math.max(pieceSize, MAX_BLOCK), 4)];
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
    // The frame goes on in the current buffer, after the last one's bytes.
    this.pieceStart = this.frameStart = this.op;
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
    for (const lender of this.lenders) lender.retain(view);
  }

  release(view: Uint8Array): void {
    for (const lender of this.lenders) lender.release(view);
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
    const pieces: Buffer[] = [];
    this.handOut(pieces, true);
    return pieces;
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
        this.block(src, at, start, pieces);
        this.expect('size', 4);
        this.handOut(pieces, false);
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

  /** Check and decode the block record src[at, at + need), which starts at frame byte `where`; a full buffer's pieces go to `pieces`. */
  private block(src: Uint8Array, at: number, where: number, pieces: Buffer[]): void {
    const descriptor = this.descriptor!;
    const word = u32(src, at);
    const body = at + 4;
    const end = body + ((word & ~UNCOMPRESSED) >>> 0);
    if (descriptor.blockChecksum) checkLz4BlockChecksum(src, body, end, where);
    if (!this.out || this.out.length - this.op < descriptor.blockMaxSize) this.nextBuffer(descriptor, pieces);
    const out = this.out!;
    const from = this.op;
    const limit = from + descriptor.blockMaxSize;
    try {
      if (word & UNCOMPRESSED) {
        if (from + (end - body) > limit) throw new Lz4DecodeError('LZ4 block holds more than the maximum block size');
        out.set(src.subarray(body, end), from);
        this.op = from + (end - body);
      } else {
        // Matches may reach back to the frame's start (linked blocks) or the block's (independent ones), never into another frame.
        const base = descriptor.blockIndependence ? from : this.frameStart;
        this.op = base + decodeLz4Block(src, body, end, out.subarray(base, limit), from - base, limit - base);
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

  /** Hand out the decoded bytes as pieces of `pieceSize` (all of them when `all`, else a shorter rest waits for more). */
  private handOut(pieces: Buffer[], all: boolean): void {
    const out = this.out;
    if (!out) return;
    while (this.op - this.pieceStart >= this.pieceSize || (all && this.op > this.pieceStart)) {
      const end = Math.min(this.op, this.pieceStart + this.pieceSize);
      pieces.push(out.subarray(this.pieceStart, end));
      this.retain(out);
      this.pieceStart = end;
    }
  }

  /** Move on to a buffer with room for a block: the old one's rest goes out as pieces, the frame's last 64 KiB come along. */
  private nextBuffer(descriptor: Lz4FrameDescriptor, pieces: Buffer[]): void {
    this.handOut(pieces, true);
    const lender = this.lenders[descriptor.blockMaxSize <= this.pieceSize ? 0 : 1]!;
    const next = lender.lend();
    const old = this.out;
    const history = old && !descriptor.blockIndependence ? Math.min(HISTORY, this.op - this.frameStart) : 0;
    if (old) {
      old.copy(next, 0, this.op - history, this.op);
      this.release(old);
    }
    this.out = next;
    this.op = this.pieceStart = history;
    this.frameStart = 0;
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
