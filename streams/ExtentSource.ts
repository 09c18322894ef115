/**
 * ExtentSource: a Readable (object mode) of Extent covering an NBD export
 * from start to end, in offset order, built from NBD block status.
 *
 * In: nothing (it queries the connected NbdClient or NbdPool). Out: Extent objects.
 * - `base:allocation` only (full backups): NBD_STATE_ZERO -> zero extent,
 *   anything else -> data (a hole not known to read as zero must be copied).
 * - a dirty bitmap context (`qemu:dirty-bitmap:<name>`): dirty -> data,
 *   clean -> { data: false, zero: false } (nothing to copy).
 * - both (`intersectAllocation`): dirty and not zero -> data, dirty and zero
 *   -> zero extent (not read, but the caller still learns it changed),
 *   clean -> { data: false, zero: false }.
 * Adjacent extents of one kind are merged; data extents are split at
 * `maxDataLength` (default the client's maximum request size).
 * Buffers: the extents of one block status window (`windowSize`, default
 * 1 GiB) at a time, so a huge disk never becomes one huge array.
 */
import { Readable } from 'node:stream';
import type { Extent } from '../lib/extent.js';
import type { BlockStatusExtent } from '../lib/nbd/client.js';
import type { NbdBlockDevice } from '../lib/nbd/device.js';
import { NbdUsageError } from '../lib/nbd/errors.js';
import { BASE_ALLOCATION, NBD_STATE_DIRTY, NBD_STATE_ZERO } from '../lib/nbd/protocol.js';

export interface ExtentSourceOptions {
  /**
   * Dirty bitmap meta context, e.g. 'qemu:dirty-bitmap:backup-vda'. Without
   * it extents come from `base:allocation`.
   */
  dirtyContext?: string;
  /** With `dirtyContext`: also consult `base:allocation` and do not read dirty ranges that read as zero. */
  intersectAllocation?: boolean;
  /** Bytes of the export described per round of block status queries (default 1 GiB). */
  windowSize?: number;
  /** Split data extents longer than this (default client.maxRequestSize; Infinity: never). */
  maxDataLength?: number;
  /** Range to describe (default the whole export). */
  offset?: number;
  length?: number;
}

const DEFAULT_WINDOW = 1024 ** 3;

type Kind = 'data' | 'zero' | 'skip';

function kindOf(e: Extent): Kind {
  return e.data ? 'data' : e.zero ? 'zero' : 'skip';
}

function extentOf(offset: number, length: number, kind: Kind): Extent {
  return { offset, length, data: kind === 'data', zero: kind === 'zero' };
}

/**
 * Walk two extent lists covering the same range and call `emit` for every
 * piece where neither changes kind. Both lists must cover [start, end).
 */
function intersect(a: BlockStatusExtent[], b: BlockStatusExtent[], emit: (offset: number, length: number, fa: number, fb: number) => void): void {
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const ea = a[i];
    const eb = b[j];
    const start = Math.max(ea.offset, eb.offset);
    const end = Math.min(ea.offset + ea.length, eb.offset + eb.length);
    if (end > start) emit(start, end - start, ea.flags, eb.flags);
    if (ea.offset + ea.length <= eb.offset + eb.length) i++;
    else j++;
  }
}

export class ExtentSource extends Readable {
  private readonly client: NbdBlockDevice;
  private readonly dirtyContext?: string;
  private readonly intersectAllocation: boolean;
  private readonly windowSize: number;
  private readonly maxDataLength: number;
  private readonly end: number;
  private next: number;
  /** Extent being grown by merging, not yet emitted (may span windows). */
  private pendingExtent?: Extent;
  private busy = false;

