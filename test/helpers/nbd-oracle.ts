/**
 * Looking at NBD exports with libnbd's and nbdkit's own tools (nbdinfo,
 * nbdcopy, nbdkit's offset filter): an oracle independent of virtnbd's NBD
 * client, for asserting what an export holds and which ranges are dirty.
 */
import { run, runBytes } from './exec.js';

/** Where an export is: a unix socket and an export name. */
export interface NbdEndpoint {
  socket: string;
  exportName: string;
}

export function nbdUri(ep: NbdEndpoint): string {
  return `nbd+unix:///${encodeURIComponent(ep.exportName)}?socket=${ep.socket}`;
}

/** One entry of `nbdinfo --map --json`. */
export interface MapEntry {
  offset: number;
  length: number;
  /** Block status flags of the context (base:allocation: 1 hole, 2 zero; dirty bitmap: 1 dirty). */
  type: number;
  description: string;
}

/** Block status of an export for one meta context (default base:allocation), as nbdinfo reports it. */
export async function nbdMap(ep: NbdEndpoint, context = 'base:allocation'): Promise<MapEntry[]> {
  const r = await run('nbdinfo', ['--json', `--map=${context}`, nbdUri(ep)]);
  return JSON.parse(r.stdout) as MapEntry[];
}

export interface Range {
  offset: number;
  length: number;
}

/** Merge adjacent entries whose `type` passes `keep` into ranges. */
export function rangesOf(map: readonly MapEntry[], keep: (type: number) => boolean): Range[] {
  const out: Range[] = [];
  for (const e of map) {
    if (!keep(e.type)) continue;
    const last = out[out.length - 1];
    if (last && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length });
  }
  return out;
}

/** The dirty ranges of a `qemu:dirty-bitmap:<bitmap>` context (e.g. bitmap `backup-vda` of an incremental backup job). */
export async function dirtyRanges(ep: NbdEndpoint, bitmap: string): Promise<Range[]> {
  return rangesOf(await nbdMap(ep, `qemu:dirty-bitmap:${bitmap}`), (type) => (type & 1) === 1);
}

/** The ranges base:allocation reports as data (neither hole nor zero). */
export async function dataRanges(ep: NbdEndpoint): Promise<Range[]> {
  return rangesOf(await nbdMap(ep), (type) => (type & 3) === 0);
}

/** Size of the export in bytes. */
export async function exportSize(ep: NbdEndpoint): Promise<number> {
  const r = await run('nbdinfo', ['--size', nbdUri(ep)]);
  return Number(r.stdout.trim());
}

/**
 * Read `length` bytes at `offset` of an export: nbdcopy reads an nbdkit
 * that serves just that window of the export (offset filter over the nbd
 * plugin). Meant for small windows; bytes land in memory.
 */
export async function readExport(ep: NbdEndpoint, offset: number, length: number): Promise<Buffer> {
  const r = await runBytes('nbdcopy', [
    '--',
    '[',
    'nbdkit',
    '-r',
    '--filter=offset',
    'nbd',
    `socket=${ep.socket}`,
    `export=${ep.exportName}`,
    `offset=${offset}`,
    `range=${length}`,
    ']',
    '-',
  ]);
  if (r.stdout.length !== length) {
    throw new Error(`readExport ${nbdUri(ep)}: asked ${length} bytes at ${offset}, got ${r.stdout.length}`);
  }
  return r.stdout;
}

/** Copy a whole export into a (sparse) local file or another NBD URI with nbdcopy. */
export async function copyExport(ep: NbdEndpoint, destination: string): Promise<void> {
  await run('nbdcopy', [nbdUri(ep), destination], { timeoutMs: 600_000 });
}

/** True if every byte of `buf` is `value`. */
export function isFilledWith(buf: Buffer, value: number): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== value) return false;
  return true;
}
