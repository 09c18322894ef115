/**
 * Restore chain planning (pure): the order comes from the metadata
 * (checkpointName, parentCheckpoint, date) whatever order the files are
 * given in; diffs are cumulative, so only the newest after the last inc is
 * applied; --until stops at a checkpoint or a diff's ident; --sequence is
 * checked; holes are refused naming the missing checkpoint.
 */
import test from 'ava';
import { createMetadata } from '../lib/format/metadata.js';
import { parseDataFileName } from '../lib/format/naming.js';
import { chainRole, planDiskChain, planSequence, StreamingChain, type ChainFile } from '../lib/restore/chain.js';
import { ChainError } from '../lib/restore/errors.js';

let clock = 0;
/** A data file as virtnbdbackup names and describes it; dates increase in creation order. */
function file(name: string, checkpointName: string, parent: string, opts: { date?: string; disk?: string } = {}): ChainFile {
  const parsed = parseDataFileName(name)!;
  clock += 1;
  const date = opts.date ?? `2026-11-30T10:${String(Math.floor(clock / 60)).padStart(2, '0')}:${String(clock % 60).padStart(2, '0')}.000001`;
  return {
    file: name,
    name: parsed,
    metadata: createMetadata({
      virtualSize: 1 << 30,
      dataSize: 1 << 20,
      diskName: opts.disk ?? parsed.disk,
      diskFormat: 'qcow2',
      checkpointName,
      parentCheckpoint: parent,
      incremental: parsed.level === 'inc' || parsed.level === 'diff',
      date,
    }),
  };
}

const cp = (n: number): string => `virtnbdbackup.${n}`;
const names = (files: readonly ChainFile[]): string[] => files.map((f) => f.file);

function chainOf() {
  const full = file('vda.full.data', cp(0), '');
  const inc1 = file('vda.inc.virtnbdbackup.1.data', cp(1), cp(0));
  const inc2 = file('vda.inc.virtnbdbackup.2.data', cp(2), cp(1));
  // virtnbdbackup 1.9.15 records a diff's checkpointName as the would-be next checkpoint.
  const diff1 = file('vda.diff.1764500000.data', cp(3), cp(2));
  const diff2 = file('vda.diff.1764500100.data', cp(3), cp(2));
  return { full, inc1, inc2, diff1, diff2 };
}

test('roles come from the metadata; a diff is told from an inc by its name', (t) => {
  const { full, inc1, diff1 } = chainOf();
  t.is(chainRole(full), 'base');
  t.is(chainRole(inc1), 'inc');
  t.is(chainRole(diff1), 'delta');
  // An offline incremental backup creates no checkpoint: it records its parent's.
  t.is(chainRole(file('vda.inc.virtnbdbackup.1.data', cp(1), cp(1))), 'delta');
});

test('order from metadata, whatever order the files come in; only the newest diff is applied', (t) => {
  const { full, inc1, inc2, diff1, diff2 } = chainOf();
  for (const order of [
    [full, inc1, inc2, diff1, diff2],
    [diff2, inc2, diff1, full, inc1],
    [inc2, inc1, diff2, diff1, full],
  ]) {
    const plan = planDiskChain('vda', order);
    t.deepEqual(names(plan.steps), names([full, inc1, inc2, diff2]));
    t.is(plan.checkpoint, cp(2));
    t.true(plan.notes.some((n) => n.startsWith(diff1.file)), 'the superseded diff is noted');
  }
});

test('file names and times do not order the chain: renamed idents still restore by parent links', (t) => {
  // Checkpoint names that sort wrongly as text (10 before 9) and dates that lie are not used for incs.
  const full = file('vda.full.data', cp(8), '');
  const inc9 = file('vda.inc.virtnbdbackup.9.data', cp(9), cp(8), { date: '2026-11-30T12:00:00' });
  const inc10 = file('vda.inc.virtnbdbackup.10.data', cp(10), cp(9), { date: '2026-11-30T11:00:00' });
  t.deepEqual(names(planDiskChain('vda', [inc10, full, inc9]).steps), names([full, inc9, inc10]));
});

test('--until a checkpoint stops after the file that created it; diffs after it are left out', (t) => {
  const { full, inc1, inc2, diff1, diff2 } = chainOf();
  const all = [diff2, diff1, inc2, inc1, full];
  t.deepEqual(names(planDiskChain('vda', all, { until: cp(0) }).steps), names([full]));
  t.deepEqual(names(planDiskChain('vda', all, { until: cp(1) }).steps), names([full, inc1]));
  t.deepEqual(names(planDiskChain('vda', all, { until: cp(2) }).steps), names([full, inc1, inc2]));
});

test('--until a diff ident applies that diff, not a newer one', (t) => {
  const { full, inc1, inc2, diff1, diff2 } = chainOf();
  const all = [full, inc1, inc2, diff1, diff2];
  t.deepEqual(names(planDiskChain('vda', all, { until: '1764500000' }).steps), names([full, inc1, inc2, diff1]));
  t.deepEqual(names(planDiskChain('vda', all, { until: '1764500100' }).steps), names([full, inc1, inc2, diff2]));
});

test('--until works when diff and inc files are mixed: a diff between incs', (t) => {
  const full = file('vda.full.data', cp(0), '');
  const inc1 = file('vda.inc.virtnbdbackup.1.data', cp(1), cp(0));
  const diffA = file('vda.diff.1764500000.data', cp(2), cp(1));
  const inc2 = file('vda.inc.virtnbdbackup.2.data', cp(2), cp(1));
  const diffB = file('vda.diff.1764500300.data', cp(3), cp(2));
  const all = [diffB, inc2, diffA, inc1, full];
  t.deepEqual(names(planDiskChain('vda', all).steps), names([full, inc1, inc2, diffB]));
  t.deepEqual(names(planDiskChain('vda', all, { until: cp(2) }).steps), names([full, inc1, inc2]));
  t.deepEqual(names(planDiskChain('vda', all, { until: '1764500000' }).steps), names([full, inc1, diffA]));
  t.deepEqual(names(planDiskChain('vda', all, { until: cp(1) }).steps), names([full, inc1]));
});

