/**
 * Which of a domain's disks a backup saves, and why the others are left
 * out, following virtnbdbackup (2.x rules, which extend 1.9.15's):
 *
 * 1. `--exclude` names: skipped, with a warning (virtnbdbackup logs one);
 * 2. `--include` given and the disk not in it: skipped (info);
 * 3. cdrom and floppy drives: skipped (info);
 * 4. direct LUNs (`device='lun'`): skipped with a warning, always;
 * 5. network disks and other source types (dir, nvme, vhostuser...):
 *    skipped with a warning, QEMU exports them but virtnbdbackup does not
 *    back them up;
 * 6. disks without a source (an empty drive): skipped with a warning;
 * 7. disks that cannot hold a persistent dirty bitmap (raw, or any format
 *    but qcow2): skipped with a warning unless `--raw`, then saved whole
 *    (copy) in full and copy backups.
 *
 * qcow2 files, qcow2 on block devices (LVM) and volume disks are backed up.
 * Volume disks carry pool and volume; the caller resolves their path.
 * Pure, no I/O.
 */
import type { DomainDisk } from '../xml/domain.js';

export interface SkippedDisk {
  disk: DomainDisk;
  /** Why, for the log, after "Skipping disk vdX: ": "cdrom drive", "excluded by --exclude"... */
  reason: string;
  /** Logged as a warning (counts for --strict's exit code 2) rather than info. */
  warn: boolean;
}

export interface DiskSelection {
  /** Disks to back up, in domain XML order. */
  backup: DomainDisk[];
  skipped: SkippedDisk[];
  /** Names in --include / --exclude that match no disk of the domain (probably a typo). */
  unmatched: string[];
}

export interface DiskSelectionOptions {
  /** Target devs to back up (-i vda,vdb); undefined: all. */
  include?: readonly string[];
  /** Target devs to leave out (-x vda,vdb). */
  exclude?: readonly string[];
  /** --raw: also save disks that cannot hold a bitmap, whole. */
  raw: boolean;
}

/** qcow2 images hold persistent dirty bitmaps, so they can be backed up incrementally. */
export function canHoldBitmap(disk: Pick<DomainDisk, 'format'>): boolean {
  return disk.format === 'qcow2';
}

/** `-x vda,vdb` → ['vda', 'vdb']; empty items dropped. */
export function parseDiskList(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function skipReason(disk: DomainDisk, options: DiskSelectionOptions): Omit<SkippedDisk, 'disk'> | undefined {
  if (options.exclude?.includes(disk.target)) return { reason: 'excluded by --exclude', warn: true };
  if (options.include !== undefined && !options.include.includes(disk.target)) {
    return { reason: 'not listed in --include', warn: false };
  }
  if (disk.device === 'cdrom' || disk.device === 'floppy') return { reason: `${disk.device} drive`, warn: false };
  if (disk.device === 'lun') return { reason: 'direct-attached LUN, which has no changed block tracking', warn: true };
  if (disk.type === 'network') {
    const protocol = disk.protocol ? ` (${disk.protocol})` : '';
    return { reason: `network disk${protocol}: network disks are not supported`, warn: true };
  }
  if (disk.type !== 'file' && disk.type !== 'block' && disk.type !== 'volume') {
    return { reason: `source type '${disk.type}' is not supported`, warn: true };
  }
  const hasSource = disk.type === 'volume' ? disk.pool !== undefined && disk.volume !== undefined : disk.path !== undefined;
  if (!hasSource) return { reason: 'no source (empty drive?)', warn: true };
  if (!canHoldBitmap(disk) && !options.raw) {
    return {
      reason: `format ${disk.format ?? 'not given (raw)'} has no changed block tracking; use --raw to include it in full and copy backups`,
      warn: true,
    };
  }
  return undefined;
}

export function selectDisks(disks: readonly DomainDisk[], options: DiskSelectionOptions): DiskSelection {
  const selection: DiskSelection = { backup: [], skipped: [], unmatched: [] };
  for (const disk of disks) {
    const skip = skipReason(disk, options);
    if (skip) selection.skipped.push({ disk, ...skip });
    else selection.backup.push(disk);
  }
  const targets = new Set(disks.map((d) => d.target));
  for (const name of [...(options.include ?? []), ...(options.exclude ?? [])]) {
    if (!targets.has(name) && !selection.unmatched.includes(name)) selection.unmatched.push(name);
  }
  return selection;
}
