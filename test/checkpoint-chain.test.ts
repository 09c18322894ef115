import test from 'ava';
import {
  CheckpointChainError,
  checkpointIndex,
  checkpointName,
  compareCheckpointNames,
  isOwnCheckpoint,
  orderParentFirst,
  parseCheckpointList,
  verifyChain,
  type CheckpointLink,
} from '../lib/backup/checkpointChain.js';

/** virtnbdbackup.0 ... virtnbdbackup.<n-1>, each the parent of the next. */
function chain(n: number): CheckpointLink[] {
  return Array.from({ length: n }, (_, i) => ({
    name: checkpointName(i),
    ...(i > 0 ? { parent: checkpointName(i - 1) } : {}),
    creationTime: 1_700_000_000 + i * 86_400,
  }));
}

test('checkpoint names: virtnbdbackup.N and nothing else is ours', (t) => {
  t.is(checkpointName(0), 'virtnbdbackup.0');
  t.is(checkpointName(11), 'virtnbdbackup.11');
  t.is(checkpointIndex('virtnbdbackup.10'), 10);
  for (const name of ['virtnbdbackup', 'virtnbdbackup.', 'virtnbdbackup.01', 'virtnbdbackup.1a', 'xvirtnbdbackup.1', 'snap1', 'virtnbdbackup.-1']) {
    t.false(isOwnCheckpoint(name), name);
  }
  t.throws(() => checkpointName(-1), { instanceOf: RangeError });
});

test('names sort by number: .9 before .10 and .11', (t) => {
  const names = ['virtnbdbackup.10', 'virtnbdbackup.2', 'virtnbdbackup.11', 'virtnbdbackup.9', 'virtnbdbackup.0', 'virtnbdbackup.1'];
  t.deepEqual([...names].sort(compareCheckpointNames), [
    'virtnbdbackup.0',
    'virtnbdbackup.1',
    'virtnbdbackup.2',
    'virtnbdbackup.9',
    'virtnbdbackup.10',
    'virtnbdbackup.11',
  ]);
});

test('12 checkpoints in any order (as a directory listing gives them) come out parent first: .10 and .11 after .9', (t) => {
  const links = chain(12);
  // Name order of the files in checkpoints/: .0 .1 .10 .11 .2 ... .9, and creation times shuffled away.
  const listing = [...links].sort((a, b) => (a.name < b.name ? -1 : 1)).map(({ name, parent }) => ({ name, parent }));
  t.is(listing[2].name, 'virtnbdbackup.10');
  const ordered = orderParentFirst(listing).map((c) => c.name);
  t.deepEqual(
    ordered,
    links.map((c) => c.name),
  );
  // Every parent precedes its child.
  for (const [i, name] of ordered.entries()) {
    const parent = listing.find((c) => c.name === name)?.parent;
    if (parent !== undefined) t.true(ordered.indexOf(parent) < i, `${parent} before ${name}`);
  }
});

test('only the missing tail of a chain: parents already in libvirt anchor it', (t) => {
  const missing = chain(12).slice(7).reverse();
  const existing = new Set(chain(7).map((c) => c.name));
  t.deepEqual(
    orderParentFirst(missing, existing).map((c) => c.name),
    ['virtnbdbackup.7', 'virtnbdbackup.8', 'virtnbdbackup.9', 'virtnbdbackup.10', 'virtnbdbackup.11'],
  );
});

test('a parent neither saved nor in libvirt breaks the chain', (t) => {
  const links = chain(5).filter((c) => c.name !== 'virtnbdbackup.2');
  const error = t.throws(() => orderParentFirst(links), { instanceOf: CheckpointChainError });
  t.is(error?.problem, 'missing-parent');
  t.is(error?.checkpoint, 'virtnbdbackup.3');
  t.regex(error?.message ?? '', /virtnbdbackup\.3 has parent virtnbdbackup\.2, which is neither saved nor defined in libvirt/);
});

test('duplicates and cycles are refused', (t) => {
  const dup = t.throws(() => orderParentFirst([...chain(2), { name: 'virtnbdbackup.1' }]), { instanceOf: CheckpointChainError });
  t.is(dup?.problem, 'duplicate');
  const cycle = t.throws(
    () =>
      orderParentFirst([
        { name: 'virtnbdbackup.0' },
        { name: 'virtnbdbackup.1', parent: 'virtnbdbackup.2' },
        { name: 'virtnbdbackup.2', parent: 'virtnbdbackup.1' },
      ]),
    { instanceOf: CheckpointChainError },
  );
  t.is(cycle?.problem, 'cycle');
  t.regex(cycle?.message ?? '', /virtnbdbackup\.1, virtnbdbackup\.2 are their own ancestors/);
});

test('siblings (a tree) are ordered oldest first after their parent', (t) => {
  const ordered = orderParentFirst([
    { name: 'b', parent: 'root', creationTime: 30 },
    { name: 'a', parent: 'root', creationTime: 20 },
    { name: 'root', creationTime: 10 },
  ]);
  t.deepEqual(
    ordered.map((c) => c.name),
    ['root', 'a', 'b'],
  );
});

test('the checkpoint list file: a JSON array of names', (t) => {
  t.deepEqual(parseCheckpointList('["virtnbdbackup.0", "virtnbdbackup.1"]', 'vm.cpt'), ['virtnbdbackup.0', 'virtnbdbackup.1']);
  t.deepEqual(parseCheckpointList('[]', 'vm.cpt'), []);
  for (const [text, message] of [
    ['', /vm\.cpt: not JSON/],
    ['{"a":1}', /expected a JSON array of checkpoint names/],
    ['["a", 3]', /expected a JSON array/],
    ['["a", ""]', /expected a JSON array/],
    ['["a", "a"]', /a is listed twice/],
  ] as const) {
    const error = t.throws(() => parseCheckpointList(text, 'vm.cpt'), { instanceOf: CheckpointChainError });
    t.regex(error?.message ?? '', message);
  }
});

test('verifyChain: the list and the saved parents agree', (t) => {
  const links = new Map(chain(12).map((c) => [c.name, c]));
  t.notThrows(() => verifyChain(chain(12).map((c) => c.name), links, 'vm.cpt'));
  // A list with a gap: .3's parent is .2, but the list puts .1 before it.
  const gap = ['virtnbdbackup.0', 'virtnbdbackup.1', 'virtnbdbackup.3'];
  const error = t.throws(() => verifyChain(gap, links, 'vm.cpt'), { instanceOf: CheckpointChainError });
  t.is(error?.problem, 'broken');
  t.is(error?.checkpoint, 'virtnbdbackup.3');
  t.regex(error?.message ?? '', /virtnbdbackup\.3 has parent virtnbdbackup\.2, but vm\.cpt lists virtnbdbackup\.1 before it/);
  // The first one must have no parent.
  const first = t.throws(() => verifyChain(['virtnbdbackup.1'], links, 'vm.cpt'), { instanceOf: CheckpointChainError });
  t.regex(first?.message ?? '', /lists none, as the first of the chain/);
  // Unknown names are not judged.
  t.notThrows(() => verifyChain(['virtnbdbackup.0', 'virtnbdbackup.99'], links, 'vm.cpt'));
});
