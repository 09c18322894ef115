/**
 * The plan of one backup run: given what the user asked for and what the
 * target directory, the saved checkpoint files and libvirt hold, decide the
 * effective level, the disks and their file names, the checkpoint to create
 * and the one to back up from, and which checkpoints to redefine or delete
 * first; or refuse, with a BackupPlanError a sysadmin understands. Pure: the
 * caller gathers the inputs (I/O) and carries the plan out.
 *
 * Rules, as virtnbdbackup applies them (1.9.15 `virtnbdbackup`, 2.x
 * `backup/check.py`, `virt/checkpoint.py`), with the stricter checks marked
 * "(ours)":
 *
 * - auto: an empty target directory (no `*.data*` file) means full; else
 *   inc, which needs a `*.full.data` there.
 * - full and copy refuse a target directory holding data files already
 *   (unless writing a zip to stdout).
 * - inc and diff refuse a directory with `*.partial` files (a failed backup)
 *   or without a full backup, and need `<domain>.cpt` to name at least one
 *   checkpoint.
 * - `--raw` is dropped (with a warning) for inc and diff; `-t raw` cannot
 *   do inc or diff; stdout takes neither.
 * - full, inc and diff refuse a domain with checkpoints not named
 *   `virtnbdbackup.N` (virtnbdbackup: not containing "virtnbdbackup").
 * - A shut-off domain cannot get a checkpoint: full becomes copy (warning);
 *   inc and diff read the last checkpoint's bitmap offline, and the
 *   "checkpoint" they record is that last one.
 * - Only disks without bitmaps (raw) selected: the level becomes copy.
 * - full deletes this tool's checkpoints (after redefining those libvirt
 *   lost, so their bitmaps go too) and the saved checkpoint files, then
 *   creates `virtnbdbackup.0`; inc creates `virtnbdbackup.<length of the
 *   list>` with the last listed one as parent; diff creates none.
 * - (ours) a directory holding another domain's `.cpt`, vmconfig or saved
 *   checkpoints is refused; a chain whose saved parents do not link up, or
 *   whose checkpoints in libvirt are not the saved ones (creation times
 *   differ, or the next name is already taken), is refused.
 */
import type { BackupLevel, DataLevel } from '../format/naming.js';
import { backupIdent, checkpointListFileName, dataFileName, qcowInfoFileName } from '../format/naming.js';
import type { SavedCheckpoint } from '../xml/checkpointXml.js';
import type { DomainDisk, DomainInfo } from '../xml/domain.js';
import {
  CheckpointChainError,
  checkpointName,
  isOwnCheckpoint,
  orderParentFirst,
  verifyChain,
  compareCheckpointNames,
  type CheckpointLink,
} from './checkpointChain.js';
import { canHoldBitmap, selectDisks, type DiskSelection } from './disks.js';

/** Levels a backup can be asked for. */
export type Level = BackupLevel;
export const LEVELS: readonly Level[] = ['copy', 'full', 'inc', 'diff', 'auto'];
/** `-t`: sparse stream files, or plain raw images. */
export type OutputType = 'stream' | 'raw';

export type BackupPlanProblem =
  | 'invalid-options'
  | 'other-domain'
  | 'target-not-empty'
  | 'no-full-backup'
  | 'partial-backup'
  | 'foreign-checkpoint'
  | 'no-disks'
  | 'no-checkpoints'
  | 'broken-chain'
  | 'chain-mismatch';

/** The backup cannot run as asked; the message says why and what to do. */
export class BackupPlanError extends Error {
  override readonly name = 'BackupPlanError';

  constructor(
    readonly problem: BackupPlanProblem,
    message: string,
  ) {
    super(message);
  }
}

