/**
 * Raw images and zips written to stdout, with our own virtnbdbackup:
 * a raw-format disk saved with --raw is restored (copied as it is, thin)
 * only with --raw, and kept in the adjusted config only then; a `-t raw`
 * backup (a plain image) is copied as it is; a full backup written as a
 * zip to stdout restores from `cat full.zip | virtnbdrestore -i -` to the
 * disk it was taken from (and, with -A, into a fully allocated image).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { parseDomainXml } from '../lib/xml/domain.js';
import { runBackup } from './helpers/backup-run.js';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages, type PatternWrite } from './helpers/image.js';
import { ourBackup, snapshotDisk } from './helpers/our-backup.js';
import { allocatedBytes, filesIn, leftovers, ourRestore } from './helpers/restore-check.js';

const PRE_BOOT: PatternWrite[] = [
  { pattern: 0x11, offset: 0, length: MiB },
  { pattern: 0x5a, offset: 8 * MiB, length: 4 * MiB },
];

test('raw disks: restored as they are only with --raw; -t raw backups copied as they are; thin', async (t) => {
  const host = await TestHost.create(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: PRE_BOOT });
  const vdb = await host.createImage('vdb.img', { format: 'raw', size: '64M', writes: [{ pattern: 0x77, offset: 32 * MiB, length: 2 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }, { image: vdb }] });
  await vm.start();

  const set = host.path('set');
  await ourBackup(host, vm, 'full', set, ['--raw']);
  t.true((await filesIn(set)).includes('vdb.copy.data'), 'the raw disk is saved as a copy');

  const without = host.path('out-noraw');
  const r1 = await ourRestore(host.dir, ['-i', set, '-o', without]);
  t.is(r1.exitCode, 0, r1.stderr);
  t.regex(r1.stderr, /Disk vdb is a raw disk: not restored \(use --raw to copy it as it is\)/);
  t.deepEqual(await filesIn(without), ['vda.qcow2', 'vmconfig.xml']);

  const withRaw = host.path('out-raw');
  const r2 = await ourRestore(host.dir, ['-i', set, '-o', withRaw, '--raw', '-c', '-N', 'unused-name']);
  t.is(r2.exitCode, 0, r2.stderr);
  t.deepEqual(await filesIn(withRaw), ['vda.qcow2', 'vdb.img', 'vmconfig.xml']);
  const cmp = await compareImages(vdb.path, join(withRaw, 'vdb.img'), { formatA: 'raw', formatB: 'raw' });
  t.true(cmp.identical, `raw disk: ${cmp.message}`);
  const [want, got] = await Promise.all([allocatedBytes(vdb.path), allocatedBytes(join(withRaw, 'vdb.img'))]);
  t.true(got <= want * 1.1 && got >= want * 0.9, `the raw copy is thin: ${got} bytes allocated, the source ${want}`);
  const config = parseDomainXml(await readFile(join(withRaw, 'vmconfig.xml'), 'utf8'));
  t.deepEqual(
    config.disks.map((d) => [d.target, d.format, d.path]),
    [
      ['vda', 'qcow2', join(withRaw, 'vda.qcow2')],
      ['vdb', 'raw', join(withRaw, 'vdb.img')],
    ],
  );

  // -t raw: the qcow2 disk saved as a plain image, restored as it is.
  const rawType = host.path('set-traw');
  await ourBackup(host, vm, 'full', rawType, ['-t', 'raw', '-i', 'vda']);
  const state = await snapshotDisk(vm, host.path('state.qcow2'));
  const out = host.path('out-traw');
  const r3 = await ourRestore(host.dir, ['-i', rawType, '-o', out]);
  t.is(r3.exitCode, 0, r3.stderr);
  const cmpRaw = await compareImages(state, join(out, 'vda.qcow2'), { formatB: 'raw' });
  t.true(cmpRaw.identical, `-t raw: ${cmpRaw.message}`);
  t.true((await allocatedBytes(join(out, 'vda.qcow2'))) <= 6 * MiB, 'the copy stays thin');
  t.deepEqual(await leftovers(host.dir), []);
});

test('a full backup written as a zip to stdout restores from stdin and from the file', async (t) => {
  const host = await TestHost.create(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: PRE_BOOT });
  const vm = await host.defineVm({ disks: [{ image: vda }] });
  await vm.start();
  for (const [label, extra] of [
    ['plain', []],
    ['compressed', ['-z']],
  ] as const) {
    const zip = host.path(`full-${label}.zip`);
    const b = await runBackup(host, ['-n', '-d', vm.name, '-l', 'full', '-o', '-', '--scratchdir', host.dir, '-f', host.path('b.sock'), ...extra], { stdoutFile: zip });
    t.is(b.exitCode, 0, b.stderr);
    const state = await snapshotDisk(vm, host.path(`state-${label}.qcow2`));
    for (const [how, args, input] of [
      ['stdin', ['-i', '-'], { file: zip }],
      ['file', ['-i', zip], undefined],
    ] as const) {
      const out = host.path(`out-${label}-${how}`);
      const r = await ourRestore(host.dir, [...args, '-o', out], input ? { input } : {});
      t.is(r.exitCode, 0, `${label} ${how}: ${r.stderr}`);
      const cmp = await compareImages(state, join(out, 'vda.qcow2'));
      t.true(cmp.identical, `${label} ${how}: ${cmp.message}`);
    }
    await vm.writePattern('vda', { pattern: 0x21, offset: 40 * MiB, length: MiB });
  }
  // -A: the restored image is fully allocated, same contents.
  const zip = host.path('full-plain.zip');
  const out = host.path('out-preallocated');
  const r = await ourRestore(host.dir, ['-i', zip, '-o', out, '-A']);
  t.is(r.exitCode, 0, r.stderr);
  t.true((await compareImages(host.path('state-plain.qcow2'), join(out, 'vda.qcow2'))).identical);
  t.true((await allocatedBytes(join(out, 'vda.qcow2'))) >= 64 * MiB, '-A preallocates the whole disk');
  t.deepEqual(await leftovers(host.dir), []);
});
