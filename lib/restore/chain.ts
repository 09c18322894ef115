/**
 * The order in which one disk's data files are applied to rebuild it, from
 * their metadata (checkpointName, parentCheckpoint, date), never from file
 * names' order or file times (a copied backup set has new mtimes). Pure.
 *
 * Roles:
 * - base: a full or copy backup (metadata `incremental: false`); it creates
 *   the chain's first checkpoint (its checkpointName).
 * - inc: an incremental backup that created a new checkpoint
 *   (checkpointName) and holds every change since its parentCheckpoint.
 * - delta: a differential backup, or an offline incremental one (its
 *   checkpointName equals its parent: it created nothing). It holds every
 *   change since its parent checkpoint, so of several deltas on the same
 *   checkpoint the newest has all the others have, and an inc continuing
 *   from that checkpoint has it all too. Deltas never extend the chain.
 *   The file name's level (`.diff.`) is what tells a diff from an inc:
 *   virtnbdbackup records a diff's checkpointName as the would-be next one.
 *
 * `--until X` stops after the file that created checkpoint X, or, when X
 * is a diff's ident (the Unix time in its name), after that diff.
 *
 * StreamingChain decides file by file, in arrival order (a zip read from a
 * pipe): apply now, skip (superseded, or past --until) or defer (its parent
 * checkpoint has not been reached yet). planDiskChain runs it over all
 * files of a disk at once, oldest first, and keeps only what matters: a
 * delta followed by any other step is dropped, since that step has all
 * the delta has. A hole (a checkpoint no file created, that a later file
 * continues from) is refused, naming the missing checkpoint.
 */
import type { DataFileName } from '../format/naming.js';
import type { StreamMetadata } from '../format/metadata.js';
import { ChainError } from './errors.js';

/** One stream-format data file of a backup set. */
export interface ChainFile {
  /** Name in the backup set (relative path or zip entry name), for messages. */
  file: string;
  /** What the name says (disk, level, ident). */
  name: DataFileName;
  metadata: StreamMetadata;
}

export type ChainRole = 'base' | 'inc' | 'delta';

/** The files to apply to one disk's new image, in order. */
export interface DiskChain {
  disk: string;
  steps: ChainFile[];
  /** The last checkpoint the steps reach (a base's or an inc's). */
  checkpoint: string;
  /** What was left out and why, for the log. */
  notes: string[];
}

export interface ChainOptions {
  /** Stop after this checkpoint, or after the diff with this ident. */
  until?: string;
}

export type ChainDecision =
  | { action: 'apply'; role: ChainRole }
  | { action: 'skip'; reason: string }
  | { action: 'defer' };

function parentOf(f: ChainFile): string {
  const p = f.metadata.parentCheckpoint;
  return p === false ? '' : p;
}

/** A file's role, from its metadata (and, for diff versus inc, its name's level). */
export function chainRole(f: ChainFile): ChainRole {
  const m = f.metadata;
  if (!m.incremental) return 'base';
  const disk = m.diskName || f.name.disk;
  if (parentOf(f) === '') {
    throw new ChainError('inconsistent', disk, `${f.file} is an incremental backup without a parent checkpoint in its metadata; it cannot be placed in a chain`);
  }
  if (f.name.level === 'diff' || m.checkpointName === '' || m.checkpointName === parentOf(f)) return 'delta';
  return 'inc';
}

/** Older first: by metadata date, then (for dates alike or missing) by the ident's number, then by name. */
export function compareAge(a: ChainFile, b: ChainFile): number {
  if (a.metadata.date !== b.metadata.date) {
    if (a.metadata.date === '' || b.metadata.date === '') return a.metadata.date === '' ? -1 : 1;
    return a.metadata.date < b.metadata.date ? -1 : 1;
  }
  const ia = Number(a.name.ident ?? '');
  const ib = Number(b.name.ident ?? '');
  if (Number.isFinite(ia) && Number.isFinite(ib) && ia !== ib) return ia - ib;
  return a.file < b.file ? -1 : a.file > b.file ? 1 : 0;
}

/** The disk a file belongs to: its metadata's diskName (the name's disk for old streams without one). */
export function diskOf(f: ChainFile): string {
  return f.metadata.diskName || f.name.disk;
}

/** Incremental, file-by-file chain decisions for one disk. */
export class StreamingChain {
  private base: ChainFile | undefined;
  private current = '';
  /** Checkpoints reached so far, in order. */
  private readonly reached: string[] = [];
  /** The newest delta applied on the current checkpoint. */
  private lastDelta: ChainFile | undefined;
  private readonly applied: ChainFile[] = [];
  private deferred: ChainFile[] = [];
  private readonly seen = new Set<string>();
  private done = false;
  readonly notes: string[] = [];