test('a hole (missing inc) is refused naming the missing checkpoint', (t) => {
  const { full, inc2, diff2 } = chainOf();
  const error = t.throws(() => planDiskChain('vda', [full, inc2, diff2]), { instanceOf: ChainError });
  t.is(error.problem, 'hole');
  t.is(error.checkpoint, cp(1));
  t.regex(error.message, /checkpoint virtnbdbackup\.1 was created by no data file/);
  t.regex(error.message, /vda\.inc\.virtnbdbackup\.2\.data continues from it/);
  // Up to before the hole is fine.
  t.deepEqual(names(planDiskChain('vda', [full, inc2, diff2], { until: cp(0) }).steps), names([full]));
  // A diff hanging off a missing checkpoint is a hole too.
  const { inc1 } = chainOf();
  const lone = file('vda.diff.1764509999.data', cp(5), cp(4));
  t.is(t.throws(() => planDiskChain('vda', [full, inc1, lone]), { instanceOf: ChainError }).checkpoint, cp(4));
});

test('a wrong --until is refused, listing what the set has', (t) => {
  const { full, inc1 } = chainOf();
  const error = t.throws(() => planDiskChain('vda', [full, inc1], { until: 'virtnbdbackup.7' }), { instanceOf: ChainError });
  t.is(error.problem, 'unknown-until');
  t.regex(error.message, /--until virtnbdbackup\.7/);
  t.regex(error.message, /virtnbdbackup\.0, virtnbdbackup\.1/);
  t.regex(
    t.throws(() => planDiskChain('vda', [full, inc1, file('vda.diff.1764500000.data', cp(2), cp(1))], { until: 'nope' }))!.message,
    /1764500000 \(diff\)/,
  );
});

test('no full backup, two full backups, two incs on one checkpoint: refused', (t) => {
  const { full, inc1, inc2 } = chainOf();
  t.is(t.throws(() => planDiskChain('vda', [inc1, inc2]), { instanceOf: ChainError }).problem, 'no-base');
  t.is(t.throws(() => planDiskChain('vda', [full, file('vda.copy.data', cp(0), '')]), { instanceOf: ChainError }).problem, 'conflict');
  const fork = file('vda.inc.virtnbdbackup.1b.data', 'virtnbdbackup.1b', cp(0));
  t.is(t.throws(() => planDiskChain('vda', [full, inc1, fork]), { instanceOf: ChainError }).problem, 'conflict');
});

test('--sequence: exactly the files given, checked for one disk and parent links', (t) => {
  const { full, inc1, inc2, diff1 } = chainOf();
  t.deepEqual(names(planSequence([full, inc1, inc2, diff1]).steps), names([full, inc1, inc2, diff1]));
  t.deepEqual(names(planSequence([full, inc1, inc2], { until: cp(1) }).steps), names([full, inc1]));
  const skip = t.throws(() => planSequence([full, inc2]), { instanceOf: ChainError });
  t.is(skip.problem, 'sequence');
  t.regex(skip.message, /continues from checkpoint virtnbdbackup\.1, but the files before it end at checkpoint virtnbdbackup\.0/);
  t.regex(t.throws(() => planSequence([inc1, full]))!.message, /must start with a full or copy backup/);
  const other = file('vdb.inc.virtnbdbackup.1.data', cp(1), cp(0));
  t.regex(t.throws(() => planSequence([full, other]))!.message, /mixes disks/);
});

test('streaming: files that arrive before their parent wait; late old diffs are skipped', (t) => {
  const { full, inc1, inc2, diff1, diff2 } = chainOf();
  const chain = new StreamingChain('vda');
  t.is(chain.offer(inc2).action, 'defer');
  t.is(chain.offer(full).action, 'apply');
  t.deepEqual(chain.ready(), []);
  t.is(chain.offer(inc1).action, 'apply');
  t.deepEqual(names(chain.ready()), names([inc2]));
  t.is(chain.offer(diff2).action, 'apply');
  t.is(chain.offer(diff1).action, 'skip', 'an older diff after a newer one would bring back old data');
  t.deepEqual(names(chain.finish().steps), names([full, inc1, inc2, diff2]));
});

test('streaming: --until skips everything after the target; a hole is found at the end', (t) => {
  const { full, inc1, inc2, diff1 } = chainOf();
  const until = new StreamingChain('vda', { until: cp(1) });
  for (const f of [full, inc1]) t.is(until.offer(f).action, 'apply');
  t.true(until.finished);
  for (const f of [inc2, diff1]) t.is(until.offer(f).action, 'skip');
  t.deepEqual(names(until.finish().steps), names([full, inc1]));

  const holed = new StreamingChain('vda');
  holed.offer(full);
  t.is(holed.offer(inc2).action, 'defer');
  const error = t.throws(() => holed.finish(), { instanceOf: ChainError });
  t.is(error.checkpoint, cp(1));
});

test('metadata naming another disk than the stream of this disk is refused', (t) => {
  const chain = new StreamingChain('vda');
  t.throws(() => chain.offer(file('vda.full.data', cp(0), '', { disk: 'vdb' })), { instanceOf: ChainError, message: /holds disk vdb/ });
});
