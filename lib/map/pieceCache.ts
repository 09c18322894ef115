/**
 * A small bounded cache of decompressed LZ4 spans (about 1 MiB runs of
 * a piece's blocks, lz4Spans.ts), least recently used first out. A
 * client reads in requests smaller than a span (a VM: 4 KiB to 1 MiB;
 * nbdcopy: 256 KiB), so without a cache every request would decompress
 * its span again.
 *
 * Spans live in buffers from a BufferPool, reused once evicted. A reader
 * holds a lease on a span while it copies from it, so a leased span is
 * never evicted (or its buffer reused) under it; leases last for one copy.
 * Bounds: `maxBytes` of span buffers and idle ones together (default
 * 8 MiB: two 1 MiB spans per connection of a 4-connection nbdcopy; whole
 * 32 MiB pieces cost ~400 MB of RSS) and `maxEntries` spans (default
 * 256: the many small frames of a fragmented disk), exceeded only by
 * spans leased or being filled at that moment. Concurrent requests for
 * one span share one fill, and at most `parallel` fills run at once
 * (default 1: decoding runs on the one JavaScript thread anyway, and each
 * running fill holds its scratch windows, up to 8 MiB for 4 MiB blocks).
 */
import { BufferPool, sizeClass } from './bufferPool.js';

export interface PieceCacheOptions {
  maxBytes?: number;
  maxEntries?: number;
  parallel?: number;
}

export interface PieceCacheStats {
  hits: number;
  misses: number;
  evictions: number;
  /** Bytes of piece buffers held now. */
  bytes: number;
  entries: number;
}

/** A piece, pinned in the cache until release(). */
export interface PieceLease {
  readonly data: Buffer;
  release(): void;
}

/** The buffer of an entry whose fill has not started. */
const EMPTY = Buffer.alloc(0);

interface Entry {
  key: string;
  buffer: Buffer;
  length: number;
  pins: number;
  ready: Promise<void>;
  /** Still in the map (false once evicted or failed). */
  cached: boolean;
}

export class PieceCache {
  readonly maxBytes: number;
  readonly maxEntries: number;
  readonly parallel: number;
  /** Buffers for pieces and for the fills' scratch space. */
  readonly pool: BufferPool;
  /** Insertion order is recency order: a hit moves the entry to the end. */
  private readonly entries = new Map<string, Entry>();
  private readonly waiting: (() => void)[] = [];
  private running = 0;
  private held = 0;
  private readonly counts = { hits: 0, misses: 0, evictions: 0 };

  constructor(options: PieceCacheOptions = {}) {
    this.maxBytes = options.maxBytes ?? 8 * 1024 * 1024;
    this.maxEntries = options.maxEntries ?? 256;
    this.parallel = options.parallel ?? 1;
    for (const [name, value] of [['maxBytes', this.maxBytes], ['maxEntries', this.maxEntries], ['parallel', this.parallel]] as const) {
      if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`PieceCache ${name} must be a positive integer, got ${value}`);
    }
    // obtain() counts idle buffers in the budget too.
    this.pool = new BufferPool(this.maxBytes);
  }

  /**
   * The piece under `key`, leased. On a miss, `fill` writes it into a
   * buffer of at least `capacity` bytes and returns its length; a failed
   * fill is not cached (the next acquire tries again).
   */
  async acquire(key: string, capacity: number, fill: (target: Buffer) => Promise<number>): Promise<PieceLease> {
    let entry = this.entries.get(key);
    if (entry) {
      this.counts.hits++;
      this.entries.delete(key);
      this.entries.set(key, entry);
    } else {
      this.counts.misses++;
      const created: Entry = { key, buffer: EMPTY, length: 0, pins: 0, ready: Promise.resolve(), cached: true };
      // The buffer is taken when the fill starts, not while it queues: dozens of queued misses each holding a span's buffer broke the bound.
      const start = (): Promise<number> => {
        created.buffer = this.obtain(capacity);
        if (created.cached) this.held += created.buffer.length;
        return fill(created.buffer);
      };
      created.ready = this.limited(start).then(
        (length) => {
          created.length = length;
        },
        (err: unknown) => {
          this.drop(created);
          throw err;
        },
      );
      this.entries.set(key, created);
      entry = created;
    }
    const pinned = entry;
    pinned.pins++;
    try {
      await pinned.ready;
    } catch (err) {
      this.unpin(pinned);
      throw err;
    }
    this.evict();
    let released = false;
    return {
      data: pinned.buffer.subarray(0, pinned.length),
      release: () => {
        if (released) return;
        released = true;
        this.unpin(pinned);
        this.evict();
      },
    };
  }

  stats(): PieceCacheStats {
    return { ...this.counts, bytes: this.held, entries: this.entries.size };
  }

  /** Drop every piece not leased now, and the idle buffers. */
  clear(): void {
    for (const entry of [...this.entries.values()]) if (entry.pins === 0) this.drop(entry);
    this.pool.clear();
  }

  private unpin(entry: Entry): void {
    entry.pins--;
    if (entry.pins === 0 && !entry.cached && entry.buffer !== EMPTY) this.pool.give(entry.buffer);
  }

  /** Take an entry out of the cache; its buffer goes back to the pool once nobody holds it. */
  private drop(entry: Entry): void {
    if (!entry.cached) return;
    entry.cached = false;
    this.entries.delete(entry.key);
    this.held -= entry.buffer.length;
    if (entry.pins === 0 && entry.buffer !== EMPTY) this.pool.give(entry.buffer);
  }

  /**
   * A buffer for a new piece, within `maxBytes` of pieces and idle buffers
   * together: an idle one (a larger one will do), else a fresh one if it
   * fits, else evict and retry. Every buffer dropped or allocated anew is
   * garbage V8 collects late (external memory), which is what RSS showed.
   */
  private obtain(capacity: number): Buffer {
    for (;;) {
      const idle = this.pool.takeIdle(capacity);
      if (idle) return idle;
      if (this.held + this.pool.idleBytes + sizeClass(capacity) <= this.maxBytes) break;
      if (this.evictOne()) continue;
      // Only smaller buffers idle (nothing is evictable): give them up for the one needed.
      if (!this.pool.dropSmallest()) break;
    }
    return this.pool.take(capacity);
  }

  /** Evict the least recently used piece not leased; false if there is none. */
  private evictOne(): boolean {
    for (const entry of this.entries.values()) {
      if (entry.pins > 0) continue;
      this.drop(entry);
      this.counts.evictions++;
      return true;
    }
    return false;
  }

  private evict(): void {
    for (const entry of this.entries.values()) {
      if (this.held <= this.maxBytes && this.entries.size <= this.maxEntries) return;
      // Leased pieces and pieces being filled stay.
      if (entry.pins > 0) continue;
      this.drop(entry);
      this.counts.evictions++;
    }
  }

  /** Run `work` as one of the at most `parallel` fills (other decoding work shares the bound: it holds scratch memory too). */
  async limited<T>(work: () => Promise<T>): Promise<T> {
    while (this.running >= this.parallel) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.running++;
    try {
      return await work();
    } finally {
      this.running--;
      this.waiting.shift()?.();
    }
  }
}
