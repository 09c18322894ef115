/**
 * Backup-set file names, exactly as virtnbdbackup writes them, so existing
 * backup sets, scripts and virtnbdrestore keep working. Pure functions, no I/O.
 *
 * In a target directory (all names relative to it):
 *
 * - data files: `<disk>.full.data`, `<disk>.copy.data`,
 *   `<disk>.inc.<ident>.data`, `<disk>.diff.<ident>.data`;
 *   `<disk>` is the libvirt target device (`vda`, `sda`, `hdc`). A raw-format
 *   disk is always written as `copy`, whatever the level; the caller decides.
 * - `<datafile>.chksum` beside each stream-format data file (adler32, decimal);
 * - `<name>.partial` while a file is being written;
 * - `vmconfig.<ident>.xml`, `checkpoints/<ident>.xml`, `<domain>.cpt`,
 *   `<disk>.<ident>.qcow.json`, `autostart.<ident>`;
 * - boot files (kernel, initrd, loader, nvram): `<basename>.<ident>`, or the
 *   plain basename for `copy` backups;
 * - `backup.<level>.<MMDDYYYYHHMMSS>.log`, local time, where level is the
 *   one the user asked for (so possibly `auto`).
 *
 * `<ident>` is the checkpoint name (`virtnbdbackup.3`) for full and inc, the
 * Unix time in seconds for diff (diff creates no checkpoint), and `copy` for
 * copy backups.
 *
 * Parsing a data file name: the level is the first `.inc.` / `.diff.`
 * component (the ident is all that follows, dots included), else a final
 * `.full` / `.copy`; the disk is all before. So disk names may hold dots,
 * but not a `inc` or `diff` component (libvirt never makes such names).
 */

/** Levels as they appear in data file names. */
export type DataLevel = 'full' | 'copy' | 'inc' | 'diff';
/** Levels a backup can be asked for (log file names use this). */
export type BackupLevel = DataLevel | 'auto';

export const DATA_LEVELS: readonly DataLevel[] = ['full', 'copy', 'inc', 'diff'];
export const BACKUP_LEVELS: readonly BackupLevel[] = ['full', 'copy', 'inc', 'diff', 'auto'];

/** What a data file name says: `ident` is present exactly for inc and diff. */
export interface DataFileName {
  disk: string;
  level: DataLevel;
  ident?: string;
}

export const DATA_SUFFIX = '.data';
export const CHECKSUM_SUFFIX = '.chksum';
export const PARTIAL_SUFFIX = '.partial';
export const CHECKPOINT_DIR = 'checkpoints';

/** A name component that cannot be used in a backup-set file name. */
export class FileNameError extends Error {
  override readonly name = 'FileNameError';
}

function checkComponent(what: string, value: string): void {
  if (value === '' || value === '.' || value === '..' || value.includes('/') || value.includes('\0')) {
    throw new FileNameError(`Invalid ${what} for a backup file name: ${JSON.stringify(value)}`);
  }
}

function hasLevelComponent(disk: string): boolean {
  return disk.split('.').some((part) => part === 'inc' || part === 'diff');
}

/** `<disk>.<level>.data` or `<disk>.<level>.<ident>.data`. */
export function dataFileName(file: DataFileName): string {
  const { disk, level, ident } = file;
  checkComponent('disk name', disk);
  if (hasLevelComponent(disk)) {
    throw new FileNameError(`Disk name ${JSON.stringify(disk)} has an "inc" or "diff" component; its data file names would be ambiguous`);
  }
  if (level === 'full' || level === 'copy') {
    if (ident !== undefined) throw new FileNameError(`A ${level} data file name has no ident (got ${JSON.stringify(ident)})`);
    return `${disk}.${level}${DATA_SUFFIX}`;
  }
  if (level === 'inc' || level === 'diff') {
    if (ident === undefined) throw new FileNameError(`A ${level} data file name needs an ident (checkpoint name or time)`);
    checkComponent('ident', ident);
    return `${disk}.${level}.${ident}${DATA_SUFFIX}`;
  }
  throw new FileNameError(`Unknown backup level ${JSON.stringify(level)}`);
}

/**
 * The disk, level and ident of a data file name (a base name, no directory),
 * or undefined when it is not one (`.chksum`, `.partial`, config, logs...).
 */
