/**
 * NbdPool: several connections to one export, used as one device. The spec
 * allows this only when the server sets NBD_FLAG_CAN_MULTI_CONN (its cache
 * is shared, so a flush on one connection covers writes made on the
 * others); otherwise the pool keeps a single connection.
 *
 * Each request goes to the connection with the fewest requests in flight.
 * flush() first waits for every write already issued through the pool (the
 * spec forbids flushing before their replies arrived), then flushes on one
 * connection.
 */
import { NbdClient, type BlockStatusResult, type NbdClientOptions, type NbdTarget, type WriteOptions, type WriteZeroesOptions } from './client.js';
import type { NbdBlockDevice } from './device.js';
import { NbdUsageError } from './errors.js';

export interface NbdPoolOptions extends NbdClientOptions {
  /** Connections to open when the server allows it (default 4). */
  connections?: number;
}

export class NbdPool implements NbdBlockDevice {
  private readonly writes = new Set<Promise<void>>();

  private constructor(readonly clients: readonly NbdClient[]) {}

  /** Connect once; if the export has CAN_MULTI_CONN, open the other connections in parallel. */
  static async connect(target: NbdTarget, opts: NbdPoolOptions = {}): Promise<NbdPool> {
    const wanted = opts.connections ?? 4;
    if (!Number.isInteger(wanted) || wanted < 1) throw new NbdUsageError(`NbdPool: connections must be a positive integer, not ${wanted}`);
    const first = await NbdClient.connect(target, opts);
    if (!first.canMultiConn || wanted === 1) return new NbdPool([first]);
    const more = await Promise.allSettled(Array.from({ length: wanted - 1 }, () => NbdClient.connect(target, opts)));
    const failed = more.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    const opened = more.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    if (failed) {
      for (const c of [first, ...opened]) c.destroy();
      throw failed.reason;
    }
    return new NbdPool([first, ...opened]);
  }

  /** The first connection, whose handshake results describe the export. */
  get primary(): NbdClient {
    return this.clients[0];
  }
  get size(): number {
    return this.primary.size;
  }
  get maxRequestSize(): number {
    return this.primary.maxRequestSize;
  }
  get minimumBlockSize(): number {
    return this.primary.minimumBlockSize;
  }
  get canFlush(): boolean {
    return this.primary.canFlush;
  }
  get canWriteZeroes(): boolean {
    return this.primary.canWriteZeroes;
  }
  get inFlight(): number {
    return this.clients.reduce((n, c) => n + c.inFlight, 0);
  }
  canMetaContext(name: string): boolean {
    return this.primary.canMetaContext(name);
  }

  /** The live connection with the fewest requests in flight. */
  private pick(): NbdClient {
    let best = this.clients[0];
    for (const c of this.clients) {
      if (c.state !== 'transmission') continue;
      if (best.state !== 'transmission' || c.inFlight < best.inFlight) best = c;
    }
    return best;
  }

  private tracked(p: Promise<void>): Promise<void> {
    const settled = p.then(
      () => undefined,
      () => undefined,
    );
    this.writes.add(settled);
    void settled.then(() => this.writes.delete(settled));
    return p;
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.pick().read(offset, length, into);
  }
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.tracked(this.pick().write(offset, data, opts));
  }
  writeZeroes(offset: number, length: number, opts?: WriteZeroesOptions): Promise<void> {
    return this.tracked(this.pick().writeZeroes(offset, length, opts));
  }
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.tracked(this.pick().trim(offset, length, opts));
  }
  async flush(): Promise<void> {
    await Promise.all([...this.writes]);
    await this.pick().flush();
  }
  blockStatus(offset: number, length: number): Promise<BlockStatusResult> {
    return this.pick().blockStatus(offset, length);
  }
  blockStatusRange(offset: number, length: number): Promise<BlockStatusResult> {
    return this.pick().blockStatusRange(offset, length);
  }

  /** Soft-disconnect every connection. */
  async disconnect(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.disconnect()));
  }

  destroy(): void {
    for (const c of this.clients) c.destroy();
  }
}