  constructor(
    readonly disk: string,
    private readonly options: ChainOptions = {},
  ) {}

  /** The until target has been applied: every further file is skipped. */
  get finished(): boolean {
    return this.done;
  }

  /** Decide what to do with `f`, which arrived now. Throws ChainError for a file that can never fit. */
  offer(f: ChainFile): ChainDecision {
    if (diskOf(f) !== this.disk) {
      throw new ChainError('inconsistent', this.disk, `${f.file} holds disk ${diskOf(f)}, not ${this.disk}`);
    }
    const role = chainRole(f);
    if (role === 'delta') {
      if (f.name.level === 'diff' && f.name.ident !== undefined) this.seen.add(`${f.name.ident} (diff)`);
    } else if (f.metadata.checkpointName !== '') {
      this.seen.add(f.metadata.checkpointName);
    }
    const decision = this.decide(f);
    if (decision.action === 'apply') this.record(f, decision.role);
    else if (decision.action === 'defer') this.deferred.push(f);
    else this.notes.push(`${f.file}: ${decision.reason}`);
    return decision;
  }

  /** Files deferred earlier that can be applied now, oldest first; each is recorded as applied. */
  ready(): ChainFile[] {
    const out: ChainFile[] = [];
    let progress = true;
    while (progress) {
      progress = false;
      const waiting = [...this.deferred].sort(compareAge);
      this.deferred = [];
      for (const f of waiting) {
        const decision = this.decide(f);
        if (decision.action === 'defer') {
          this.deferred.push(f);
          continue;
        }
        progress = true;
        if (decision.action === 'apply') {
          this.record(f, decision.role);
          out.push(f);
        } else {
          this.notes.push(`${f.file}: ${decision.reason}`);
        }
      }
    }
    return out;
  }

  /** All files have been offered: the chain as applied, or a ChainError for a hole, a missing base or an unknown --until. */
  finish(): DiskChain {
    this.ready();
    if (!this.base) {
      const files = [...this.applied, ...this.deferred].map((f) => f.file);
      throw new ChainError(
        'no-base',
        this.disk,
        `No full or copy backup of disk ${this.disk} in the backup set` + (files.length ? ` (found only ${files.join(', ')})` : '') + ': nothing to start the restore from',
      );
    }
    if (this.deferred.length > 0) throw this.holeError();
    const until = this.options.until;
    if (until !== undefined && !this.done) {
      throw new ChainError(
        'unknown-until',
        this.disk,
        `--until ${until}: no backup of disk ${this.disk} created checkpoint ${until}, and no differential backup of it has that ident. ` +
          `Known: ${this.known().join(', ') || 'none'}`,
        until,
      );
    }
    return { disk: this.disk, steps: [...this.applied], checkpoint: this.current, notes: [...this.notes] };
  }

  /** Checkpoints created and diff idents among the files offered, for messages. */
  private known(): string[] {
    return [...this.seen];
  }

  private holeError(): ChainError {
    // The missing checkpoint: a parent that deferred files continue from and no file created.
    const created = new Set([...this.reached, ...this.deferred.filter((f) => chainRole(f) === 'inc').map((f) => f.metadata.checkpointName)]);
    const waiting = [...this.deferred].sort(compareAge);
    const orphan = waiting.find((f) => !created.has(parentOf(f))) ?? waiting[0]!;
    const missing = parentOf(orphan);
    return new ChainError(
      'hole',
      this.disk,
      `The backup chain of disk ${this.disk} has a hole: checkpoint ${missing} was created by no data file in the backup set, ` +
        `but ${orphan.file} continues from it. The chain ends at checkpoint ${this.current}` +
        `; restore up to there with --until ${this.current}, or supply the missing file`,
      missing,
    );
  }

  private decide(f: ChainFile): ChainDecision {
    if (this.done) return { action: 'skip', reason: `after --until ${this.options.until}` };
    const role = chainRole(f);
    const until = this.options.until;
    if (role === 'base') {
      if (this.base) {
        throw new ChainError(
          'conflict',
          this.disk,
          `Disk ${this.disk} has two full or copy backups in the set: ${this.base.file} and ${f.file}; restore one with --sequence`,
        );
      }
      return { action: 'apply', role };
    }
    if (!this.base) return { action: 'defer' };
    const parent = parentOf(f);
    if (role === 'inc') {
      if (parent === this.current) return { action: 'apply', role };
      if (this.reached.includes(parent)) {
        const next = this.applied.find((a) => chainRole(a) === 'inc' && parentOf(a) === parent);
        throw new ChainError(
          'conflict',
          this.disk,
          `${f.file} and ${next?.file ?? 'another file'} both continue checkpoint ${parent} of disk ${this.disk}: the set mixes two backup chains`,
          parent,
        );
      }
      return { action: 'defer' };
    }
    // delta
    const isUntil = until !== undefined && f.name.level === 'diff' && f.name.ident === until;
    if (parent === this.current) {
      if (this.lastDelta && compareAge(f, this.lastDelta) <= 0 && !isUntil) {
        return { action: 'skip', reason: `superseded by the newer ${this.lastDelta.file}` };
      }
      return { action: 'apply', role };
    }
    if (this.reached.includes(parent)) {
      const next = this.applied.find((a) => chainRole(a) === 'inc' && parentOf(a) === parent);
      return { action: 'skip', reason: `superseded by ${next?.file ?? 'a later incremental backup'}` };
    }
    return { action: 'defer' };
  }

