/**
 * What the files of a backup set are, by name, and which of several
 * candidates a restore uses: the domain config (`vmconfig.<ident>.xml`),
 * the source image's qemu-img info (`<disk>.<ident>.qcow.json`) and boot
 * files (`<basename>.<ident>`). Also: which entry names are safe (a zip may
 * carry `../` or absolute names), the qemu-img options to recreate an
 * image like its source, and the restored image's file name. Pure, no I/O.
 *
 * Picking among candidates, for a restore whose chain ends with ident E
 * (the last file's: checkpoint name, or a diff's Unix time) at checkpoint C:
 * the one for E; else, after a diff, the first written after it (its
 * config is saved a moment after its data); else the one for C; else the
 * newest (highest checkpoint number, then highest Unix time, then copy).
 */
import { parseDataFileName, parseVmConfigFileName, CHECKSUM_SUFFIX, PARTIAL_SUFFIX, type DataFileName } from '../format/naming.js';
import { checkpointIndex } from '../backup/checkpointChain.js';
import type { DomainDisk } from '../xml/domain.js';
import { BackupSetError } from './errors.js';

export type SetFileKind =
  | 'data'
  | 'checksum'
  | 'vmconfig'
  | 'qcowInfo'
  | 'checkpointList'
  | 'checkpoint'
  | 'autostart'
  | 'log'
  | 'partial'
  | 'other';

export interface SetFile {
  kind: SetFileKind;
  /** For data files: disk, level, ident. */
  data?: DataFileName;
  /** For checksum files: the data file they belong to. */
  dataFile?: string;
  /** For vmconfig, qcowInfo and autostart files. */
  ident?: string;
  /** For qcowInfo files. */
  disk?: string;
}

const QCOW_INFO = /^(.+?)\.(.+)\.qcow\.json$/;

/** What a set file is, by its name (relative to the set's root). */
export function classifySetFile(name: string): SetFile {
  if (name.startsWith('checkpoints/')) return { kind: name.endsWith('.xml') ? 'checkpoint' : 'other' };
  if (name.includes('/')) return { kind: 'other' };
  if (name.endsWith(PARTIAL_SUFFIX)) return { kind: 'partial' };
  if (name.endsWith(CHECKSUM_SUFFIX)) {
    const dataFile = name.slice(0, -CHECKSUM_SUFFIX.length);
    if (parseDataFileName(dataFile)) return { kind: 'checksum', dataFile };
    return { kind: 'other' };
  }
  const data = parseDataFileName(name);
  if (data) return { kind: 'data', data };
  const vmIdent = parseVmConfigFileName(name);
  if (vmIdent !== undefined) return { kind: 'vmconfig', ident: vmIdent };
  const qcow = QCOW_INFO.exec(name);
  if (qcow) {
    // The disk name has no dots in practice (vda, sdb); the ident may (virtnbdbackup.3).
    return { kind: 'qcowInfo', disk: qcow[1], ident: qcow[2] };
  }
  if (name.endsWith('.cpt')) return { kind: 'checkpointList' };
  if (name.startsWith('autostart.')) return { kind: 'autostart', ident: name.slice('autostart.'.length) };
  if (/^backup\.[a-z]+\.\d{14}\.log$/.test(name)) return { kind: 'log' };
  return { kind: 'other' };
}

/**
 * A zip entry name, checked to stay inside the set: no absolute path, no
 * drive letter, no `..` component, no backslash or NUL. Returns the name
 * with a leading `./` removed; throws BackupSetError naming the entry.
 */
export function safeEntryName(name: string, source: string): string {
  const shown = JSON.stringify(name.length > 200 ? `${name.slice(0, 200)}...` : name);
  const refuse = (why: string): never => {
    throw new BackupSetError(`${source}: entry ${shown} ${why}; refusing the archive (its names must stay inside the backup set)`);
  };
  if (name === '') refuse('has an empty name');
  if (name.includes('\0')) refuse('has a NUL byte in its name');
  if (name.includes('\\')) refuse('has a backslash in its name');
  if (name.startsWith('/')) refuse('is an absolute path');
  if (/^[A-Za-z]:/.test(name)) refuse('starts with a drive letter');
  const parts = name.split('/');
  if (parts.includes('..')) refuse('climbs out of the output directory with ".."');
  let clean = name;
  while (clean.startsWith('./')) clean = clean.slice(2);
  return clean;
}

/** Where a restore's chain ends, to pick the files that match it. */
export interface ChainEnd {
  /** Ident of the last file applied (checkpoint name, a diff's Unix time, or copy). */
  ident?: string;
  /** Last checkpoint reached. */
  checkpoint?: string;
}

