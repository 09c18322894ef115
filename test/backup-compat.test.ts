/**
 * Our virtnbdbackup against Debian's virtnbdbackup 1.9.15, end to end with
 * a running VM:
 *
 * - Debian's virtnbdrestore restores the full + inc + diff sets our CLI
 *   makes (plain and `-z`) to images identical to the VM's disk as it was
 *   at the inc, the first diff (`-u`) and the last diff. 1.9.15's virtnbdrestore handles diff files:
 *   it applies every `<disk>*.data` file in mtime order, and stops after the
 *   file whose metadata names the `-u` checkpoint; a diff records the next
 *   checkpoint's name (virtnbdbackup.2 after virtnbdbackup.1), as 1.9.15 does.
 * - Our inc continues a chain Debian's virtnbdbackup started, and Debian's
 *   inc continues ours (even after libvirt lost every checkpoint, so that it
 *   must redefine them from the checkpoint files we wrote): the .cpt list
 *   and checkpoints/*.xml stay in the format the peer reads, each inc saves
 *   only what changed since the previous one, and Debian's virtnbdrestore
 *   and our stream parser both rebuild the disk identical.
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages, type PatternWrite } from './helpers/image.js';
import { run } from './helpers/exec.js';
import { peerBackup, peerRestore, restoredImagePath } from './helpers/peer.js';
import { peekStream, type PeekFrame } from './helpers/stream-peek.js';
import { chainFiles, flushDisk, ourBackup, rebuildRaw, snapshotDisk } from './helpers/our-backup.js';
import { virsh } from './helpers/virsh.js';
import type { TestVm } from './helpers/vm.js';

const PRE_BOOT: PatternWrite[] = [
  { pattern: 0x11, offset: 0, length: MiB },
  // Longer than QEMU's 32 MiB maximum NBD request: read (and compressed) in two pieces.
  { pattern: 0x5a, offset: 16 * MiB, length: 34 * MiB },
];

/** A 128 MiB qcow2 disk with PRE_BOOT and 1 MiB of random bytes (so -z has real work), in a running firmware-only VM. */
async function runningVm(t: ExecutionContext): Promise<{ host: TestHost; vm: TestVm }> {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '128M', writes: PRE_BOOT });
  const random = host.path('random.bin');
  await writeFile(random, randomBytes(MiB));
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -s ${random} ${100 * MiB} ${MiB}`, image.path]);
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  return { host, vm };
}

/** Data frames of a stream file: [offset, length] pairs. */
async function dataRanges(file: string): Promise<[number, number][]> {
  return peekStream(await readFile(file))
    .frames.filter((f: PeekFrame) => f.kind === 'data')
    .map((f) => [f.offset, f.length]);
}

async function assertSame(t: ExecutionContext, restored: string, expected: string, what: string, formatA?: 'raw'): Promise<void> {
  const cmp = await compareImages(restored, expected, { formatA });
  t.true(cmp.identical, `${what}: ${cmp.message}`);
}

/** Waits until the Unix time (a diff backup's ident) moves on, so two diffs never share a file name. */
async function nextSecond(): Promise<void> {
  const now = Math.floor(Date.now() / 1000);
  while (Math.floor(Date.now() / 1000) === now) await new Promise((r) => setTimeout(r, 50));
}

const ourSetRestoredByPeer = test.macro(async (t, compress: boolean) => {
  const { host, vm } = await runningVm(t);
  const set = host.path('set');
  const extra = compress ? ['-z'] : [];

  // Each backup is one point; the writes before it are what it must carry. A copy of the
  // disk's state at each point we restore to is kept to compare with.
  await ourBackup(host, vm, 'full', set, extra);

  await vm.writePattern('vda', { pattern: 0x33, offset: 100 * MiB, length: MiB });
  await vm.writePattern('vda', { pattern: 0x44, offset: 70 * MiB + 0x1234, length: 256 });
  // Zeroed since the full: the inc must make the restore read zeros here, not the full's 0x5a.
  await vm.writeZeroes('vda', 20 * MiB, 2 * MiB);
  await ourBackup(host, vm, 'inc', set, extra);
  const atInc = await snapshotDisk(vm, host.path('at-inc.qcow2'));

  await vm.writePattern('vda', { pattern: 0x55, offset: 64 * MiB, length: 3 * MiB });
  await ourBackup(host, vm, 'diff', set, extra);
  const atDiff1 = await snapshotDisk(vm, host.path('at-diff1.qcow2'));

  // A second diff is again relative to virtnbdbackup.1: it holds both diffs' writes.
  await nextSecond();
  await vm.writePattern('vda', { pattern: 0x66, offset: 110 * MiB, length: 64 * 1024 });
  await ourBackup(host, vm, 'diff', set, extra);
  const atDiff2 = await snapshotDisk(vm, host.path('at-diff2.qcow2'));

  const files = await chainFiles(set);
  t.is(files.length, 4, files.join(', '));
  t.deepEqual(files.slice(0, 2), ['vda.full.data', 'vda.inc.virtnbdbackup.1.data']);
  t.regex(files[2]!, /^vda\.diff\.\d{10}\.data$/);
  t.deepEqual(
    await dataRanges(join(set, files[1]!)),
    [
      [20 * MiB, 2 * MiB],
      [70 * MiB, 64 * 1024],
      [100 * MiB, MiB],
    ],
    'inc: only the clusters written since the full, the zeroed range as data',
  );
  t.deepEqual(await dataRanges(join(set, files[2]!)), [[64 * MiB, 3 * MiB]], 'first diff: only the write after the inc');
  t.deepEqual(
    await dataRanges(join(set, files[3]!)),
    [
      [64 * MiB, 3 * MiB],
      [110 * MiB, 64 * 1024],
    ],
    'second diff: every write since the inc',
  );
  t.is(await readFile(join(set, `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0", "virtnbdbackup.1"]', 'diffs add no checkpoint');

  // Debian's virtnbdrestore at the points after the inc, after the first diff (`-u virtnbdbackup.2`
  // stops there: both diffs name virtnbdbackup.2) and at the end. The full alone is the peer's
  // plain full restore, covered by test/peer.test.ts and implied by these.
  const points = [
    { until: 'virtnbdbackup.1', state: atInc },
    { until: 'virtnbdbackup.2', state: atDiff1 },
    { until: undefined, state: atDiff2 },
  ];
  for (const [i, p] of points.entries()) {
    const out = host.path(`restored-${i}`);
    await peerRestore({ input: set, output: out, workDir: host.dir, until: p.until });
    await assertSame(t, restoredImagePath(out, vm.disk('vda').image), p.state, `virtnbdrestore ${p.until ? `-u ${p.until}` : '(whole chain)'}`);
  }
  await flushDisk(vm);
  await assertSame(t, atDiff2, vm.disk('vda').image.path, 'the last point is the VM disk now');

  // Our own stream parser reads the set the same way.
  const raw = await rebuildRaw(set, host.path('ours.raw'));
  await assertSame(t, raw, atDiff2, 'our parser rebuilding full + inc + diffs', 'raw');
});

