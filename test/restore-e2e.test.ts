/**
 * Our virtnbdrestore against backup sets Debian's virtnbdbackup 1.9.15 made
 * of a running VM: full, inc, inc, diff, diff (plain) and full, inc, diff
 * (compressed). The VM's disk is copied after every backup; restoring with
 * --until each checkpoint (and each diff's ident), without --until, and
 * with --sequence gives an image identical to the disk at that point
 * (`qemu-img compare`) and as thin as it (allocated bytes within 10%,
 * `qemu-img map`). No qemu-nbd and no socket survive a restore.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import test, { type ExecutionContext } from 'ava';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages, type PatternWrite } from './helpers/image.js';
import { run } from './helpers/exec.js';
import { peerBackup } from './helpers/peer.js';
import { allocatedBytes, leftovers, ourRestore, snapshotDisk } from './helpers/restore-check.js';
import type { TestVm } from './helpers/vm.js';

const PRE_BOOT: PatternWrite[] = [
  { pattern: 0x11, offset: 0, length: MiB },
  // Longer than QEMU's 32 MiB maximum NBD request: read (and compressed) in pieces.
  { pattern: 0x5a, offset: 16 * MiB, length: 40 * MiB },
  { pattern: 0x22, offset: 120 * MiB, length: 3 * MiB },
];

async function makeVm(t: ExecutionContext, host: TestHost): Promise<TestVm> {
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '256M', writes: PRE_BOOT });
  const random = host.path('random.bin');
  await run('dd', ['if=/dev/urandom', `of=${random}`, 'bs=1M', 'count=3', 'status=none']);
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -s ${random} ${100 * MiB} ${3 * MiB}`, image.path]);
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  return vm;
}

interface Point {
  /** --until value, or undefined for the whole chain. */
  until?: string;
  snapshot: string;
}

async function checkRestore(t: ExecutionContext, host: TestHost, set: string, point: Point, label: string): Promise<void> {
  const out = host.path(`out-${label}`);
  const r = await ourRestore(host.dir, ['-i', set, '-o', out, ...(point.until ? ['-u', point.until] : [])]);
  t.is(r.exitCode, 0, `${label}: ${r.stderr}`);
  const restored = join(out, 'vda.qcow2');
  const cmp = await compareImages(point.snapshot, restored);
  t.true(cmp.identical, `${label}: ${cmp.message}`);
  const [want, got] = await Promise.all([allocatedBytes(point.snapshot), allocatedBytes(restored)]);
  t.true(Math.abs(got - want) <= want * 0.1, `${label}: restored image allocates ${got} bytes, the disk ${want}`);
  t.deepEqual((await readdir(out)).sort(), ['vda.qcow2', 'vmconfig.xml'], `${label}: only the image and the config in the output`);
}

test('plain chain full, inc, inc, diff, diff: each point restored identical and thin', async (t) => {
  const host = await TestHost.create(t);
  const vm = await makeVm(t, host);
  const set = host.path('set');
  const backup = (level: 'full' | 'inc' | 'diff') => peerBackup({ domain: vm.name, level, output: set, workDir: host.dir });
  const points: Record<string, Point> = {};
  const snap = async (label: string, until?: string): Promise<void> => {
    const snapshot = host.path(`state-${label}.qcow2`);
    await snapshotDisk(vm, 'vda', snapshot);
    points[label] = { until, snapshot };
  };

  await backup('full');
  await snap('cp0', 'virtnbdbackup.0');
  await vm.writePattern('vda', { pattern: 0x33, offset: 200 * MiB, length: MiB });
  await vm.writePattern('vda', { pattern: 0x44, offset: 150 * MiB + 0x1234, length: 256 });
  await backup('inc');
  await snap('cp1', 'virtnbdbackup.1');
  // Overwrite older data and zero some of it: restore must not leave the old bytes.
  await vm.writePattern('vda', { pattern: 0x55, offset: 16 * MiB, length: 2 * MiB });
  await vm.writeZeroes('vda', 0, 512 * 1024);
  await backup('inc');
  await snap('cp2', 'virtnbdbackup.2');
  await vm.writePattern('vda', { pattern: 0x66, offset: 60 * MiB, length: MiB });
  await backup('diff');
  const firstDiff = (await readdir(set)).find((f) => /^vda\.diff\.\d+\.data$/.test(f))!;
  await snap('diff1', firstDiff.split('.')[2]);
  await sleep(1100); // diff files are named by the second
  await vm.writePattern('vda', { pattern: 0x77, offset: 61 * MiB, length: MiB });
  await vm.writePattern('vda', { pattern: 0x88, offset: 200 * MiB, length: 4096 });
  await backup('diff');
  await snap('diff2');

  const data = (await readdir(set)).filter((f) => f.endsWith('.data')).sort();
  t.is(data.length, 5, data.join(', '));
  for (const [label, point] of Object.entries(points)) await checkRestore(t, host, set, point, label);

  // --sequence: exactly the files given, named after the disk as virtnbdrestore does.
  const out = host.path('out-sequence');
  const r = await ourRestore(host.dir, ['-i', set, '-o', out, '-s', 'vda.full.data,vda.inc.virtnbdbackup.1.data']);
  t.is(r.exitCode, 0, r.stderr);
  const cmp = await compareImages(points.cp1!.snapshot, join(out, 'vda'));
  t.true(cmp.identical, `--sequence full,inc1: ${cmp.message}`);
  t.deepEqual(await leftovers(host.dir), [], 'no qemu-nbd, no work directory (sockets) left');
});

test('compressed chain full, inc, diff: restored identical and thin', async (t) => {
  const host = await TestHost.create(t);
  const vm = await makeVm(t, host);
  const set = host.path('set');
  const backup = (level: 'full' | 'inc' | 'diff') => peerBackup({ domain: vm.name, level, output: set, workDir: host.dir, compress: true });
  await backup('full');
  const cp0 = host.path('state-cp0.qcow2');
  await snapshotDisk(vm, 'vda', cp0);
  await vm.writePattern('vda', { pattern: 0x33, offset: 30 * MiB, length: 36 * MiB });
  await backup('inc');
  const cp1 = host.path('state-cp1.qcow2');
  await snapshotDisk(vm, 'vda', cp1);
  await vm.writePattern('vda', { pattern: 0x44, offset: 5 * MiB, length: MiB });
  await backup('diff');
  const last = host.path('state-last.qcow2');
  await snapshotDisk(vm, 'vda', last);
  await checkRestore(t, host, set, { until: 'virtnbdbackup.0', snapshot: cp0 }, 'z-cp0');
  await checkRestore(t, host, set, { until: 'virtnbdbackup.1', snapshot: cp1 }, 'z-cp1');
  await checkRestore(t, host, set, { snapshot: last }, 'z-last');
  t.deepEqual(await leftovers(host.dir), [], 'no qemu-nbd, no work directory (sockets) left');
});
