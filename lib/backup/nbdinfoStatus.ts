/**
 * `-q/--qemu`: block status from libnbd's nbdinfo instead of our client,
 * as virtnbdbackup queries extents with qemu's tools when asked. An
 * NbdBlockDevice that forwards everything to our connected client except
 * block status, which it answers from `nbdinfo --map=<context> --json`
 * runs (one per meta context, over the whole export, made up front), so
 * ExtentSource turns them into the same extents it makes from our own
 * queries. Holds the maps in memory: a few entries per extent.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { BlockStatusExtent, BlockStatusResult, WriteOptions, WriteZeroesOptions } from '../nbd/client.js';
import type { NbdBlockDevice } from '../nbd/device.js';
import { BackupError, messageOf } from './errors.js';

const run = promisify(execFile);

interface NbdinfoMapEntry {
  offset: number;
  length: number;
  type: number;
}

/** The whole export's map of one meta context, by nbdinfo. */
export async function nbdinfoMap(uri: string, context: string): Promise<BlockStatusExtent[]> {
  let stdout: string;
  try {
    ({ stdout } = await run('nbdinfo', [`--map=${context}`, '--json', uri], { maxBuffer: 256 * 1024 * 1024 }));
  } catch (e) {
    throw new BackupError('disk', `nbdinfo --map=${context} ${uri} failed (-q): ${messageOf(e)}`, { cause: e });
  }
  const entries = JSON.parse(stdout) as NbdinfoMapEntry[];
  return entries.map((e) => ({ offset: e.offset, length: e.length, flags: e.type }));
}

function slice(map: readonly BlockStatusExtent[], offset: number, length: number): BlockStatusExtent[] {
  const end = offset + length;
  const out: BlockStatusExtent[] = [];
  for (const e of map) {
    const s = Math.max(e.offset, offset);
    const t = Math.min(e.offset + e.length, end);
    if (s < t) out.push({ offset: s, length: t - s, flags: e.flags });
  }
  return out;
}

export class NbdinfoStatusDevice implements NbdBlockDevice {
  private constructor(
    private readonly inner: NbdBlockDevice,
    private readonly maps: ReadonlyMap<string, BlockStatusExtent[]>,
  ) {}

  /** Map `contexts` of the export at NBD URI `uri` (unix or TCP, nbds with its tls-certificates) with nbdinfo. */
  static async create(inner: NbdBlockDevice, uri: string, contexts: readonly string[]): Promise<NbdinfoStatusDevice> {
    const maps = new Map<string, BlockStatusExtent[]>();
    for (const c of contexts) maps.set(c, await nbdinfoMap(uri, c));
    return new NbdinfoStatusDevice(inner, maps);
  }

  get size(): number {
    return this.inner.size;
  }
  get maxRequestSize(): number {
    return this.inner.maxRequestSize;
  }
  get minimumBlockSize(): number {
    return this.inner.minimumBlockSize;
  }
  get canFlush(): boolean {
    return this.inner.canFlush;
  }
  get canWriteZeroes(): boolean {
    return this.inner.canWriteZeroes;
  }
  get inFlight(): number {
    return this.inner.inFlight;
  }
  canMetaContext(name: string): boolean {
    return this.maps.has(name);
  }
  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.inner.read(offset, length, into);
  }
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.inner.write(offset, data, opts);
  }
  writeZeroes(offset: number, length: number, opts?: WriteZeroesOptions): Promise<void> {
    return this.inner.writeZeroes(offset, length, opts);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  async blockStatusRange(offset: number, length: number): Promise<BlockStatusResult> {
    const result: BlockStatusResult = new Map();
    for (const [name, map] of this.maps) result.set(name, slice(map, offset, length));
    return result;
  }
}
