/**
 * Our virtnbdbackup end to end against running VMs: full, inc and diff of
 * a firmware-only VM with a qcow2 disk, a raw disk and a cdrom; each set
 * rebuilt in chain order equals the VM's disk; an incremental file holds
 * exactly the ranges written since the last checkpoint (64 KiB bitmap
 * granularity), zeroed ranges included; raw disks are skipped with a
 * warning, or saved whole as raw images with --raw; compressed sets
 * rebuild identically and restore with Debian's virtnbdrestore; `-o -`
 * streams a zip holding the same files. After every run: no job, socket,
 * scratch file or partial file.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { KiB, MiB, TestHost } from './helpers/host.js';
import { compareImages, imageInfo, type PatternWrite } from './helpers/image.js';
import { run } from './helpers/exec.js';
import { listFiles, peerRestore, restoredImagePath } from './helpers/peer.js';
import { virsh } from './helpers/virsh.js';
import { startSshd } from './helpers/sshd.js';
import type { TestVm } from './helpers/vm.js';
import { peekStream } from './helpers/stream-peek.js';
import {
  assertNothingLeft,
  dataFrameRanges,
  flushDisk,
  jobArgs,
  pythonAdler32,
  rebuildDisk,
  runBackup,
  streamMeta,
  type JobPaths,
} from './helpers/backup-run.js';

const CLUSTER = 64 * KiB;

const PRE_BOOT: PatternWrite[] = [
  { pattern: 0x11, offset: 0, length: MiB },
  // Longer than QEMU's 32 MiB maximum request: one data frame read (and compressed) in pieces.
  { pattern: 0x5a, offset: 16 * MiB, length: 40 * MiB },
];

const CDROM = `    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/></disk>`;

function jobPaths(host: TestHost): JobPaths {
  return { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
}

function sorted(names: string[]): string[] {
  return [...names].sort();
}

/** The set's files, with the run-stamped log names replaced by `backup.<level>.*.log`. */
async function setFiles(dir: string): Promise<string[]> {
  return (await listFiles(dir)).map((f) => f.replace(/^backup\.(\w+)\.\d{14}\.log$/, 'backup.$1.*.log')).sort();
}

/** Rebuild `disk` from the set in chain order and compare it with the VM's image (flushed first). */
async function assertRebuilds(t: ExecutionContext, vm: TestVm, set: string, disk: string, raw: string, expectFiles: string[]): Promise<void> {
  await flushDisk(vm, disk);
  const image = vm.disk(disk).image.path;
  const files = await rebuildDisk(set, disk, raw);
  t.deepEqual(files, expectFiles, 'chain order');
  const cmp = await compareImages(image, raw, { formatA: 'qcow2', formatB: 'raw' });
  t.true(cmp.identical, `${files.join(' + ')} rebuild the disk: ${cmp.message}`);
}

