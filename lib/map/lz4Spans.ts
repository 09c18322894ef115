/**
 * Decoding one LZ4 piece (an LZ4 frame of up to 32 MiB of disk) a span at
 * a time: a span is a run of whole blocks of about SPAN bytes of output
 * (one block when blocks are larger), so a read of 256 KiB decodes and
 * holds ~1 MiB, not the whole piece (which, cached per connection, cost
 * hundreds of MB of RSS). Span boundaries are learnt as spans are decoded
 * (marks: where each starts in the file and in the output), always in
 * order from the piece's start.
 *
 * Independent blocks (our writer's) decode from any known mark. Linked
 * blocks (python-lz4's) need the 64 KiB of output before a span: they go
 * through the frontier, a cursor that decodes span after span keeping that
 * history (a sequential reader just moves it along; reading an earlier
 * span restarts it from the piece's start). A content checksum without
 * block checksums is only verifiable front to back, so such pieces go
 * through the frontier too, which hashes what it decodes from the start.
 *
 * Checked as decodeLz4Frame does, per span: block sizes, block checksums,
 * every match; at the end mark: trailing bytes, the declared content size,
 * the content checksum (frontier) and the piece's expected length.
 */
import type { Lz4FrameDescriptor } from '../format/lz4Frame.js';
import { parseLz4FrameDescriptor } from '../format/lz4Frame.js';
import { Xxh32, xxh32 } from '../format/xxh32.js';
import { decodeLz4Block } from '../lz4/blockDecoder.js';
import { Lz4DecodeError } from '../lz4/errors.js';
import { giveScratch, takeScratch } from './lz4Scratch.js';

/** Output bytes a span aims at. */
export const SPAN = 1024 * 1024;
const HISTORY = 64 * 1024;
/** Most output one span holds: whole blocks up to SPAN, or one block. */
const SPAN_MAX = (d: Lz4FrameDescriptor): number => Math.max(SPAN, d.blockMaxSize);
const UNCOMPRESSED = 0x80000000;

/** Where a span starts: `at` in the file, `out` in the piece's output. */
interface Mark {
  at: number;
  out: number;
}

interface SpanResult {
  length: number;
  /** Where the next span starts; undefined after the last one. */
  next?: Mark;
  /** The content checksum the frame stores, read at its end. */
  storedChecksum?: number;
}

/** Reads `buf.length` bytes at `position` of the piece's file (throws if it ends first). */
export type ReadAt = (buf: Buffer, position: number) => Promise<void>;

export class Lz4Spans {
  private descriptor?: Lz4FrameDescriptor;
  /** Start of every span learnt so far; the last one's end is unknown until decoded. */
  readonly marks: Mark[] = [];
  /** Output length once the end mark was reached. */
  total?: number;
  /** Frontier: next span to decode in order, the output before it, the hash so far. */
  private front = 0;
  private history?: Buffer;
  private historyLength = 0;
  private hash?: Xxh32;
  private lock: Promise<unknown> = Promise.resolve();

  constructor(
    readonly readAt: ReadAt,
    /** The LZ4 frame: file position and size. */
    readonly position: number,
    readonly size: number,
    /** Most output the piece may hold (its length when known). */
    readonly limit: number,
  ) {}

  /** The frame's header, parsed. */
  frameDescriptor(): Promise<Lz4FrameDescriptor> {
    return this.header();
  }

  /** Bytes a span's buffer must hold (a small piece's spans are small). */
  async capacity(): Promise<number> {
    return Math.max(1, Math.min(this.limit, SPAN_MAX(await this.header())));
  }

  /** Index of the span holding output byte `x` among the marks known (the last one when beyond). */
  spanOf(x: number): number {
    let lo = 0;
    let hi = this.marks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.marks[mid]!.out <= x) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Decode span `k` (k <= marks known) into `target` (capacity() bytes); returns its length. */
  async decode(k: number, target: Buffer): Promise<number> {
    const d = await this.header();
    // A content checksum without block checksums covers the output from the start: until it was checked once, the frontier hashes.
    if (d.blockIndependence && (this.total !== undefined || !(d.contentChecksum && !d.blockChecksum))) {
      const r = await this.run(this.marks[k]!, target, 0);
      this.learn(k, r);
      return r.length;
    }
    // One frontier per piece: its users take turns.
    const turn = this.lock.then(() => this.viaFrontier(k, target));
    this.lock = turn.catch(() => undefined);
    return turn;
  }

  private async viaFrontier(k: number, target: Buffer): Promise<number> {
    const d = await this.header();
    const cap = await this.capacity();
    if (this.front > k) this.restart();
    const work = takeScratch(HISTORY + cap);
    try {
      for (;;) {
        // [history | output]: linked matches reach back into the history.
        const base = HISTORY - this.historyLength;
        if (this.historyLength > 0) this.history!.copy(work, base, 0, this.historyLength);
        const dst = work.subarray(base, HISTORY + cap);
        const r = await this.run(this.marks[this.front]!, dst, this.historyLength);
        const out = work.subarray(HISTORY, HISTORY + r.length);
        this.hash?.update(out);
        if (r.storedChecksum !== undefined && this.hash && !d.blockChecksum && (this.hash.digest() >>> 0) !== r.storedChecksum) {
          throw new Lz4DecodeError('LZ4 content checksum mismatch');
        }
        this.keepHistory(work, base, HISTORY + r.length);
        this.learn(this.front, r);
        const done = this.front === k;
        this.front++;
        if (done) {
          out.copy(target, 0);
          return r.length;
        }
      }
    } catch (err) {
      this.restart();
      throw err;
    } finally {
      giveScratch(work);
    }
  }