  private record(f: ChainFile, role: ChainRole): void {
    this.applied.push(f);
    const until = this.options.until;
    if (role === 'base') {
      this.base = f;
      this.current = f.metadata.checkpointName;
      this.reached.push(this.current);
      this.lastDelta = undefined;
      if (until !== undefined && until === this.current) this.done = true;
    } else if (role === 'inc') {
      this.current = f.metadata.checkpointName;
      if (this.reached.includes(this.current)) {
        throw new ChainError('conflict', this.disk, `${f.file} creates checkpoint ${this.current} of disk ${this.disk} a second time: the chain loops`, this.current);
      }
      this.reached.push(this.current);
      this.lastDelta = undefined;
      if (until !== undefined && until === this.current) this.done = true;
    } else {
      this.lastDelta = f;
      if (until !== undefined && f.name.level === 'diff' && f.name.ident === until) this.done = true;
    }
  }
}

/**
 * Plan one disk's restore from all its data files (any order): the base,
 * the incs in checkpoint order, and the newest delta on the last
 * checkpoint; stopping at --until. Throws ChainError (hole, no base,
 * conflict, unknown --until) before anything is written.
 */
export function planDiskChain(disk: string, files: readonly ChainFile[], options: ChainOptions = {}): DiskChain {
  const chain = new StreamingChain(disk, options);
  for (const f of [...files].sort(compareAge)) chain.offer(f);
  const planned = chain.finish();
  // A delta followed by another step is superseded by it.
  const steps: ChainFile[] = [];
  const notes = [...planned.notes];
  planned.steps.forEach((f, i) => {
    if (i < planned.steps.length - 1 && chainRole(f) === 'delta') {
      notes.push(`${f.file}: superseded by the newer ${planned.steps[i + 1]!.file}`);
    } else {
      steps.push(f);
    }
  });
  return { ...planned, steps, notes };
}

/**
 * `--sequence`: exactly these files, in this order, checked to be one
 * disk's chain: a base first, then each file continuing from the
 * checkpoint reached so far. Stops after --until if given.
 */
export function planSequence(files: readonly ChainFile[], options: ChainOptions = {}): DiskChain {
  if (files.length === 0) throw new ChainError('sequence', '', '--sequence lists no files');
  const first = files[0]!;
  const disk = diskOf(first);
  if (chainRole(first) !== 'base') {
    throw new ChainError('sequence', disk, `--sequence must start with a full or copy backup; ${first.file} is an incremental or differential one`);
  }
  let current = first.metadata.checkpointName;
  const steps: ChainFile[] = [first];
  const notes: string[] = [];
  let done = options.until !== undefined && options.until === current;
  for (const f of files.slice(1)) {
    if (done) {
      notes.push(`${f.file}: after --until ${options.until}`);
      continue;
    }
    if (diskOf(f) !== disk) {
      throw new ChainError('sequence', disk, `--sequence mixes disks: ${f.file} holds disk ${diskOf(f)}, ${first.file} holds ${disk}`);
    }
    const role = chainRole(f);
    if (role === 'base') throw new ChainError('sequence', disk, `--sequence holds a second full or copy backup: ${f.file}`);
    const parent = parentOf(f);
    if (parent !== current) {
      throw new ChainError(
        'sequence',
        disk,
        `--sequence is not a chain: ${f.file} continues from checkpoint ${parent}, but the files before it end at checkpoint ${current}`,
        parent,
      );
    }
    steps.push(f);
    if (role === 'inc') current = f.metadata.checkpointName;
    if (options.until !== undefined && (current === options.until || (f.name.level === 'diff' && f.name.ident === options.until))) done = true;
  }
  if (options.until !== undefined && !done) {
    throw new ChainError('unknown-until', disk, `--until ${options.until}: no file of the --sequence created checkpoint ${options.until}`, options.until);
  }
  return { disk, steps, checkpoint: current, notes };
}
