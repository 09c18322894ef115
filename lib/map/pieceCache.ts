/**
 * A small bounded cache of decompressed LZ4 pieces, least recently used
 * first out. A compressed data frame is stored as LZ4 frames of up to
 * 32 MiB of disk each, and a client reads it in much smaller requests
 * (a VM: 4 KiB to 1 MiB; nbdcopy: 256 KiB), so without a cache every
 * request would decompress a whole piece again.
 *
 * Pieces live in buffers from a BufferPool, reused once evicted. A reader
 * holds a lease on a piece while it copies from it, so a leased piece is
 * never evicted (or its buffer reused) under it; leases last for one copy.
 * Bounds: `maxBytes` of piece buffers (default 128 MiB: four 32 MiB
 * pieces, one per connection of a 4-connection nbdcopy) and `maxEntries`
 * pieces (default 256: the many small frames of a fragmented disk),
 * exceeded only by pieces leased at that moment. Concurrent requests for
 * one piece share one fill, and at most `parallel` fills run at once
 * (default 2), which bounds their scratch memory too.
 */
import { BufferPool } from './bufferPool.js';

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
    this.maxBytes = options.maxBytes ?? 128 * 1024 * 1024;
    this.maxEntries = options.maxEntries ?? 256;
    this.parallel = options.parallel ?? 2;
    for (const [name, value] of [['maxBytes', this.maxBytes], ['maxEntries', this.maxEntries], ['parallel', this.parallel]] as const) {
      if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`PieceCache ${name} must be a positive integer, got ${value}`);
    }
    this.pool = new BufferPool(Math.ceil(this.maxBytes / 2));
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
      const buffer = this.pool.take(capacity);
      const created: Entry = { key, buffer, length: 0, pins: 0, ready: Promise.resolve(), cached: true };
      created.ready = this.limited(() => fill(buffer)).then(
        (length) => {
          created.length = length;
        },
        (err: unknown) => {
          this.drop(created);
          throw err;
        },
      );
      this.entries.set(key, created);
      this.held += buffer.length;
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
    if (entry.pins === 0 && !entry.cached) this.pool.give(entry.buffer);
  }

  /** Take an entry out of the cache; its buffer goes back to the pool once nobody holds it. */
  private drop(entry: Entry): void {
    if (!entry.cached) return;
    entry.cached = false;
    this.entries.delete(entry.key);
    this.held -= entry.buffer.length;
    if (entry.pins === 0) this.pool.give(entry.buffer);
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

  private async limited<T>(work: () => Promise<T>): Promise<T> {
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