  /** Whether the frontier holds a history buffer (mid-piece, linked blocks). */
  get holdsHistory(): boolean {
    return this.history !== undefined;
  }

  /** Let go of the frontier's history (it restarts from the piece's start when needed again). */
  dropHistory(): void {
    this.lock = this.lock.then(() => {
      this.restart();
      this.history = undefined;
    });
  }

  private restart(): void {
    this.front = 0;
    this.historyLength = 0;
    this.hash = this.descriptor!.contentChecksum && !this.descriptor!.blockChecksum ? new Xxh32() : undefined;
  }

  private keepHistory(work: Buffer, from: number, to: number): void {
    const n = Math.min(HISTORY, to - from);
    this.history ??= Buffer.allocUnsafe(HISTORY);
    work.copy(this.history, 0, to - n, to);
    this.historyLength = n;
  }

  private learn(k: number, r: SpanResult): void {
    if (k !== this.marks.length - 1) return;
    if (r.next) this.marks.push(r.next);
    else this.total = this.marks[k]!.out + r.length;
  }

  private async header(): Promise<Lz4FrameDescriptor> {
    if (!this.descriptor) {
      const head = Buffer.alloc(Math.min(19, this.size));
      await this.readAt(head, this.position);
      let d: Lz4FrameDescriptor;
      try {
        d = parseLz4FrameDescriptor(head);
      } catch (err) {
        throw new Lz4DecodeError((err as Error).message);
      }
      if (d.dictId !== undefined) throw new Lz4DecodeError('LZ4 frames with a dictionary are not supported');
      this.descriptor = d;
      this.marks.push({ at: this.position + d.headerLength, out: 0 });
      this.restart();
    }
    return this.descriptor;
  }

  /**
   * Decode the blocks of the span at `mark` into dst from `out0` (dst
   * before it holds the history): blocks while the span's output stays
   * within its capacity and the block lies in the bytes read.
   */
  private async run(mark: Mark, dst: Buffer, out0: number): Promise<SpanResult> {
    const d = this.descriptor!;
    const cap = SPAN_MAX(d);
    const end = this.position + this.size;
    const cs = d.blockChecksum ? 4 : 0;
    // A span's blocks as far as they fit, and at least one whole block with its end mark.
    const window = Math.max(cap, d.blockMaxSize + 4 + cs + 8);
    const want = Math.min(end - mark.at, window);
    // The whole window past SPAN: a piece's last window has a size of its own, and exact sizes would never be reused.
    const input = takeScratch(want <= SPAN ? want : window);
    try {
      await this.readAt(input.subarray(0, want), mark.at);
      let ip = 0;
      let op = out0;
      for (;;) {
        const spanOut = op - out0;
        if (ip + 4 > want) {
          if (mark.at + ip + 4 > end) throw new Lz4DecodeError('LZ4 frame ends before its end mark');
          return { length: spanOut, next: { at: mark.at + ip, out: mark.out + spanOut } };
        }
        const word = input.readUInt32LE(ip);
        if (word === 0) return this.finish(mark, spanOut, mark.at + ip + 4, input, ip + 4, want);
        const size = (word & ~UNCOMPRESSED) >>> 0;
        if (size > d.blockMaxSize) throw new Lz4DecodeError(`LZ4 block of ${size} bytes exceeds the maximum block size ${d.blockMaxSize}`);
        const from = ip + 4;
        const to = from + size;
        if (mark.at + to + cs > end) throw new Lz4DecodeError('LZ4 frame ends inside a block');
        if ((spanOut > 0 && spanOut + d.blockMaxSize > cap) || to + cs > want) {
          return { length: spanOut, next: { at: mark.at + ip, out: mark.out + spanOut } };
        }
        if (d.blockChecksum && xxh32(input.subarray(from, to)) !== input.readUInt32LE(to)) {
          throw new Lz4DecodeError(`LZ4 block checksum mismatch in the block at byte ${mark.at + ip - this.position} of the frame`);
        }
        const limit = Math.min(dst.length, op + d.blockMaxSize, out0 + this.limit - mark.out);
        if (word & UNCOMPRESSED) {
          if (op + size > limit) throw new Lz4DecodeError('LZ4 frame decodes to more bytes than expected');
          input.copy(dst, op, from, to);
          op += size;
        } else {
          op = decodeLz4Block(input, from, to, dst, op, limit);
        }
        ip = to + cs;
      }
    } finally {
      giveScratch(input);
    }
  }

  /** The end mark at `endAt` (file): check what follows it and the totals. */
  private async finish(mark: Mark, spanOut: number, endAt: number, input: Buffer, ip: number, have: number): Promise<SpanResult> {
    const d = this.descriptor!;
    const end = this.position + this.size;
    let storedChecksum: number | undefined;
    let after = endAt;
    if (d.contentChecksum) {
      if (after + 4 > end) throw new Lz4DecodeError('LZ4 frame ends inside its content checksum');
      const bytes = ip + 4 <= have ? input.subarray(ip, ip + 4) : Buffer.alloc(4);
      if (ip + 4 > have) await this.readAt(bytes, after);
      storedChecksum = bytes.readUInt32LE(0);
      after += 4;
    }
    if (after !== end) throw new Lz4DecodeError(`${end - after} bytes follow the LZ4 frame`);
    const total = mark.out + spanOut;
    if (d.contentSize !== undefined && d.contentSize !== total) throw new Lz4DecodeError(`LZ4 frame declares ${d.contentSize} bytes of content, holds ${total}`);
    return { length: spanOut, storedChecksum };
  }
}