test('full, inc (after losing its checkpoint), diff and copy --raw of a VM with qcow2, raw and cdrom disks', async (t) => {
  const host = await TestHost.create(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '256M', writes: PRE_BOOT });
  const vdb = await host.createImage('vdb.raw', { format: 'raw', size: 32 * MiB, writes: [{ pattern: 0xab, offset: 4 * MiB, length: MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }, { image: vdb }], extraDevicesXml: CDROM });
  await vm.start();
  const paths = jobPaths(host);
  const set = host.path('set');

  // Full: vda only; vdb skipped with a warning, the cdrom with a note.
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  t.regex(full.stderr, /WARNING.*Skipping disk vdb: format raw/);
  t.regex(full.stderr, /INFO.*Skipping disk sda: cdrom/);
  t.deepEqual(await setFiles(set), sorted([
    'backup.full.*.log',
    'checkpoints/virtnbdbackup.0.xml',
    `${vm.name}.cpt`,
    'vda.full.data',
    'vda.full.data.chksum',
    'vda.virtnbdbackup.0.qcow.json',
    'vmconfig.virtnbdbackup.0.xml',
  ]));
  t.is(await readFile(join(set, `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0"]');
  t.is(Number(await readFile(join(set, 'vda.full.data.chksum'), 'utf8')), await pythonAdler32(join(set, 'vda.full.data')));
  const qemuInfo = (await run('qemu-img', ['info', vda.path, '--output', 'json', '--force-share'])).stdout.trim();
  t.is(await readFile(join(set, 'vda.virtnbdbackup.0.qcow.json'), 'utf8'), qemuInfo, 'qcow.json is qemu-img info, as qemu-img formats it');
  // virsh prints the XML libvirt returns plus a newline.
  t.is(await readFile(join(set, 'vmconfig.virtnbdbackup.0.xml'), 'utf8'), (await vm.dumpXml()).replace(/\n$/, ''), 'vmconfig is the live domain XML');
  const cp0 = await readFile(join(set, 'checkpoints/virtnbdbackup.0.xml'), 'utf8');
  t.regex(cp0, /<name>virtnbdbackup\.0<\/name>/);
  t.true(cp0.includes(`<name>${vm.name}</name>`), 'saved checkpoint holds its domain');
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0']);
  const meta0 = await streamMeta(join(set, 'vda.full.data'));
  t.like(meta0, { diskName: 'vda', diskFormat: 'qcow2', checkpointName: 'virtnbdbackup.0', parentCheckpoint: '', incremental: false, compressed: false, streamVersion: 2, virtualSize: 256 * MiB, dataSize: 41 * MiB });
  await assertRebuilds(t, vm, set, 'vda', host.path('full.raw'), ['vda.full.data']);
  await assertNothingLeft(t, vm, paths, [set]);

  // libvirt loses the checkpoint (metadata only, the bitmap stays): inc redefines it from the saved XML.
  await virsh(['checkpoint-delete', vm.name, 'virtnbdbackup.0', '--metadata']);
  t.deepEqual(await vm.checkpoints(), []);
  await vm.writePattern('vda', { pattern: 0x33, offset: 100 * MiB, length: MiB });
  await vm.writePattern('vda', { pattern: 0x44, offset: 150 * MiB + 0x1234, length: 256 });
  await vm.writeZeroes('vda', 20 * MiB, 2 * MiB); // changed, and now reads as zeros
  const inc = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set));
  t.is(inc.exitCode, 0, inc.stderr);
  t.regex(inc.stderr, /Redefining missing checkpoint \[virtnbdbackup\.0\]/);
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0', 'virtnbdbackup.1']);
  t.is(await readFile(join(set, `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0", "virtnbdbackup.1"]');
  t.deepEqual(await setFiles(set), sorted([
    'backup.full.*.log',
    'backup.inc.*.log',
    'checkpoints/virtnbdbackup.0.xml',
    'checkpoints/virtnbdbackup.1.xml',
    `${vm.name}.cpt`,
    'vda.full.data',
    'vda.full.data.chksum',
    'vda.inc.virtnbdbackup.1.data',
    'vda.inc.virtnbdbackup.1.data.chksum',
    'vda.virtnbdbackup.0.qcow.json',
    'vda.virtnbdbackup.1.qcow.json',
    'vmconfig.virtnbdbackup.0.xml',
    'vmconfig.virtnbdbackup.1.xml',
  ]));
  const incFile = join(set, 'vda.inc.virtnbdbackup.1.data');
  t.deepEqual(await dataFrameRanges(incFile), [
    { offset: 20 * MiB, length: 2 * MiB },
    { offset: 100 * MiB, length: MiB },
    { offset: 150 * MiB, length: CLUSTER },
  ]);
  t.like(await streamMeta(incFile), { checkpointName: 'virtnbdbackup.1', parentCheckpoint: 'virtnbdbackup.0', incremental: true, dataSize: 3 * MiB + CLUSTER });
  t.false(peekStream(await readFile(incFile)).frames.some((f) => f.kind === 'zero'), 'incremental streams have no zero frames');
  t.is(Number(await readFile(`${incFile}.chksum`, 'utf8')), await pythonAdler32(incFile));
  await assertRebuilds(t, vm, set, 'vda', host.path('inc.raw'), ['vda.full.data', 'vda.inc.virtnbdbackup.1.data']);
  await assertNothingLeft(t, vm, paths, [set]);

  // diff: changes since the last checkpoint, no new checkpoint, named by Unix time.
  await vm.writePattern('vda', { pattern: 0x55, offset: 64 * MiB, length: 2 * MiB });
  const before = Math.floor(Date.now() / 1000);
  // --strict: the skipped raw disk is a warning, so exit code 2 (the backup itself completes).
  const diff = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'diff', '--strict', '-o', set));
  const after = Math.ceil(Date.now() / 1000);
  t.is(diff.exitCode, 2, diff.stderr);
  t.regex(diff.stderr, /Finished successfully/);
  const diffFile = (await readdir(set)).find((f) => /^vda\.diff\.\d+\.data$/.test(f));
  t.truthy(diffFile, 'a diff data file');
  const stamp = Number(/\.(\d+)\.data$/.exec(diffFile!)![1]);
  t.true(stamp >= before && stamp <= after, `diff ident ${stamp} is the run's Unix time`);
  t.true((await readdir(set)).includes(`vmconfig.${stamp}.xml`));
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0', 'virtnbdbackup.1']);
  t.is(await readFile(join(set, `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0", "virtnbdbackup.1"]');
  t.deepEqual(await dataFrameRanges(join(set, diffFile!)), [{ offset: 64 * MiB, length: 2 * MiB }]);
  t.like(await streamMeta(join(set, diffFile!)), { parentCheckpoint: 'virtnbdbackup.1', incremental: true });
  await assertRebuilds(t, vm, set, 'vda', host.path('diff.raw'), ['vda.full.data', 'vda.inc.virtnbdbackup.1.data', diffFile!]);
  await assertNothingLeft(t, vm, paths, [set]);

  // copy --raw: the raw disk saved whole as a plain raw image; no checkpoint touched.
  const copy = host.path('copy');
  const copied = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'copy', '--raw', '-e', '-o', copy));
  // -e: the only warning is that this firmware-only VM has no guest agent (exit 2); --raw includes vdb without one.
  t.is(copied.exitCode, 2, copied.stderr);
  t.deepEqual(
    copied.stderr.split('\n').filter((l) => /WARNING/.test(l)).map((l) => /Guest agent of domain \S+ is not available/.test(l)),
    [true],
    copied.stderr,
  );
  t.deepEqual(await setFiles(copy), sorted(['backup.copy.*.log', 'vda.copy.data', 'vda.copy.data.chksum', 'vda.copy.qcow.json', 'vdb.copy.data', 'vmconfig.copy.xml']));
  await flushDisk(vm, 'vdb');
  const vdbCmp = await compareImages(vdb.path, join(copy, 'vdb.copy.data'), { formatA: 'raw', formatB: 'raw' });
  t.true(vdbCmp.identical, `vdb.copy.data is the raw disk: ${vdbCmp.message}`);
  t.is((await imageInfo(join(copy, 'vdb.copy.data'), { format: 'raw' }))['virtual-size'], 32 * MiB);
  await assertRebuilds(t, vm, copy, 'vda', host.path('copy.raw'), ['vda.copy.data']);
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0', 'virtnbdbackup.1']);
  await assertNothingLeft(t, vm, paths, [set, copy]);
});

test('compressed auto (full, then inc; -z, -C, --no-sparse-detection) rebuilds the disk and restores with Debian virtnbdrestore', async (t) => {
  const host = await TestHost.create(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '256M', writes: PRE_BOOT });
  // Some incompressible data too.
  const random = host.path('random.bin');
  await writeFile(random, randomBytes(3 * MiB));
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -s ${random} ${120 * MiB} ${3 * MiB}`, vda.path]);
  const vm = await host.defineVm({ disks: [{ image: vda }] });
  await vm.start();
  const paths = jobPaths(host);
  const set = host.path('set');
  const checkpoints = host.path('cps');

  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'auto', '-z', '-C', checkpoints, '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  t.regex(full.stderr, /Backup level auto: the target directory holds no backup yet, running a full backup/);
  t.deepEqual(await listFiles(checkpoints), ['virtnbdbackup.0.xml'], '-C holds the checkpoint files');
  t.false((await listFiles(set)).some((f) => f.startsWith('checkpoints/')));
  const fullFile = join(set, 'vda.full.data');
  const peek = peekStream(await readFile(fullFile));
  t.like(peek.meta, { compressed: 2, compressionMethod: 'lz4' });
  // The 40 MiB frame: LZ4 frames of 32 MiB + 8 MiB (one per maximum request), listed in the trailer.
  const long = peek.frames.filter((f) => f.kind === 'data').findIndex((f) => f.length === 40 * MiB);
  t.true(long >= 0);
  const entry = peek.trailer![long] as Record<string, number[]>;
  t.is(Object.values(entry)[0]!.length, 2);
  t.is(Number(await readFile(`${fullFile}.chksum`, 'utf8')), await pythonAdler32(fullFile));

  await vm.writePattern('vda', { pattern: 0x66, offset: 200 * MiB, length: 3 * MiB });
  await vm.writeZeroes('vda', 40 * MiB, MiB);
  // Without sparse detection the zeroed range is read (as zeros) rather than known: the same frames result.
  const inc = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'auto', '--compress=3', '--no-sparse-detection', '-C', checkpoints, '-o', set));
  t.is(inc.exitCode, 0, inc.stderr);
  t.regex(inc.stderr, /Backup level auto: running an incremental backup/);
  t.deepEqual(await listFiles(checkpoints), ['virtnbdbackup.0.xml', 'virtnbdbackup.1.xml']);
  t.deepEqual(await dataFrameRanges(join(set, 'vda.inc.virtnbdbackup.1.data')), [
    { offset: 40 * MiB, length: MiB },
    { offset: 200 * MiB, length: 3 * MiB },
  ]);
  t.true((await listFiles(set)).some((f) => /^backup\.auto\.\d{14}\.log$/.test(f)), 'log named after the level asked for');
  t.like(await streamMeta(join(set, 'vda.inc.virtnbdbackup.1.data')), { compressed: 3, incremental: true });
  await assertRebuilds(t, vm, set, 'vda', host.path('rebuilt.raw'), ['vda.full.data', 'vda.inc.virtnbdbackup.1.data']);

  const restored = host.path('restored');
  await flushDisk(vm, 'vda');
  await peerRestore({ input: set, output: restored, workDir: host.dir });
  const cmp = await compareImages(vda.path, restoredImagePath(restored, vda));
  t.true(cmp.identical, `virtnbdrestore of our compressed set: ${cmp.message}`);
  await assertNothingLeft(t, vm, paths, [set]);
});

