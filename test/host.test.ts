/**
 * The live test host, checked against itself: a VM on libvirtd, writes into
 * its running disk, a checkpoint, and a pull-mode incremental backup whose
 * dirty bitmap (read by nbdinfo) shows exactly what was written since the
 * checkpoint. This is what every live virtnbd test builds on.
 */
import { existsSync } from 'node:fs';
import test from 'ava';
import { KiB, MiB, TestHost } from './helpers/host.js';
import { QemuIoError } from './helpers/vm.js';
import { dataRanges, dirtyRanges, exportSize, isFilledWith, readExport } from './helpers/nbd-oracle.js';
import { listDomains } from './helpers/virsh.js';

const CLUSTER = 64 * KiB;

test('incremental pull backup exports exactly the ranges written since the checkpoint', async (t) => {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', {
    format: 'qcow2',
    size: '512M',
    writes: [
      { pattern: 0x11, offset: 0, length: MiB },
      { pattern: 0x22, offset: 64 * MiB, length: 192 * KiB },
    ],
  });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();

  // A full backup job that creates checkpoint cp1, as virtnbdbackup's full level does.
  const full = await vm.beginBackup({ checkpoint: 'cp1' });
  const fullVda = full.export('vda');
  t.is(fullVda.bitmap, undefined, 'a full job exports no bitmap');
  t.is(await exportSize(fullVda), 512 * MiB);
  t.deepEqual(await dataRanges(fullVda), [
    { offset: 0, length: MiB },
    { offset: 64 * MiB, length: 192 * KiB },
  ]);
  t.true(isFilledWith(await readExport(fullVda, 64 * MiB, 192 * KiB), 0x22));
  await full.abort();
  t.deepEqual(await vm.checkpoints(), ['cp1']);

  // After the checkpoint: 1 MiB aligned, and 256 bytes at an odd offset inside one cluster.
  const oddOffset = 300 * MiB + 0x1234;
  await vm.writePattern('vda', { pattern: 0x33, offset: 200 * MiB, length: MiB });
  await vm.writePattern('vda', { pattern: 0x44, offset: oddOffset, length: 256 });
  t.true(await vm.hasPattern('vda', { pattern: 0x33, offset: 200 * MiB, length: MiB }));
  t.false(await vm.hasPattern('vda', { pattern: 0x34, offset: 200 * MiB, length: MiB }));

  const inc = await vm.beginBackup({ incremental: 'cp1', checkpoint: 'cp2' });
  const vda = inc.export('vda');
  t.is(vda.bitmap, 'backup-vda');
  t.deepEqual(await dirtyRanges(vda, vda.bitmap!), [
    { offset: 200 * MiB, length: MiB },
    { offset: 300 * MiB, length: CLUSTER },
  ]);
  t.true(isFilledWith(await readExport(vda, 200 * MiB, MiB), 0x33));
  const cluster = await readExport(vda, 300 * MiB, CLUSTER);
  t.true(isFilledWith(cluster.subarray(0x1234, 0x1234 + 256), 0x44));
  t.true(isFilledWith(cluster.subarray(0, 0x1234), 0), 'bytes before the odd write stay zero');
  t.true(isFilledWith(cluster.subarray(0x1234 + 256), 0), 'bytes after the odd write stay zero');
  // The export is the whole disk at the job's start, not just the dirty part.
  t.true(isFilledWith(await readExport(vda, 0, MiB), 0x11));

  // Writes during the job go to the disk, not to the export (QEMU's copy-before-write).
  await vm.writePattern('vda', { pattern: 0x55, offset: 200 * MiB, length: 64 * KiB });
  t.true(isFilledWith(await readExport(vda, 200 * MiB, 64 * KiB), 0x33));

  await inc.abort();
  t.false(existsSync(inc.socket), 'libvirt removes the socket when the job ends');
  t.deepEqual(await vm.checkpoints(), ['cp1', 'cp2']);
  await vm.deleteCheckpoint('cp1');
  t.deepEqual(await vm.checkpoints(), ['cp2']);
});

test('raw and qcow2 disks side by side; live writes reach the named disk only', async (t) => {
  const host = await TestHost.create(t);
  const vdaImage = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M' });
  const vdbImage = await host.createImage('vdb.raw', {
    format: 'raw',
    size: 32 * MiB,
    writes: [{ pattern: 0xab, offset: 4 * MiB, length: MiB }],
  });
  const vm = await host.defineVm({ disks: [{ image: vdaImage }, { image: vdbImage }], machine: 'pc' });
  await vm.start();
  await vm.writePattern('vdb', { pattern: 0xcd, offset: 8 * MiB, length: 512 * KiB });

  // Raw disks cannot hold checkpoints, so this job is a full one without.
  const job = await vm.beginBackup();
  t.deepEqual([...job.exports.keys()].sort(), ['vda', 'vdb']);
  t.true(isFilledWith(await readExport(job.export('vdb'), 4 * MiB, MiB), 0xab));
  t.true(isFilledWith(await readExport(job.export('vdb'), 8 * MiB, 512 * KiB), 0xcd));
  t.true(isFilledWith(await readExport(job.export('vda'), 8 * MiB, 512 * KiB), 0));
  t.deepEqual(await dataRanges(job.export('vda')), []);
});

test('a live write qemu-io rejects is an error, not a silent no-op', async (t) => {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '16M' });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  const err = await t.throwsAsync(vm.writePattern('vda', { pattern: 0x33, offset: 32 * MiB, length: MiB }), {
    instanceOf: QemuIoError,
  });
  t.regex(err!.message, /write failed/);
  await t.throwsAsync(vm.writePattern('vdz', { pattern: 0x33, offset: 0, length: 512 }), { message: /no device alias for disk vdz|has no disk/ });
});

test('dispose removes the VM, its checkpoints, its job and the scratch dir', async (t) => {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '16M' });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  await vm.createCheckpoint('cp1');
  const job = await vm.beginBackup({ incremental: 'cp1' });
  t.true(existsSync(job.socket));
  t.true((await listDomains()).includes(vm.name));

  await host.dispose();

  t.false((await listDomains()).includes(vm.name));
  t.false(existsSync(host.dir));
  t.false(existsSync(vm.logPath));
});