export interface BackupPlanInput {
  /** The domain's live XML, parsed. */
  domain: DomainInfo;
  /** Whether the domain is active (a job can create checkpoints). */
  running: boolean;
  level: Level;
  type: OutputType;
  raw: boolean;
  include?: readonly string[];
  exclude?: readonly string[];
  /** `-o -`: a zip to stdout. */
  stdout: boolean;
  /** false, or the LZ4 level. */
  compress: number | false;
  worker?: number;
  /** Debug modes that skip the target directory checks, as virtnbdbackup does. */
  startOnly?: boolean;
  killOnly?: boolean;
  /** The target directory, for messages. */
  targetDir: string;
  /** Base names of the files in the target directory; empty when it does not exist yet. */
  targetFiles: readonly string[];
  /** `<domain>.cpt`, parsed (parseCheckpointList); undefined when there is none. */
  checkpointList?: readonly string[];
  /** The checkpoint directory (default `<target>/checkpoints`), for messages. */
  checkpointDir: string;
  /** Its `*.xml` files, parsed (parseCheckpointXml). */
  savedCheckpoints: readonly SavedCheckpoint[];
  /** The domain's checkpoints as libvirt has them now. */
  libvirtCheckpoints: readonly CheckpointLink[];
  /** `<name>` of the target directory's `vmconfig.*.xml` files, if the caller read them. */
  vmConfigNames?: readonly string[];
  now: Date;
}

export interface DiskTarget {
  disk: DomainDisk;
  /** Data file name in the target directory. */
  dataFile: string;
  /** 'stream': sparse stream format; 'raw': a plain image (raw-format disks, or `-t raw`). */
  streamType: OutputType;
  /** NBD meta context whose extents say what to copy. */
  metaContext: string;
  /** `<disk>.<ident>.qcow.json` (qemu-img info), for qcow2 disks. */
  qcowInfoFile?: string;
}

export interface CheckpointPlan {
  /**
   * The checkpoint the job creates (full, online inc); what the stream
   * metadata records as checkpointName in every case (virtnbdbackup.0 for
   * copy, the would-be next name for online diff, the last one offline).
   */
  name: string;
  /** The previous checkpoint: metadata parentCheckpoint; undefined for copy and full. */
  parent?: string;
  /** Whether the backup job creates `name` (and it is then saved and listed). */
  create: boolean;
  /** `<incremental>` of the backup job: online inc and diff. */
  incremental?: string;
  /** Offline inc and diff: the bitmap to export from the image (qemu-nbd -B). */
  bitmap?: string;
  /** Disks that get a bitmap in the new checkpoint. */
  disks: string[];
  /** The domain's other disks (checkpoint='no'). */
  skip: string[];
}

export interface PlanMessage {
  level: 'info' | 'warning';
  text: string;
}

export interface BackupPlan {
  requestedLevel: Level;
  /** What runs: auto resolved, full turned copy when offline or only raw disks. */
  level: DataLevel;
  offline: boolean;
  /** --raw as it applies (dropped for inc and diff). */
  raw: boolean;
  /** `<ident>` of this run's files: checkpoint name, Unix time (diff) or "copy". */
  ident: string;
  disks: DiskSelection;
  targets: DiskTarget[];
  /** Disks the backup job lists with backup='no'. */
  jobSkip: string[];
  checkpoint: CheckpointPlan;
  /** Saved checkpoints to redefine in libvirt first, parent before child. */
  redefine: SavedCheckpoint[];
  /** libvirt checkpoints to delete before a full backup, children first. */
  remove: string[];
  /** full: delete the saved checkpoint files and `<domain>.cpt` before starting. */
  resetCheckpointFiles: boolean;
  /** `<domain>.cpt`. */
  checkpointListFile: string;
  /** Disks backed up at once. */
  workers: number;
  /** To log, in order; warnings count for --strict. */
  messages: PlanMessage[];
}

const BASE_ALLOCATION = 'base:allocation';

function visible(files: readonly string[]): string[] {
  return files.filter((f) => !f.startsWith('.'));
}

/** A data file, or its checksum or partial file: what virtnbdbackup globs as `*.data*`. */
const DATA_FILE = /\.data($|\.)/;

/** virtnbdbackup's "target is not empty": a data, checksum or partial data file. */
export function hasDataFiles(files: readonly string[]): boolean {
  return visible(files).some((f) => DATA_FILE.test(f));
}