test('-o - streams one zip to stdout (boot files included); the checkpoint files stay in the current directory; qemu+ssh works', async (t) => {
  const host = await TestHost.create(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '128M', writes: [{ pattern: 0x21, offset: 8 * MiB, length: 2 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }], firmware: 'efi' });
  await vm.start();
  const live = await vm.dumpXml();
  const loader = basename(/<loader[^>]*>([^<]+)<\/loader>/.exec(live)![1]!);
  const nvram = basename(/<nvram[^>]*>([^<]+)<\/nvram>/.exec(live)![1]!);
  const paths = jobPaths(host);
  const cwd = host.path('cwd');
  await mkdir(cwd);
  const unpacked = host.path('unpacked');

  const fullZip = host.path('full.zip');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', '-'), { cwd, stdoutFile: fullZip });
  t.is(full.exitCode, 0, full.stderr);
  const names = (await run('unzip', ['-Z1', fullZip])).stdout.split('\n').filter(Boolean);
  t.deepEqual(
    names.map((n) => n.replace(/^backup\.full\.\d{14}\.log$/, 'backup.full.*.log')),
    [
      'vda.full.data',
      'vda.full.data.chksum',
      'vmconfig.virtnbdbackup.0.xml',
      `${loader}.virtnbdbackup.0`,
      `${nvram}.virtnbdbackup.0`,
      'vda.virtnbdbackup.0.qcow.json',
      `${vm.name}.cpt`,
      'checkpoints/virtnbdbackup.0.xml',
      'backup.full.*.log',
    ],
  );
  // Stored entries, as virtnbdbackup writes them.
  t.regex((await run('unzip', ['-v', fullZip])).stdout, /Stored.*vda\.full\.data\n/);
  t.deepEqual(await listFiles(cwd), sorted([`${vm.name}.cpt`, 'checkpoints/virtnbdbackup.0.xml']));
  await run('unzip', ['-q', '-o', fullZip, '-d', unpacked]);
  t.true((await readFile(join(unpacked, `${loader}.virtnbdbackup.0`))).equals(await readFile(/<loader[^>]*>([^<]+)<\/loader>/.exec(live)![1]!)));
  t.is(Number(await readFile(join(unpacked, 'vda.full.data.chksum'), 'utf8')), await pythonAdler32(join(unpacked, 'vda.full.data')));
  await assertNothingLeft(t, vm, paths, [cwd]);

  await vm.writePattern('vda', { pattern: 0x22, offset: 64 * MiB, length: MiB });
  const incZip = host.path('inc.zip');
  // Through our libvirt client's ssh transport: the daemon is this host's, so the unix NBD socket serves.
  const sshd = await startSshd(t);
  const inc = await runBackup(host, jobArgs(paths, '-U', sshd.uri(), '-d', vm.name, '-l', 'inc', '-o', '-'), { cwd, stdoutFile: incZip });
  t.is(inc.exitCode, 0, inc.stderr);
  t.is(await readFile(join(cwd, `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0", "virtnbdbackup.1"]');
  await run('unzip', ['-q', '-o', incZip, '-d', unpacked]);
  t.deepEqual(await dataFrameRanges(join(unpacked, 'vda.inc.virtnbdbackup.1.data')), [{ offset: 64 * MiB, length: MiB }]);
  await assertRebuilds(t, vm, unpacked, 'vda', host.path('rebuilt.raw'), ['vda.full.data', 'vda.inc.virtnbdbackup.1.data']);
  await assertNothingLeft(t, vm, paths, [cwd, unpacked]);

  // The reader of stdout goes away mid-archive: the run fails and is undone, the chain as before.
  await vm.writePattern('vda', { pattern: 0x23, offset: 80 * MiB, length: 4 * MiB });
  const broken = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', '-'), { cwd, stdoutLimit: 1000 });
  t.is(broken.exitCode, 1);
  t.regex(broken.stderr, /ERROR Backup of disk vda failed: the reader of the output went away/);
  t.is(await readFile(join(cwd, `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0", "virtnbdbackup.1"]');
  t.deepEqual(await listFiles(cwd), sorted([`${vm.name}.cpt`, 'checkpoints/virtnbdbackup.0.xml', 'checkpoints/virtnbdbackup.1.xml']));
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0', 'virtnbdbackup.1']);
  await assertNothingLeft(t, vm, paths, [cwd]);
});
