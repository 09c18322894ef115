/**
 * Offline (shut-off) domains: after a full and an online inc, the VM is
 * stopped cleanly (`virsh destroy --graceful`), its image written with
 * qemu-io, and an inc of the stopped domain, read through qemu-nbd with the
 * newest checkpoint's bitmap, holds exactly the written ranges. It is named
 * `<disk>.inc.<checkpoint>.<unixtime>.data`, so the online inc that created
 * the checkpoint (the file virtnbdbackup 2.47 would overwrite with it) is
 * kept byte for byte; the set rebuilds to the image, and Debian's
 * virtnbdrestore 1.9.15 restores it identical too. An offline diff holds
 * every change since the checkpoint; full becomes copy with a warning; a
 * bitmap left in-use by an unclean stop fails with "full backup needed".
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import test from 'ava';
import { MiB, KiB, TestHost } from './helpers/host.js';
import { compareImages, writeImagePattern } from './helpers/image.js';
import { listFiles, peerRestore, restoredImagePath } from './helpers/peer.js';
import { virsh } from './helpers/virsh.js';
import { ourRestore } from './helpers/restore-check.js';
import { assertNothingLeft, dataFrameRanges, jobArgs, rebuildDisk, runBackup, streamMeta, type JobPaths } from './helpers/backup-run.js';

async function sha(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

test('offline inc and diff of a cleanly stopped domain hold exactly the offline writes and never replace the online inc', async (t) => {
  const host = await TestHost.create(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '128M', writes: [{ pattern: 0x11, offset: 0, length: 2 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }] });
  await vm.start();
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');

  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  await vm.writePattern('vda', { pattern: 0x22, offset: 8 * MiB, length: MiB });
  const inc = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set));
  t.is(inc.exitCode, 0, inc.stderr);
  const onlineInc = join(set, 'vda.inc.virtnbdbackup.1.data');
  const onlineSha = await sha(onlineInc);

  await vm.destroy({ graceful: true });
  t.false(await vm.isActive());
  await writeImagePattern(vda.path, 'qcow2', { pattern: 0x33, offset: 30 * MiB, length: MiB });
  await writeImagePattern(vda.path, 'qcow2', { pattern: 0x44, offset: 70 * MiB + 64 * KiB, length: 192 * KiB });

  const off = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set));
  t.is(off.exitCode, 0, off.stderr);
  t.regex(off.stderr, /offline backup/);
  const offFile = (await listFiles(set)).find((f) => /^vda\.inc\.virtnbdbackup\.1\.\d+\.data$/.test(f));
  t.truthy(offFile, `offline inc file: ${(await listFiles(set)).join(' ')}`);
  t.is(await sha(onlineInc), onlineSha, 'the online inc that created virtnbdbackup.1 is kept as it was');
  t.deepEqual(await dataFrameRanges(join(set, offFile!)), [
    { offset: 30 * MiB, length: MiB },
    { offset: 70 * MiB + 64 * KiB, length: 192 * KiB },
  ]);
  t.like(await streamMeta(join(set, offFile!)), { checkpointName: 'virtnbdbackup.1', parentCheckpoint: 'virtnbdbackup.1', incremental: true });
  t.deepEqual(JSON.parse(await readFile(join(set, `${vm.name}.cpt`), 'utf8')), ['virtnbdbackup.0', 'virtnbdbackup.1'], 'no checkpoint offline');

  // Our virtnbdrestore orders by metadata: the offline inc (checkpointName = parent: a delta) goes after the online inc.
  const ours = host.path('ours');
  const mine = await ourRestore(host.dir, ['-i', set, '-o', ours]);
  t.is(mine.exitCode, 0, mine.stderr);
  const oursCmp = await compareImages(vda.path, join(ours, 'vda.qcow2'));
  t.true(oursCmp.identical, `our virtnbdrestore of full + inc + offline inc: ${oursCmp.message}`);

  // The offline changes since virtnbdbackup.1 stay in its bitmap: a diff now holds both, and one more write.
  await writeImagePattern(vda.path, 'qcow2', { pattern: 0x55, offset: 100 * MiB, length: 64 * KiB });
  const diff = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'diff', '-o', set));
  t.is(diff.exitCode, 0, diff.stderr);
  const diffFile = (await listFiles(set)).find((f) => /^vda\.diff\.\d+\.data$/.test(f))!;
  t.deepEqual(await dataFrameRanges(join(set, diffFile)), [
    { offset: 30 * MiB, length: MiB },
    { offset: 70 * MiB + 64 * KiB, length: 192 * KiB },
    { offset: 100 * MiB, length: 64 * KiB },
  ]);

  const raw = host.path('rebuilt.raw');
  const chain = await rebuildDisk(set, 'vda', raw);
  t.deepEqual(chain, ['vda.full.data', 'vda.inc.virtnbdbackup.1.data', offFile!, diffFile]);
  const cmp = await compareImages(vda.path, raw, { formatA: 'qcow2', formatB: 'raw' });
  t.true(cmp.identical, cmp.message);

  const restored = host.path('restored');
  await peerRestore({ input: set, output: restored, workDir: host.dir });
  const peerCmp = await compareImages(vda.path, restoredImagePath(restored, vda));
  t.true(peerCmp.identical, `virtnbdrestore 1.9.15 of the set: ${peerCmp.message}`);

  // full of a stopped domain: a copy, with a warning.
  const copySet = host.path('copy');
  const copy = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', copySet));
  t.is(copy.exitCode, 0, copy.stderr);
  t.regex(copy.stderr, /WARNING .*not running: .*runs as a copy/);
  t.true((await listFiles(copySet)).includes('vda.copy.data'));
  const copyRaw = host.path('copy.raw');
  await rebuildDisk(copySet, 'vda', copyRaw);
  t.true((await compareImages(vda.path, copyRaw, { formatA: 'qcow2', formatB: 'raw' })).identical);
  t.false(await vm.isActive(), 'the domain stays stopped');
  await assertNothingLeft(t, undefined, paths, [set, copySet]);
  t.deepEqual((await listFiles(host.dir)).filter((f) => f.startsWith('backup.sock')), [], 'no qemu-nbd socket left');
});

test('a bitmap left in-use by an unclean stop: the offline inc fails asking for a full backup', async (t) => {
  const host = await TestHost.create(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: [{ pattern: 0x11, offset: 0, length: MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }] });
  await vm.start();
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  // QEMU stores a new persistent bitmap in the image only when it closes it: stop cleanly, start again (QEMU marks it in-use).
  await vm.destroy({ graceful: true });
  await vm.start();
  await vm.writePattern('vda', { pattern: 0x22, offset: 8 * MiB, length: MiB });
  // SIGKILL to this test's own QEMU (virsh destroy sends SIGTERM first, which QEMU survives long enough to store its
  // bitmaps cleanly): the persistent bitmap keeps its in-use flag, as after a host crash.
  const pid = Number((await readFile(`/run/libvirt/qemu/${vm.name}.pid`, 'utf8')).trim());
  process.kill(pid, 'SIGKILL');
  while (await vm.isActive()) await new Promise((r) => setTimeout(r, 100));
  const before = await listFiles(set);
  const r = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set));
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stderr, /ERROR Bitmap virtnbdbackup\.0 in image .* is inconsistent .*A full backup is needed/);
  t.deepEqual(
    (await listFiles(set)).filter((f) => !f.startsWith('backup.')),
    before.filter((f) => !f.startsWith('backup.')),
    'nothing written',
  );
  await assertNothingLeft(t, undefined, paths, [set]);
});

test('-S starts a shut-off domain paused for an online full and inc, and leaves it stopped', async (t) => {
  const host = await TestHost.create(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: [{ pattern: 0x11, offset: 0, length: MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }] });
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set, '-S'));
  t.is(full.exitCode, 0, full.stderr);
  t.regex(full.stderr, /starting it paused for the backup \(-S\)/);
  t.true((await listFiles(set)).includes('vda.full.data'), 'a real full (not a copy): the domain ran');
  t.is(await vm.state(), 'shut off');
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0']);

  await writeImagePattern(vda.path, 'qcow2', { pattern: 0x66, offset: 20 * MiB, length: 128 * KiB });
  const inc = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set, '-S'));
  t.is(inc.exitCode, 0, inc.stderr);
  t.is(await vm.state(), 'shut off');
  t.deepEqual(await dataFrameRanges(join(set, 'vda.inc.virtnbdbackup.1.data')), [{ offset: 20 * MiB, length: 128 * KiB }]);
  const raw = host.path('rebuilt.raw');
  await rebuildDisk(set, 'vda', raw);
  t.true((await compareImages(vda.path, raw, { formatA: 'qcow2', formatB: 'raw' })).identical);
  await assertNothingLeft(t, undefined, paths, [set]);
});

test('UEFI domain with autostart, shut off: a copy warns that libvirt names no firmware files; with -S loader and nvram are saved', async (t) => {
  const host = await TestHost.create(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: [{ pattern: 0x31, offset: 4 * MiB, length: MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }], firmware: 'efi' });
  await vm.start(); // libvirt makes the nvram file from OVMF's template at the first start
  const live = await vm.dumpXml();
  const loaderPath = /<loader[^>]*>([^<]+)<\/loader>/.exec(live)![1]!;
  const nvramPath = /<nvram[^>]*>([^<]+)<\/nvram>/.exec(live)![1]!;
  await vm.destroy({ graceful: true });
  await virsh(['autostart', vm.name]);
  t.teardown(() => virsh(['autostart', '--disable', vm.name]).catch(() => undefined));
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };

  const offline = host.path('offline');
  const off = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'copy', '-o', offline));
  t.is(off.exitCode, 0, off.stderr);
  t.regex(off.stderr, /WARNING .*UEFI firmware is chosen by libvirt at start.*-S\/--start-domain/);
  t.true((await listFiles(offline)).includes('autostart.copy'));

  const set = host.path('set');
  const r = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'copy', '-o', set, '-S'));
  t.is(r.exitCode, 0, r.stderr);
  const files = await listFiles(set);
  for (const path of [loaderPath, nvramPath]) {
    const name = basename(path);
    t.true(files.includes(name), `${name} in ${files.join(' ')}`);
    if (files.includes(name)) t.is(await sha(join(set, name)), await sha(path), `${name} is a copy of ${path}`);
  }
  t.true(files.includes('autostart.copy'), files.join(' '));
  t.false(await vm.isActive(), '-S stopped it again');
  await assertNothingLeft(t, undefined, paths, [offline, set]);
});