/** A `*.full.data` file. */
export function hasFullBackup(files: readonly string[]): boolean {
  return visible(files).some((f) => f.endsWith('.full.data'));
}

export function partialFiles(files: readonly string[]): string[] {
  return visible(files).filter((f) => f.endsWith('.partial'));
}

function checkOptions(input: BackupPlanInput): void {
  const fail = (text: string): never => {
    throw new BackupPlanError('invalid-options', text);
  };
  if (input.stdout && input.type === 'raw') fail('Output type raw (-t raw) cannot be written to stdout (-o -).');
  if (input.stdout && input.raw) fail('Raw disk images (--raw) cannot be written to stdout (-o -).');
  if (input.compress !== false && input.type === 'raw') fail('Compression (-z) is not supported with output type raw (-t raw).');
}

function checkOwnership(input: BackupPlanInput): void {
  const name = input.domain.name;
  const own = checkpointListFileName(name);
  const otherCpt = input.stdout ? [] : visible(input.targetFiles).filter((f) => f.endsWith('.cpt') && f !== own);
  const fail = (evidence: string): never => {
    throw new BackupPlanError(
      'other-domain',
      `Target directory ${input.targetDir} holds backups of another domain (${evidence}), not of ${name}: use a separate directory per domain.`,
    );
  };
  if (otherCpt.length > 0) fail(`checkpoint list ${otherCpt[0]}`);
  const vmName = input.vmConfigNames?.find((n) => n !== name);
  if (vmName !== undefined) fail(`its saved configuration names domain ${vmName}`);
  const saved = input.savedCheckpoints.find((c) => c.domainName !== undefined && c.domainName !== name);
  if (saved !== undefined) {
    throw new BackupPlanError(
      'other-domain',
      `Checkpoint directory ${input.checkpointDir} holds checkpoint ${saved.name} of domain ${saved.domainName}, not of ${name}: use a separate directory per domain.`,
    );
  }
}

/** auto → full or inc; target directory and partial-file checks. */
function resolveLevel(input: BackupPlanInput, info: (text: string) => void): DataLevel {
  const files = input.targetFiles;
  const dir = input.targetDir;
  let level: BackupLevel = input.level;
  if (level === 'auto') {
    if (!hasDataFiles(files)) {
      info('Backup level auto: the target directory holds no backup yet, running a full backup.');
      level = 'full';
    } else if (!hasFullBackup(files)) {
      throw new BackupPlanError(
        'no-full-backup',
        `Backup level auto cannot continue with an incremental backup: target directory ${dir} holds backup data but no full backup (*.full.data).`,
      );
    } else {
      info('Backup level auto: running an incremental backup.');
      level = 'inc';
    }
  } else if ((level === 'full' || level === 'copy') && !input.stdout && !input.startOnly && !input.killOnly) {
    const existing = visible(files).find((f) => DATA_FILE.test(f));
    if (existing !== undefined) {
      throw new BackupPlanError(
        'target-not-empty',
        `Target directory ${dir} already contains a backup (${existing}): a ${level} backup needs an empty directory.`,
      );
    }
  }
  if ((level === 'inc' || level === 'diff') && !input.stdout) {
    const partial = partialFiles(files);
    if (partial.length > 0) {
      throw new BackupPlanError(
        'partial-backup',
        `Target directory ${dir} holds a partial backup (${partial[0]}): one of the last backups failed. Run a new full backup.`,
      );
    }
    if (!hasFullBackup(files)) {
      throw new BackupPlanError(
        'no-full-backup',
        `Cannot run ${level === 'inc' ? 'an incremental' : 'a differential'} backup: target directory ${dir} holds no full backup (*.full.data). Run a full backup first.`,
      );
    }
  }
  return level as DataLevel;
}

function removalOrder(links: readonly CheckpointLink[]): string[] {
  try {
    return orderParentFirst(links, new Set(links.map((l) => l.name)))
      .map((l) => l.name)
      .reverse();
  } catch {
    // libvirt's own links are consistent; if not, newest name first still works.
    return links.map((l) => l.name).sort(compareCheckpointNames).reverse();
  }
}