  constructor(client: NbdBlockDevice, opts: ExtentSourceOptions = {}) {
    super({ objectMode: true, highWaterMark: 64 });
    this.client = client;
    this.dirtyContext = opts.dirtyContext;
    this.intersectAllocation = !!opts.intersectAllocation;
    this.windowSize = opts.windowSize ?? DEFAULT_WINDOW;
    this.maxDataLength = opts.maxDataLength ?? client.maxRequestSize;
    this.next = opts.offset ?? 0;
    this.end = opts.length !== undefined ? this.next + opts.length : client.size;
    const needed = this.contexts();
    for (const c of needed) {
      if (!client.canMetaContext(c)) {
        throw new NbdUsageError(`ExtentSource needs meta context '${c}'; connect with metaContexts: [${needed.map((n) => `'${n}'`).join(', ')}]`);
      }
    }
    if (!(this.windowSize > 0) || !(this.maxDataLength > 0)) throw new RangeError('ExtentSource: windowSize and maxDataLength must be positive');
  }

  /** Meta contexts this source reads. */
  contexts(): string[] {
    if (!this.dirtyContext) return [BASE_ALLOCATION];
    return this.intersectAllocation ? [this.dirtyContext, BASE_ALLOCATION] : [this.dirtyContext];
  }

  override _read(): void {
    if (this.busy) return;
    this.busy = true;
    this.fill().then(
      () => {
        this.busy = false;
      },
      (err: Error) => this.destroy(err),
    );
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    // A block status query in flight finishes on its own; fill() sees `destroyed` and stops.
    this.pendingExtent = undefined;
    cb(err);
  }

  /** Query windows until something was pushed or the end is reached. */
  private async fill(): Promise<void> {
    for (;;) {
      if (this.destroyed) return;
      if (this.next >= this.end) {
        this.flushPending();
        this.push(null);
        return;
      }
      const length = Math.min(this.windowSize, this.end - this.next);
      const status = await this.client.blockStatusRange(this.next, length);
      if (this.destroyed) return;
      let pushedMore = true;
      this.classify(status, (offset, len, kind) => {
        pushedMore = this.add(extentOf(offset, len, kind)) && pushedMore;
      });
      this.next += length;
      if (!pushedMore) return; // the consumer is full; _read() will call again
    }
  }

  private classify(status: Map<string, BlockStatusExtent[]>, emit: (offset: number, length: number, kind: Kind) => void): void {
    const alloc = status.get(BASE_ALLOCATION) ?? [];
    if (!this.dirtyContext) {
      for (const e of alloc) emit(e.offset, e.length, e.flags & NBD_STATE_ZERO ? 'zero' : 'data');
      return;
    }
    const dirty = status.get(this.dirtyContext) ?? [];
    if (!this.intersectAllocation) {
      for (const e of dirty) emit(e.offset, e.length, e.flags & NBD_STATE_DIRTY ? 'data' : 'skip');
      return;
    }
    intersect(dirty, alloc, (offset, length, fd, fa) => {
      emit(offset, length, !(fd & NBD_STATE_DIRTY) ? 'skip' : fa & NBD_STATE_ZERO ? 'zero' : 'data');
    });
  }

  /** Merge into the pending extent, emitting what is complete. Returns false once the consumer is full. */
  private add(e: Extent): boolean {
    const p = this.pendingExtent;
    let ok = true;
    if (p && kindOf(p) === kindOf(e) && p.offset + p.length === e.offset) {
      p.length += e.length;
    } else {
      ok = this.flushPending();
      this.pendingExtent = e;
    }
    return this.splitFull() && ok;
  }

  /** Emit full-size pieces off the front of a pending data extent. */
  private splitFull(): boolean {
    let ok = true;
    const p = this.pendingExtent;
    while (p && p.data && p.length > this.maxDataLength) {
      ok = this.push(extentOf(p.offset, this.maxDataLength, 'data')) && ok;
      p.offset += this.maxDataLength;
      p.length -= this.maxDataLength;
    }
    return ok;
  }

  private flushPending(): boolean {
    const p = this.pendingExtent;
    this.pendingExtent = undefined;
    return p ? this.push(p) : true;
  }
}
