/**
 * Debian's virtnbdbackup 1.9.15 against a live test VM: full + incremental
 * backup sets, plain and compressed, restored by its own virtnbdrestore to
 * an image equal to the VM's disk. Also pins down the on-disk facts virtnbd
 * must reproduce (file names, stream headers, metadata, trailer).
 */
import { readFile } from 'node:fs/promises';
import test from 'ava';
import { KiB, MiB, TestHost } from './helpers/host.js';
import { compareImages, type PatternWrite } from './helpers/image.js';
import { listFiles, peerBackupChain, peerRestore, peerVersion, restoredImagePath } from './helpers/peer.js';
import { peekStream } from './helpers/stream-peek.js';

const PRE_BOOT: PatternWrite[] = [
  { pattern: 0x11, offset: 0, length: MiB },
  // Longer than QEMU's 32 MiB maximum NBD request: read (and compressed) in two pieces.
  { pattern: 0x5a, offset: 16 * MiB, length: 40 * MiB },
];

function expectedSet(domain: string, incs: number): string[] {
  const files = [`${domain}.cpt`, 'vda.full.data'];
  for (let i = 0; i <= incs; i++) {
    files.push(`checkpoints/virtnbdbackup.${i}.xml`, `vda.virtnbdbackup.${i}.qcow.json`, `vmconfig.virtnbdbackup.${i}.xml`);
    if (i > 0) files.push(`vda.inc.virtnbdbackup.${i}.data`);
  }
  return files.sort();
}

const withoutLogs = (files: string[]): string[] => files.filter((f) => !/^backup\.(full|inc)\.\d{14}\.log$/.test(f));

test('virtnbdbackup full + inc, plain and compressed, restore equal to the source disk', async (t) => {
  t.is(await peerVersion(), '1.9.15');
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '512M', writes: PRE_BOOT });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();

  // Plain: full, 1 MiB written, inc.
  const plain = host.path('set-plain');
  const plainFiles = await peerBackupChain(vm, {
    output: plain,
    workDir: host.dir,
    incrementals: [[{ pattern: 0x33, offset: 200 * MiB, length: MiB }]],
  });
  t.deepEqual(withoutLogs(plainFiles), expectedSet(vm.name, 1));
  t.is(plainFiles.filter((f) => f.endsWith('.log')).length, 2, 'one backup.<level>.<timestamp>.log per run');
  t.is(await readFile(host.path('set-plain', `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0", "virtnbdbackup.1"]');

  const full = peekStream(await readFile(host.path('set-plain', 'vda.full.data')));
  t.is(full.firstHeader, `meta 0000000000000000 ${full.metaText.length.toString(16).padStart(16, '0')}\r\n`);
  t.deepEqual(Object.keys(full.meta), [
    'virtualSize',
    'dataSize',
    'date',
    'diskName',
    'diskFormat',
    'checkpointName',
    'compressed',
    'compressionMethod',
    'parentCheckpoint',
    'incremental',
    'streamVersion',
  ]);
  t.like(full.meta, {
    virtualSize: 512 * MiB,
    dataSize: 41 * MiB,
    diskName: 'vda',
    diskFormat: 'qcow2',
    checkpointName: 'virtnbdbackup.0',
    compressed: false,
    compressionMethod: 'lz4',
    parentCheckpoint: '',
    incremental: false,
    streamVersion: 2,
  });
  t.deepEqual(
    full.frames.map((f) => [f.kind, f.offset, f.length]),
    [
      ['meta', 0, full.metaText.length],
      ['data', 0, MiB],
      ['zero', MiB, 15 * MiB],
      ['data', 16 * MiB, 40 * MiB],
      ['zero', 56 * MiB, 456 * MiB],
      ['stop', 0, 0],
    ],
  );

  const inc = peekStream(await readFile(host.path('set-plain', 'vda.inc.virtnbdbackup.1.data')));
  t.like(inc.meta, { checkpointName: 'virtnbdbackup.1', parentCheckpoint: 'virtnbdbackup.0', incremental: true, dataSize: MiB });
  // Incremental streams hold dirty data only: no zero frames for the clean rest.
  t.deepEqual(
    inc.frames.slice(1).map((f) => [f.kind, f.offset, f.length]),
    [
      ['data', 200 * MiB, MiB],
      ['stop', 0, 0],
    ],
  );

  const restoredPlain = host.path('restore-plain');
  await peerRestore({ input: plain, output: restoredPlain, workDir: host.dir });
  const cmpPlain = await compareImages(image.path, restoredImagePath(restoredPlain, image));
  t.true(cmpPlain.identical, cmpPlain.message);

  // Compressed: a new full (the peer starts a new checkpoint chain), an odd write inside one cluster, inc.
  const packed = host.path('set-lz4');
  const packedFiles = await peerBackupChain(vm, {
    output: packed,
    workDir: host.dir,
    compress: true,
    incrementals: [[{ pattern: 0x44, offset: 300 * MiB + 0x1234, length: 256 }]],
  });
  t.deepEqual(withoutLogs(packedFiles), expectedSet(vm.name, 1));

  const zfull = peekStream(await readFile(host.path('set-lz4', 'vda.full.data')));
  t.like(zfull.meta, { compressed: 2, compressionMethod: 'lz4', checkpointName: 'virtnbdbackup.0' });
  const zdata = zfull.frames.filter((f) => f.kind === 'data');
  t.deepEqual(
    zdata.map((f) => [f.offset, f.length]),
    [
      [0, MiB],
      [16 * MiB, 40 * MiB],
      [200 * MiB, MiB],
    ],
  );
  // One entry per data frame; the 40 MiB frame, read as 32 MiB + 8 MiB, is {"<total>": [size, size]}.
  t.is(zfull.trailer!.length, 3);
  t.is(typeof zfull.trailer![0], 'number');
  const split = zfull.trailer![1] as Record<string, number[]>;
  t.is(Object.keys(split).length, 1);
  const [total, sizes] = Object.entries(split)[0]!;
  t.is(sizes.length, 2);
  t.is(Number(total), sizes[0]! + sizes[1]!);

  const zinc = peekStream(await readFile(host.path('set-lz4', 'vda.inc.virtnbdbackup.1.data')));
  t.deepEqual(
    zinc.frames.slice(1).map((f) => [f.kind, f.offset, f.length]),
    [
      ['data', 300 * MiB, 64 * KiB],
      ['stop', 0, 0],
    ],
  );
  t.is(zinc.trailer!.length, 1);

  const restoredPacked = host.path('restore-lz4');
  await peerRestore({ input: packed, output: restoredPacked, workDir: host.dir });
  const cmpPacked = await compareImages(image.path, restoredImagePath(restoredPacked, image));
  t.true(cmpPacked.identical, cmpPacked.message);

  // The restore is a real check: the older plain set no longer matches the disk.
  const stale = await compareImages(image.path, restoredImagePath(restoredPlain, image));
  t.false(stale.identical);
  t.log(`plain set: ${(await listFiles(plain)).join(' ')}`);
});