function formatTime(seconds: number): string {
  return new Date(seconds * 1000).toISOString();
}

interface Notes {
  info: (text: string) => void;
  warn: (text: string) => void;
}

interface ChainPlan {
  checkpoint: Omit<CheckpointPlan, 'disks' | 'skip'>;
  redefine: SavedCheckpoint[];
  remove: string[];
}

function broken(e: unknown): never {
  if (e instanceof CheckpointChainError) throw new BackupPlanError('broken-chain', `${e.message}. Run a full backup to start a new chain.`);
  throw e;
}

/** The saved checkpoints libvirt lacks that are ours, to redefine; others are ignored with a warning. */
function lostCheckpoints(input: BackupPlanInput, notes: Notes): SavedCheckpoint[] {
  const libvirtNames = new Set(input.libvirtCheckpoints.map((c) => c.name));
  const lost = input.savedCheckpoints.filter((c) => !libvirtNames.has(c.name));
  for (const c of lost.filter((c) => !isOwnCheckpoint(c.name))) {
    notes.warn(`Ignoring saved checkpoint ${c.name} in ${input.checkpointDir}: not made by virtnbdbackup.`);
  }
  return lost.filter((c) => isOwnCheckpoint(c.name));
}

/**
 * full: redefine what libvirt lost (so deleting it removes its bitmaps
 * too), delete all of ours, create virtnbdbackup.0.
 */
function planFullChain(input: BackupPlanInput, notes: Notes): ChainPlan {
  const libvirtNames = new Set(input.libvirtCheckpoints.map((c) => c.name));
  let redefine: SavedCheckpoint[] = [];
  try {
    redefine = orderParentFirst(lostCheckpoints(input, notes), libvirtNames);
  } catch (e) {
    if (!(e instanceof CheckpointChainError)) throw e;
    notes.warn(`Saved checkpoints cannot be redefined (${e.message}); their bitmaps may stay in the disk images.`);
  }
  const ours = [...input.libvirtCheckpoints.filter((c) => isOwnCheckpoint(c.name)), ...redefine];
  return { checkpoint: { name: checkpointName(0), create: true }, redefine, remove: removalOrder(ours) };
}

/** inc and diff: continue the chain `<domain>.cpt` lists, or say why it cannot be. */
function planIncrementalChain(input: BackupPlanInput, level: 'inc' | 'diff', offline: boolean, notes: Notes): ChainPlan {
  const domainName = input.domain.name;
  const listFile = checkpointListFileName(domainName);
  const list = input.checkpointList ?? [];
  if (list.length === 0) {
    throw new BackupPlanError('no-checkpoints', `No checkpoint found in ${input.targetDir}/${listFile}: run a full backup first.`);
  }
  const parent = list[list.length - 1];
  const links = new Map<string, CheckpointLink>();
  for (const c of input.libvirtCheckpoints) links.set(c.name, c);
  for (const c of input.savedCheckpoints) links.set(c.name, c);
  try {
    verifyChain(list, links, listFile);
  } catch (e) {
    broken(e);
  }
  for (const name of list) {
    const saved = input.savedCheckpoints.find((c) => c.name === name);
    const live = input.libvirtCheckpoints.find((c) => c.name === name);
    if (saved?.creationTime !== undefined && live?.creationTime !== undefined && saved.creationTime !== live.creationTime) {
      throw new BackupPlanError(
        'chain-mismatch',
        `Checkpoint ${name} of domain ${domainName} (created ${formatTime(live.creationTime)}) is not the one this backup set saved ` +
          `(created ${formatTime(saved.creationTime)}): another backup chain has replaced the domain's checkpoints. Run a full backup.`,
      );
    }
  }
  if (offline) {
    // No job, no new checkpoint: the parent's bitmap is read from the image.
    notes.info(`Domain ${domainName} is not running: saving what changed since checkpoint ${parent} from its bitmap.`);
    return { checkpoint: { name: parent, parent, bitmap: parent, create: false }, redefine: [], remove: [] };
  }
  const libvirtNames = new Set(input.libvirtCheckpoints.map((c) => c.name));
  let redefine: SavedCheckpoint[] = [];
  try {
    redefine = orderParentFirst(lostCheckpoints(input, notes), libvirtNames);
  } catch (e) {
    broken(e);
  }
  if (!libvirtNames.has(parent) && !redefine.some((c) => c.name === parent)) {
    throw new BackupPlanError(
      'broken-chain',
      `Checkpoint ${parent}, the last one in ${listFile}, is not defined for domain ${domainName} and ${input.checkpointDir}/${parent}.xml is missing: ` +
        'the chain cannot continue. Run a full backup.',
    );
  }
  const name = checkpointName(list.length);
  if (level === 'inc' && libvirtNames.has(name)) {
    throw new BackupPlanError(
      'chain-mismatch',
      `Domain ${domainName} already has checkpoint ${name}, which ${listFile} does not list: ` +
        "the domain's checkpoints belong to another backup set. Run a full backup.",
    );
  }
  return { checkpoint: { name, parent, incremental: parent, create: level === 'inc' }, redefine, remove: [] };
}