test('Debian virtnbdrestore restores our full + inc + diff set, point in time too', ourSetRestoredByPeer, false);
test('Debian virtnbdrestore restores our compressed (-z) full + inc + diff set, point in time too', ourSetRestoredByPeer, true);

test('our inc continues a chain Debian virtnbdbackup started, and Debian inc continues ours', async (t) => {
  const { host, vm } = await runningVm(t);
  const set = host.path('set');
  const peer = { domain: vm.name, output: set, workDir: host.dir };

  await peerBackup({ ...peer, level: 'full' });

  const write1 = { pattern: 0x33, offset: 100 * MiB, length: MiB };
  await vm.writePattern('vda', write1);
  await ourBackup(host, vm, 'inc', set);
  const atOurInc = await snapshotDisk(vm, host.path('at-our-inc.qcow2'));
  t.deepEqual(await dataRanges(join(set, 'vda.inc.virtnbdbackup.1.data')), [[write1.offset, write1.length]], 'our inc: only the write since the peer full');

  // The .cpt list exactly as Python's json.dumps writes it (the peer json.loads it).
  t.is(await readFile(join(set, `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0", "virtnbdbackup.1"]');
  const ourCpt = await readFile(join(set, 'checkpoints', 'virtnbdbackup.1.xml'), 'utf8');
  t.regex(ourCpt, /^<domaincheckpoint>/);
  t.regex(ourCpt, /<name>virtnbdbackup\.1<\/name>/);
  t.regex(ourCpt, /<parent>\s*<name>virtnbdbackup\.0<\/name>\s*<\/parent>/);
  t.regex(ourCpt, /<disk name='vda' checkpoint='bitmap' bitmap='virtnbdbackup\.1'/);

  // libvirt forgets every checkpoint (bitmaps stay in QEMU): the peer's inc must redefine ours from checkpoints/.
  await virsh(['checkpoint-delete', vm.name, 'virtnbdbackup.0', '--children', '--metadata']);
  t.deepEqual(await vm.checkpoints(), []);
  const write2 = { pattern: 0x66, offset: 8 * MiB, length: 2 * MiB };
  await vm.writePattern('vda', write2);
  const peerInc = await peerBackup({ ...peer, level: 'inc' });
  t.regex(peerInc.stderr, /Redefine missing checkpoint: \[virtnbdbackup\.1\]/);
  // Our checkpoint file and the peer's for the same kind of backup (an inc) have the same shape.
  const peerCpt = await readFile(join(set, 'checkpoints', 'virtnbdbackup.2.xml'), 'utf8');
  t.deepEqual(topLevelElements(ourCpt), topLevelElements(peerCpt));
  t.deepEqual(topLevelElements(ourCpt), ['creationTime', 'description', 'disks', 'domain', 'name', 'parent']);
  t.deepEqual(await dataRanges(join(set, 'vda.inc.virtnbdbackup.2.data')), [[write2.offset, write2.length]], 'peer inc after ours: only the write since ours');

  // And ours once more after the peer's.
  const write3 = { pattern: 0x77, offset: 120 * MiB, length: 64 * 1024 };
  await vm.writePattern('vda', write3);
  await ourBackup(host, vm, 'inc', set);
  const atEnd = await snapshotDisk(vm, host.path('at-end.qcow2'));
  t.deepEqual(await dataRanges(join(set, 'vda.inc.virtnbdbackup.3.data')), [[write3.offset, write3.length]]);
  t.is(await readFile(join(set, `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0", "virtnbdbackup.1", "virtnbdbackup.2", "virtnbdbackup.3"]');
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0', 'virtnbdbackup.1', 'virtnbdbackup.2', 'virtnbdbackup.3']);
  t.deepEqual(await chainFiles(set), ['vda.full.data', 'vda.inc.virtnbdbackup.1.data', 'vda.inc.virtnbdbackup.2.data', 'vda.inc.virtnbdbackup.3.data']);

  // Debian's virtnbdrestore at our inc (peer full + our inc) and at the end; our parser at both too.
  for (const [until, state] of [
    ['virtnbdbackup.1', atOurInc],
    [undefined, atEnd],
  ] as const) {
    const out = host.path(`restored-${until ?? 'all'}`);
    await peerRestore({ input: set, output: out, workDir: host.dir, until });
    await assertSame(t, restoredImagePath(out, vm.disk('vda').image), state, `virtnbdrestore of the mixed chain ${until ? `-u ${until}` : '(whole)'}`);
  }
  const files = await chainFiles(set);
  await assertSame(t, await rebuildRaw(set, host.path('ours-1.raw'), files.slice(0, 2)), atOurInc, 'our parser on peer full + our inc', 'raw');
  await assertSame(t, await rebuildRaw(set, host.path('ours-3.raw')), atEnd, 'our parser on the mixed chain', 'raw');
  await flushDisk(vm);
  await assertSame(t, atEnd, vm.disk('vda').image.path, 'the last point is the VM disk now');
});

/** Names of the root element's children, sorted, e.g. ['creationTime', 'disks', 'name', 'parent']. */
function topLevelElements(xml: string): string[] {
  const body = /^<domaincheckpoint>([\s\S]*)<\/domaincheckpoint>\s*$/.exec(xml.trim())?.[1] ?? '';
  const names = new Set<string>();
  let depth = 0;
  for (const m of body.matchAll(/<(\/?)([A-Za-z][\w-]*)[^>]*?(\/?)>/g)) {
    if (m[1]) depth--;
    else {
      if (depth === 0) names.add(m[2]!);
      if (!m[3]) depth++;
    }
  }
  return [...names].sort();
}
