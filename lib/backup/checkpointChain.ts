/**
 * The checkpoint chain of a backup set: virtnbdbackup names its checkpoints
 * `virtnbdbackup.0`, `virtnbdbackup.1`, ... (the full backup makes .0, each
 * incremental the next), lists them in `<domain>.cpt` (a JSON array) and
 * keeps each one's XML in `checkpoints/<name>.xml`, whose `<parent><name>`
 * links it to the one before. Here: name rules, parsing the list, ordering
 * checkpoints parent before child (for redefinition: name order is wrong,
 * `.10` sorts before `.9`) and checking that a chain is whole. Pure, no I/O.
 */

/** Every checkpoint virtnbdbackup creates is `virtnbdbackup.<N>`. */
export const CHECKPOINT_PREFIX = 'virtnbdbackup';

const OWN_NAME = /^virtnbdbackup\.(0|[1-9]\d*)$/;

/** `virtnbdbackup.<index>`. */
export function checkpointName(index: number): string {
  if (!Number.isSafeInteger(index) || index < 0) throw new RangeError(`Invalid checkpoint index ${index}`);
  return `${CHECKPOINT_PREFIX}.${index}`;
}

/** N of `virtnbdbackup.N`, or undefined for any other name. */
export function checkpointIndex(name: string): number | undefined {
  const match = OWN_NAME.exec(name);
  return match ? Number(match[1]) : undefined;
}

/** Whether this tool (or virtnbdbackup) made the checkpoint, judged by its name. */
export function isOwnCheckpoint(name: string): boolean {
  return checkpointIndex(name) !== undefined;
}

/** Order names as people expect: `virtnbdbackup.9` before `virtnbdbackup.10`. */
export function compareCheckpointNames(a: string, b: string): number {
  const ia = checkpointIndex(a);
  const ib = checkpointIndex(b);
  if (ia !== undefined && ib !== undefined) return ia - ib;
  if (ia !== undefined) return -1;
  if (ib !== undefined) return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A checkpoint as far as the chain is concerned. */
export interface CheckpointLink {
  name: string;
  parent?: string;
  /** Seconds since the epoch. */
  creationTime?: number;
}

export type CheckpointChainProblem = 'invalid-list' | 'duplicate' | 'missing-parent' | 'cycle' | 'broken';

export class CheckpointChainError extends Error {
  override readonly name = 'CheckpointChainError';

  constructor(
    readonly problem: CheckpointChainProblem,
    /** The checkpoint (or file) the problem is about. */
    readonly checkpoint: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Parse `<domain>.cpt`: a JSON array of checkpoint names, oldest first.
 * `source` names the file in messages.
 */
export function parseCheckpointList(text: string, source: string): string[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new CheckpointChainError('invalid-list', source, `Invalid checkpoint list ${source}: not JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(value) || !value.every((v): v is string => typeof v === 'string' && v !== '')) {
    throw new CheckpointChainError('invalid-list', source, `Invalid checkpoint list ${source}: expected a JSON array of checkpoint names`);
  }
  const seen = new Set<string>();
  for (const name of value) {
    if (seen.has(name)) {
      throw new CheckpointChainError('duplicate', name, `Invalid checkpoint list ${source}: ${name} is listed twice`);
    }
    seen.add(name);
  }
  return value;
}

function byAge(a: CheckpointLink, b: CheckpointLink): number {
  if (a.creationTime !== undefined && b.creationTime !== undefined && a.creationTime !== b.creationTime) {
    return a.creationTime - b.creationTime;
  }
  return compareCheckpointNames(a.name, b.name);
}

/**
 * Order checkpoints so that every parent comes before its children, as
 * libvirt needs them when redefining. A parent may also be one of `existing`
 * (already defined in libvirt). Siblings (a tree, not a chain) are ordered
 * oldest first. Throws CheckpointChainError for duplicate names, a parent
 * that is neither in the list nor existing, and parent cycles.
 */
export function orderParentFirst<T extends CheckpointLink>(checkpoints: readonly T[], existing: ReadonlySet<string> = new Set()): T[] {
  const byName = new Map<string, T>();
  for (const cp of checkpoints) {
    if (byName.has(cp.name)) throw new CheckpointChainError('duplicate', cp.name, `Checkpoint ${cp.name} is defined twice`);
    byName.set(cp.name, cp);
  }
  const children = new Map<string, T[]>();
  const roots: T[] = [];
  for (const cp of checkpoints) {
    const parent = cp.parent;
    if (parent === undefined || (!byName.has(parent) && existing.has(parent))) {
      roots.push(cp);
    } else if (byName.has(parent)) {
      const list = children.get(parent) ?? [];
      list.push(cp);
      children.set(parent, list);
    } else {
      throw new CheckpointChainError(
        'missing-parent',
        cp.name,
        `Checkpoint ${cp.name} has parent ${parent}, which is neither saved nor defined in libvirt: the checkpoint chain is broken`,
      );
    }
  }
  const ordered: T[] = [];
  const queue = [...roots].sort(byAge);
  while (queue.length > 0) {
    const next = queue.shift() as T;
    ordered.push(next);
    queue.push(...(children.get(next.name) ?? []).sort(byAge));
  }
  if (ordered.length !== checkpoints.length) {
    const stuck = checkpoints.filter((cp) => !ordered.includes(cp)).map((cp) => cp.name).sort(compareCheckpointNames);
    throw new CheckpointChainError('cycle', stuck[0], `Checkpoints ${stuck.join(', ')} are their own ancestors: the checkpoint chain is corrupt`);
  }
  return ordered;
}

/**
 * Check that the names of `<domain>.cpt` form one chain: each checkpoint's
 * parent (as `links` knows it, from the saved XML or libvirt) is the one
 * listed before it, and the first has no parent. Names `links` does not know
 * are not judged here. Throws CheckpointChainError ('broken').
 */
export function verifyChain(list: readonly string[], links: ReadonlyMap<string, CheckpointLink>, source: string): void {
  list.forEach((name, i) => {
    const link = links.get(name);
    if (!link) return;
    const expected = i === 0 ? undefined : list[i - 1];
    if (link.parent !== expected) {
      const has = link.parent === undefined ? 'no parent' : `parent ${link.parent}`;
      const wants = expected === undefined ? 'none, as the first of the chain' : expected;
      throw new CheckpointChainError(
        'broken',
        name,
        `Checkpoint ${name} has ${has}, but ${source} lists ${wants} before it: the checkpoint chain is broken`,
      );
    }
  });
}