export function parseDataFileName(name: string): DataFileName | undefined {
  if (name.includes('/') || !name.endsWith(DATA_SUFFIX)) return undefined;
  const stem = name.slice(0, -DATA_SUFFIX.length);
  const match = /\.(inc|diff)\./.exec(stem);
  if (match) {
    const disk = stem.slice(0, match.index);
    const ident = stem.slice(match.index + match[0].length);
    if (disk === '' || ident === '') return undefined;
    return { disk, level: match[1] as DataLevel, ident };
  }
  for (const level of ['full', 'copy'] as const) {
    const suffix = `.${level}`;
    if (stem.endsWith(suffix) && stem.length > suffix.length) {
      return { disk: stem.slice(0, -suffix.length), level };
    }
  }
  return undefined;
}

/** `<datafile>.chksum`. */
export function checksumFileName(dataFile: string): string {
  return dataFile + CHECKSUM_SUFFIX;
}

/** `<name>.partial`: what a file is called until it is complete. */
export function partialFileName(name: string): string {
  return name + PARTIAL_SUFFIX;
}

/** The final name of a `.partial` name, or undefined for any other name. */
export function parsePartialFileName(name: string): string | undefined {
  if (!name.endsWith(PARTIAL_SUFFIX) || name.length === PARTIAL_SUFFIX.length) return undefined;
  return name.slice(0, -PARTIAL_SUFFIX.length);
}

/** `vmconfig.<ident>.xml`. */
export function vmConfigFileName(ident: string): string {
  checkComponent('ident', ident);
  return `vmconfig.${ident}.xml`;
}

/** The ident of a `vmconfig.<ident>.xml` name, or undefined. */
export function parseVmConfigFileName(name: string): string | undefined {
  const match = /^vmconfig\.(.+)\.xml$/.exec(name);
  return match && !match[1].includes('/') ? match[1] : undefined;
}

/** `checkpoints/<ident>.xml`: a checkpoint's XML, relative to the target directory. */
export function checkpointFileName(ident: string): string {
  checkComponent('checkpoint name', ident);
  return `${CHECKPOINT_DIR}/${ident}.xml`;
}

/** `<domain>.cpt`: the JSON list of the chain's checkpoint names. */
export function checkpointListFileName(domain: string): string {
  checkComponent('domain name', domain);
  return `${domain}.cpt`;
}

/** `<disk>.<ident>.qcow.json`: `qemu-img info --output=json` of the source image. */
export function qcowInfoFileName(disk: string, ident: string): string {
  checkComponent('disk name', disk);
  checkComponent('ident', ident);
  return `${disk}.${ident}.qcow.json`;
}

/** `autostart.<ident>`: present when the domain was marked autostart. */
export function autostartFileName(ident: string): string {
  checkComponent('ident', ident);
  return `autostart.${ident}`;
}

/**
 * A boot file's name in the backup set (kernel, initrd, loader, nvram):
 * the base name of its path on the host, plus `.<ident>` unless the
 * backup is a copy (`ident` undefined).
 */
export function bootFileName(hostPath: string, ident: string | undefined): string {
  const base = hostPath.replace(/\/+$/, '').split('/').pop() ?? '';
  checkComponent('boot file name', base);
  if (ident === undefined) return base;
  checkComponent('ident', ident);
  return `${base}.${ident}`;
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

/** `MMDDYYYYHHMMSS` in local time, as virtnbdbackup stamps its log files. */
export function logTimestamp(at: Date): string {
  return (
    pad2(at.getMonth() + 1) +
    pad2(at.getDate()) +
    String(at.getFullYear()).padStart(4, '0') +
    pad2(at.getHours()) +
    pad2(at.getMinutes()) +
    pad2(at.getSeconds())
  );
}

/** `backup.<level>.<MMDDYYYYHHMMSS>.log`. */
export function backupLogFileName(level: BackupLevel, at: Date): string {
  if (!BACKUP_LEVELS.includes(level)) throw new FileNameError(`Unknown backup level ${JSON.stringify(level)}`);
  return `backup.${level}.${logTimestamp(at)}.log`;
}

/**
 * The `<ident>` of a backup's files: `copy` for copy backups, the Unix time
 * in whole seconds for diff backups, else the checkpoint name.
 */
export function backupIdent(level: DataLevel, checkpointName: string | undefined, at: Date): string {
  if (level === 'copy') return 'copy';
  if (level === 'diff') return String(Math.floor(at.getTime() / 1000));
  if (checkpointName === undefined || checkpointName === '') {
    throw new FileNameError(`A ${level} backup needs a checkpoint name for its file names`);
  }
  return checkpointName;
}