function planChain(input: BackupPlanInput, level: DataLevel, offline: boolean, notes: Notes): ChainPlan {
  if (level === 'full') return planFullChain(input, notes);
  if (level === 'inc' || level === 'diff') return planIncrementalChain(input, level, offline, notes);
  // copy: no checkpoint; virtnbdbackup still records virtnbdbackup.0 in the metadata.
  return { checkpoint: { name: checkpointName(0), create: false }, redefine: [], remove: [] };
}

/** File name, stream type and extent source of one disk. `offlineBitmap`: the bitmap read offline. */
function diskTarget(disk: DomainDisk, level: DataLevel, ident: string, offlineBitmap: string | undefined, type: OutputType): DiskTarget {
  // Disks without bitmaps are always saved whole, as copy files (virtnbdbackup).
  const fileLevel = (level === 'full' || level === 'copy') && !canHoldBitmap(disk) ? 'copy' : level;
  const incremental = fileLevel === 'inc' || fileLevel === 'diff';
  let metaContext = BASE_ALLOCATION;
  if (incremental) {
    // Online, the backup job exports the changes as bitmap backup-<dev>; offline, qemu-nbd exports the checkpoint's own bitmap.
    metaContext = offlineBitmap !== undefined ? `qemu:dirty-bitmap:${offlineBitmap}` : `qemu:dirty-bitmap:backup-${disk.target}`;
  }
  const target: DiskTarget = {
    disk,
    dataFile: dataFileName({ disk: disk.target, level: fileLevel, ...(incremental ? { ident } : {}) }),
    // Raw-format disks become plain images whatever -t says (virtnbdbackup).
    streamType: disk.format === 'raw' || disk.format === undefined ? 'raw' : type,
    metaContext,
  };
  if (canHoldBitmap(disk)) target.qcowInfoFile = qcowInfoFileName(disk.target, ident);
  return target;
}

/**
 * An offline inc creates no checkpoint, so it holds every change since the
 * last one, like a diff. virtnbdbackup 2.47 names it after that checkpoint,
 * `<disk>.inc.<checkpoint>.data`, which is the name of the online inc that
 * created the checkpoint: that file, and its changes, are silently
 * replaced. Ours adds the Unix time, `<disk>.inc.<checkpoint>.<time>.data`:
 * never an existing name. Restores order it by its metadata (checkpointName
 * equals parentCheckpoint: a delta, applied last on its checkpoint), and
 * virtnbdrestore 1.9.15 (which applies `<disk>*.data` by file time) applies
 * it after the files it follows.
 */
export function offlineIncIdent(checkpoint: string, at: Date): string {
  return `${checkpoint}.${Math.floor(at.getTime() / 1000)}`;
}