/** Picks among candidates by ident, as the module comment says. `candidates`: ident -> name. */
export function pickByIdent(candidates: ReadonlyMap<string, string>, end: ChainEnd = {}): string | undefined {
  if (candidates.size === 0) return undefined;
  if (end.ident !== undefined && candidates.has(end.ident)) return candidates.get(end.ident);
  const timeOf = (ident: string): number | undefined => (/^\d+$/.test(ident) ? Number(ident) : undefined);
  const endTime = end.ident === undefined ? undefined : timeOf(end.ident);
  if (endTime !== undefined) {
    const after = [...candidates.keys()].filter((i) => (timeOf(i) ?? -1) >= endTime).sort((a, b) => Number(a) - Number(b));
    if (after.length > 0) return candidates.get(after[0]!);
  }
  if (end.checkpoint !== undefined && candidates.has(end.checkpoint)) return candidates.get(end.checkpoint);
  const idents = [...candidates.keys()];
  const byCheckpoint = idents.filter((i) => checkpointIndex(i) !== undefined).sort((a, b) => checkpointIndex(b)! - checkpointIndex(a)!);
  if (byCheckpoint.length > 0) return candidates.get(byCheckpoint[0]!);
  const byTime = idents.filter((i) => timeOf(i) !== undefined).sort((a, b) => Number(b) - Number(a));
  if (byTime.length > 0) return candidates.get(byTime[0]!);
  if (candidates.has('copy')) return candidates.get('copy');
  return candidates.get(idents.sort()[idents.length - 1]!);
}

/** The domain config a restore uses. */
export function pickVmConfig(names: readonly string[], end: ChainEnd = {}): string | undefined {
  const candidates = new Map<string, string>();
  for (const n of names) {
    const f = classifySetFile(n);
    if (f.kind === 'vmconfig' && f.ident !== undefined) candidates.set(f.ident, n);
  }
  return pickByIdent(candidates, end);
}

/** The qemu-img info of disk `disk`'s source image a restore uses. */
export function pickQcowInfo(names: readonly string[], disk: string, end: ChainEnd = {}): string | undefined {
  const candidates = new Map<string, string>();
  for (const n of names) {
    if (!n.startsWith(`${disk}.`) || !n.endsWith('.qcow.json') || n.includes('/')) continue;
    candidates.set(n.slice(disk.length + 1, -'.qcow.json'.length), n);
  }
  return pickByIdent(candidates, end);
}

/** The set's copy of the boot file at `hostPath` (kernel, initrd, loader, nvram). */
export function pickBootFile(names: readonly string[], hostPath: string, end: ChainEnd = {}): string | undefined {
  const base = hostPath.replace(/\/+$/, '').split('/').pop() ?? '';
  if (base === '') return undefined;
  const candidates = new Map<string, string>();
  for (const n of names) {
    if (n.includes('/')) continue;
    if (n === base) candidates.set('copy', n);
    else if (n.startsWith(`${base}.`)) {
      const ident = n.slice(base.length + 1);
      // Not another set file that merely starts with the same name.
      if (classifySetFile(n).kind === 'other' && !ident.includes('/')) candidates.set(ident, n);
    }
  }
  return pickByIdent(candidates, end);
}

/** `-o` options for `qemu-img create` that make the new image like its source, from `qemu-img info --output=json`. */
export interface ImageCreateOptions {
  options: Array<[string, string]>;
  /** What could not be carried over, for the log. */
  warnings: string[];
}

/** Reads the qemu-img info JSON of the source image; options in the order qemu-img create takes them. */
export function qcowCreateOptions(info: unknown, source: string): ImageCreateOptions {
  const options: Array<[string, string]> = [];
  const warnings: string[] = [];
  if (typeof info !== 'object' || info === null) {
    return { options, warnings: [`${source} is not a qemu-img info object; creating the image with default options`] };
  }
  const top = info as Record<string, unknown>;
  const specific = top['format-specific'] as { type?: unknown; data?: Record<string, unknown> } | undefined;
  const data = specific && typeof specific.data === 'object' && specific.data !== null ? specific.data : {};
  const bool = (v: unknown): string | undefined => (typeof v === 'boolean' ? (v ? 'on' : 'off') : undefined);
  const text = (v: unknown): string | undefined => (typeof v === 'string' && /^[\w.-]+$/.test(v) ? v : typeof v === 'number' ? String(v) : undefined);
  const add = (key: string, value: string | undefined): void => {
    if (value !== undefined) options.push([key, value]);
  };
  add('compat', text(data['compat']));
  const cluster = top['cluster-size'];
  if (typeof cluster === 'number' && Number.isInteger(cluster) && cluster >= 512 && (cluster & (cluster - 1)) === 0) add('cluster_size', String(cluster));
  if (data['lazy-refcounts'] === true) add('lazy_refcounts', 'on');
  add('refcount_bits', text(data['refcount-bits']));
  add('compression_type', text(data['compression-type']));
  if (data['extended-l2'] === true) add('extended_l2', bool(data['extended-l2']));
  if (data['data-file'] !== undefined) {
    warnings.push(`${source}: the source image kept its data in an external data file (${String(data['data-file'])}); the restored image holds its data itself`);
  }
  return { options, warnings };
}

/**
 * The restored image's file name in the output directory: the source
 * image's base name as the domain config names it (as virtnbdrestore
 * does), the volume name for volume disks, else the disk's target name.
 */
export function restoredFileName(target: string, disk: DomainDisk | undefined): string {
  const fromPath = disk?.path?.replace(/\/+$/, '').split('/').pop();
  const candidate = (disk?.type === 'file' || disk?.type === 'block' ? fromPath : undefined) ?? disk?.volume ?? target;
  if (candidate === '' || candidate === '.' || candidate === '..' || candidate.includes('/') || candidate.includes('\0')) return target;
  return candidate;
}
