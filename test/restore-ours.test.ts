/**
 * Round trips with our own virtnbdbackup: full, inc, inc, diff of a
 * running VM (plain, and compressed), restored by our virtnbdrestore to
 * images identical to the VM's disk at each point (--until each checkpoint,
 * and the whole chain) and as thin; and Debian's virtnbdrestore 1.9.15
 * restores the same sets identically (compatibility in that direction).
 */
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages, type PatternWrite } from './helpers/image.js';
import { ourBackup, snapshotDisk } from './helpers/our-backup.js';
import { peerRestore } from './helpers/peer.js';
import { allocatedBytes, leftovers, ourRestore } from './helpers/restore-check.js';

const PRE_BOOT: PatternWrite[] = [
  { pattern: 0x11, offset: 0, length: MiB },
  { pattern: 0x5a, offset: 16 * MiB, length: 40 * MiB },
];

async function restoredEquals(t: ExecutionContext, host: TestHost, label: string, set: string, until: string | undefined, snapshot: string): Promise<void> {
  const out = host.path(`ours-${label}`);
  const r = await ourRestore(host.dir, ['-i', set, '-o', out, ...(until ? ['-u', until] : [])]);
  t.is(r.exitCode, 0, `${label}: ${r.stderr}`);
  const restored = join(out, 'vda.qcow2');
  const cmp = await compareImages(snapshot, restored);
  t.true(cmp.identical, `our restore ${label}: ${cmp.message}`);
  const [want, got] = await Promise.all([allocatedBytes(snapshot), allocatedBytes(restored)]);
  t.true(Math.abs(got - want) <= want * 0.1, `${label}: restored image allocates ${got} bytes, the disk ${want}`);
}

async function peerRestoredEquals(t: ExecutionContext, host: TestHost, label: string, set: string, until: string | undefined, snapshot: string): Promise<void> {
  const out = host.path(`peer-${label}`);
  await peerRestore({ input: set, output: out, workDir: host.dir, until });
  const cmp = await compareImages(snapshot, join(out, 'vda.qcow2'));
  t.true(cmp.identical, `Debian's virtnbdrestore ${label}: ${cmp.message}`);
}

for (const compressed of [false, true]) {
  const kind = compressed ? 'compressed' : 'plain';
  test(`our ${kind} full, inc, inc, diff: our restore and Debian's restore give the disk at each point`, async (t) => {
    const host = await TestHost.create(t);
    const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '256M', writes: PRE_BOOT });
    const vm = await host.defineVm({ disks: [{ image }] });
    await vm.start();
    const set = host.path('set');
    const extra = compressed ? ['-z'] : [];
    const snap = (name: string) => snapshotDisk(vm, host.path(`state-${name}.qcow2`));

    await ourBackup(host, vm, 'full', set, extra);
    const cp0 = await snap('cp0');
    await vm.writePattern('vda', { pattern: 0x33, offset: 100 * MiB, length: 2 * MiB });
    await ourBackup(host, vm, 'inc', set, extra);
    const cp1 = await snap('cp1');
    await vm.writePattern('vda', { pattern: 0x44, offset: 20 * MiB, length: MiB });
    await vm.writeZeroes('vda', 0, 256 * 1024);
    await ourBackup(host, vm, 'inc', set, extra);
    const cp2 = await snap('cp2');
    await vm.writePattern('vda', { pattern: 0x55, offset: 101 * MiB, length: MiB });
    await ourBackup(host, vm, 'diff', set, extra);
    const last = await snap('last');

    // Every point for the plain set; the compressed one shares the code below the stream layer, so fewer.
    if (!compressed) await restoredEquals(t, host, 'cp0', set, 'virtnbdbackup.0', cp0);
    await restoredEquals(t, host, 'cp1', set, 'virtnbdbackup.1', cp1);
    if (!compressed) await restoredEquals(t, host, 'cp2', set, 'virtnbdbackup.2', cp2);
    await restoredEquals(t, host, 'last', set, undefined, last);
    // Debian's virtnbdrestore applies files by mtime and stops at a checkpoint name.
    if (!compressed) await peerRestoredEquals(t, host, 'cp1', set, 'virtnbdbackup.1', cp1);
    await peerRestoredEquals(t, host, 'last', set, undefined, last);
    // Our sets carry .chksum files: verify passes.
    const verify = await ourRestore(host.dir, ['-i', set, '-o', 'verify']);
    t.is(verify.exitCode, 0, verify.stderr);
    t.notRegex(verify.stderr, /No checksum found/);
    t.deepEqual(await leftovers(host.dir), []);
  });
}