export function planBackup(input: BackupPlanInput): BackupPlan {
  const messages: PlanMessage[] = [];
  const info = (text: string): void => void messages.push({ level: 'info', text });
  const warn = (text: string): void => void messages.push({ level: 'warning', text });
  const domainName = input.domain.name;
  const listFile = checkpointListFileName(domainName);

  checkOptions(input);
  checkOwnership(input);
  let level = resolveLevel(input, info);

  let raw = input.raw;
  if (raw && (level === 'inc' || level === 'diff')) {
    warn('Raw disks cannot be part of incremental or differential backups: leaving them out.');
    raw = false;
  }
  if (input.type === 'raw' && (level === 'inc' || level === 'diff')) {
    throw new BackupPlanError('invalid-options', 'Output type raw (-t raw) cannot hold incremental or differential backups.');
  }

  if (level === 'full' || level === 'inc' || level === 'diff') {
    const foreign = input.libvirtCheckpoints.find((c) => !isOwnCheckpoint(c.name));
    if (foreign !== undefined) {
      throw new BackupPlanError(
        'foreign-checkpoint',
        `Domain ${domainName} has checkpoint ${foreign.name}, which was not created by virtnbdbackup: ` +
          'a backup chain is only consistent if this tool made all its checkpoints. ' +
          `Remove the domain's other checkpoints (virsh checkpoint-delete ${domainName} ${foreign.name}) and start a new chain with a full backup.`,
      );
    }
  }

  const offline = !input.running;
  if (offline && level === 'full') {
    warn(`Domain ${domainName} is not running: checkpoints need a running domain, so this full backup runs as a copy.`);
    level = 'copy';
  }

  const disks = selectDisks(input.domain.disks, { include: input.include, exclude: input.exclude, raw });
  for (const s of disks.skipped) (s.warn ? warn : info)(`Skipping disk ${s.disk.target}: ${s.reason}.`);
  if (disks.unmatched.length > 0) info(`No disk of domain ${domainName} is named ${disks.unmatched.join(', ')} (--include/--exclude).`);
  if (disks.backup.length === 0) {
    throw new BackupPlanError('no-disks', `Domain ${domainName} has no disk suitable for backup.`);
  }
  if (level !== 'copy' && !disks.backup.some(canHoldBitmap)) {
    info('Only disks without changed block tracking (raw) are selected: running a copy backup.');
    level = 'copy';
  }

  const bitmapDisks = disks.backup.filter(canHoldBitmap).map((d) => d.target);
  const chain = planChain(input, level, offline, { info, warn });
  const checkpoint: CheckpointPlan = {
    ...chain.checkpoint,
    disks: bitmapDisks,
    skip: input.domain.disks.map((d) => d.target).filter((t) => !bitmapDisks.includes(t)),
  };

  const ident = offline && level === 'inc' ? offlineIncIdent(checkpoint.name, input.now) : backupIdent(level, checkpoint.name, input.now);
  const targets = disks.backup.map((disk) => diskTarget(disk, level, ident, offline ? checkpoint.name : undefined, input.type));

  if (level === 'diff') {
    // A diff is named after the second it starts: two in one second would clash.
    const clash = targets.find((t) => input.targetFiles.includes(t.dataFile));
    if (clash !== undefined) {
      throw new BackupPlanError(
        'target-not-empty',
        `${clash.dataFile} exists already: a differential backup started within the same second. Wait a second and run it again.`,
      );
    }
  }

  if (offline && level === 'inc') {
    // Two offline incs in one second would share a name: refuse, as for diff.
    const clash = targets.find((t) => input.targetFiles.includes(t.dataFile));
    if (clash !== undefined) {
      throw new BackupPlanError(
        'target-not-empty',
        `${clash.dataFile} exists already: an offline incremental backup started within the same second. Wait a second and run it again.`,
      );
    }
  }

  let workers = input.worker === undefined ? targets.length : Math.min(Math.max(1, Math.trunc(input.worker)), targets.length);
  if (input.stdout) workers = 1;

  return {
    requestedLevel: input.level,
    level,
    offline,
    raw,
    ident,
    disks,
    targets,
    jobSkip: input.domain.disks.map((d) => d.target).filter((t) => !disks.backup.some((d) => d.target === t)),
    checkpoint,
    redefine: chain.redefine,
    remove: chain.remove,
    resetCheckpointFiles: level === 'full',
    checkpointListFile: listFile,
    workers,
    messages,
  };
}
