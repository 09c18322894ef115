/**
 * virtnbdmap (our CLI, a child process) on backup sets made of a running
 * VM: full, inc, inc, plain by our virtnbdbackup and compressed by Debian's
 * virtnbdbackup 1.9.15 (python-lz4 frames: linked blocks, content sizes). The export of the files up to each checkpoint reads identical to
 * the VM's disk at that checkpoint, and the whole chain's export identical
 * to what virtnbdrestore restores (`qemu-img compare` against
 * nbd+unix://...); `nbdinfo --map` shows the unwritten ranges as holes.
 * A writable mapping reads back what was written, and the backup files are
 * unchanged after it. Bad input: files of different disks and a broken
 * chain are refused (exit 1, nothing left behind); a corrupted frame fails
 * reads of its range with EIO while the server keeps serving the rest.
 * Without /dev/nbd* the CLI serves and says how to use the export.
 */
import { createHash } from 'node:crypto';
import { copyFile, mkdir, open, readdir, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { runCli } from './helpers/cli.js';
import { run } from './helpers/exec.js';
import { MiB, TestHost } from './helpers/host.js';
import type { PatternWrite } from './helpers/image.js';
import { startMap } from './helpers/map-run.js';
import { ourBackup } from './helpers/our-backup.js';
import { peerBackup } from './helpers/peer.js';
import { ourRestore, snapshotDisk } from './helpers/restore-check.js';
import type { TestVm } from './helpers/vm.js';
import { scanStream } from '../lib/map/scan.js';

const PRE_BOOT: PatternWrite[] = [
  { pattern: 0x11, offset: 0, length: MiB },
  // Longer than QEMU's 32 MiB NBD request: one frame, two LZ4 pieces when compressed.
  { pattern: 0x5a, offset: 16 * MiB, length: 40 * MiB },
  { pattern: 0x22, offset: 120 * MiB, length: 3 * MiB },
];

interface Point {
  checkpoint: string;
  snapshot: string;
}

async function makeVm(host: TestHost, withVdb: boolean): Promise<TestVm> {
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '256M', writes: PRE_BOOT });
  const random = host.path('random.bin');
  await run('dd', ['if=/dev/urandom', `of=${random}`, 'bs=1M', 'count=3', 'status=none']);
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -s ${random} ${100 * MiB} ${3 * MiB}`, vda.path]);
  const disks = [{ image: vda }];
  if (withVdb) disks.push({ image: await host.createImage('vdb.qcow2', { format: 'qcow2', size: '64M', writes: [{ pattern: 0x42, offset: MiB, length: MiB }] }) });
  const vm = await host.defineVm({ disks });
  await vm.start();
  return vm;
}

/** full, then two incs with writes between (overwrites, a zeroed range, a frame over 32 MiB); a snapshot of vda after each. */
async function backupChain(host: TestHost, vm: TestVm, set: string, backup: (level: 'full' | 'inc') => Promise<unknown>): Promise<Point[]> {
  const points: Point[] = [];
  const snap = async (n: number): Promise<void> => {
    const snapshot = host.path(`state-cp${n}.qcow2`);
    await snapshotDisk(vm, 'vda', snapshot);
    points.push({ checkpoint: `virtnbdbackup.${n}`, snapshot });
  };
  await backup('full');
  await snap(0);
  await vm.writePattern('vda', { pattern: 0x33, offset: 200 * MiB, length: MiB });
  await vm.writePattern('vda', { pattern: 0x44, offset: 150 * MiB + 0x1234, length: 256 });
  await vm.writePattern('vda', { pattern: 0x66, offset: 60 * MiB, length: 36 * MiB });
  await backup('inc');
  await snap(1);
  await vm.writePattern('vda', { pattern: 0x55, offset: 16 * MiB, length: 2 * MiB });
  await vm.writeZeroes('vda', 0, 512 * 1024);
  await backup('inc');
  await snap(2);
  return points;
}

function chainUpTo(set: string, n: number): string[] {
  return [join(set, 'vda.full.data'), ...Array.from({ length: n }, (_, i) => join(set, `vda.inc.virtnbdbackup.${i + 1}.data`))];
}

async function compareWithUri(image: string, format: 'qcow2' | 'raw', uri: string): Promise<{ identical: boolean; message: string }> {
  const r = await run('qemu-img', ['compare', '-f', format, '-F', 'raw', image, uri], { okCodes: [0, 1] });
  return { identical: r.exitCode === 0, message: (r.stdout + r.stderr).trim() };
}

async function sums(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).filter((n) => n.endsWith('.data')).sort()) {
    out[f] = createHash('sha256').update(await readFile(join(dir, f))).digest('hex');
  }
  return out;
}

interface MapExtent {
  offset: number;
  length: number;
  type: number;
  description: string;
}

/** What `nbdinfo --map` says about [offset, offset+length): the descriptions met. */
function describe(map: MapExtent[], offset: number, length: number): string[] {
  return [...new Set(map.filter((e) => e.offset < offset + length && e.offset + e.length > offset).map((e) => e.description))];
}

/** Each checkpoint's export equals the disk then; the whole chain's equals virtnbdrestore's image; holes are holes. */
async function checkPoints(t: ExecutionContext, host: TestHost, set: string, points: Point[], label: string): Promise<void> {
  for (const [n, point] of points.entries()) {
    const sock = host.path(`${label}-${n}.sock`);
    const m = await startMap(t, ['-r', '-f', chainUpTo(set, n).join(','), '--socket', sock, '-L', host.path(`${label}-map-${n}.log`)]);
    const uri = `nbd+unix:///sda?socket=${sock}`;
    t.regex(m.log(), /Not mapped to a block device: target device \/dev\/nbd0 does not exist/, 'no nbd device here: it serves instead');
    t.regex(m.log(), /nbdinfo --map|qemu-img create -f qcow2 -b/, 'and says how to use the export');
    const cmp = await compareWithUri(point.snapshot, 'qcow2', uri);
    t.true(cmp.identical, `${label} ${point.checkpoint}: ${cmp.message}`);
    if (n === points.length - 1) {
      const out = host.path(`${label}-restored`);
      const r = await ourRestore(host.dir, ['-i', set, '-o', out, '-d', 'vda', '-u', point.checkpoint]);
      t.is(r.exitCode, 0, r.stderr);
      const restored = await compareWithUri(join(out, 'vda.qcow2'), 'qcow2', uri);
      t.true(restored.identical, `${label}: export vs virtnbdrestore's image: ${restored.message}`);
      const map = JSON.parse((await run('nbdinfo', ['--map', '--json', uri])).stdout) as MapExtent[];
      t.deepEqual(describe(map, 130 * MiB, 20 * MiB), ['hole,zero'], `${label}: a range never written is a hole`);
      t.deepEqual(describe(map, 20 * MiB, 30 * MiB), ['data'], `${label}: backed-up data is data`);
      t.deepEqual(describe(map, 240 * MiB, 16 * MiB), ['hole,zero'], `${label}: the end of the disk is a hole`);
    }
    t.is(await m.stop(), 0, m.log());
    t.false(existsSync(sock), 'socket removed');
  }
}

test('plain full+inc+inc by our virtnbdbackup: exports identical to the disk and to the restore; writable mapping; bad input refused', async (t) => {
  const host = await TestHost.create(t);
  const vm = await makeVm(host, true);
  const set = host.path('set');
  const points = await backupChain(host, vm, set, (level) => ourBackup(host, vm, level, set));
  const before = await sums(set);
  await checkPoints(t, host, set, points, 'plain');

  // Writable (the default): copy-on-write, read back, discarded.
  const sock = host.path('rw.sock');
  const m = await startMap(t, ['-f', chainUpTo(set, 2).join(','), '--socket', sock, '-L', host.path('rw.log')]);
  const overlay = /writes go to the copy-on-write overlay (\S+)/.exec(m.log())?.[1];
  t.truthy(overlay, m.log());
  const uri = `nbd+unix:///sda?socket=${sock}`;
  // Unaligned, across 64 KiB blocks, over data and over a hole.
  await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x77 ${MiB - 5000} 200000`, '-c', `write -P 0x78 ${130 * MiB + 100} 70000`, uri]);
  const readBack = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read -P 0x77 ${MiB - 5000} 200000`, '-c', `read -P 0x78 ${130 * MiB + 100} 70000`, '-c', `read -P 0x5a ${20 * MiB} ${MiB}`, uri]);
  t.notRegex(readBack.stdout + readBack.stderr, /fail|error/i, readBack.stdout + readBack.stderr);
  t.true(existsSync(overlay!), 'the overlay exists while mapped');
  t.is(await m.stop(), 0, m.log());
  t.false(existsSync(overlay!), 'the overlay is gone');
  t.deepEqual(await sums(set), before, 'backup files unchanged');

  // Bad input: refused up front, nothing served, nothing left.
  const badSock = host.path('bad.sock');
  const disks = await runCli('virtnbdmap', ['-f', `${join(set, 'vda.full.data')},${join(set, 'vdb.full.data')}`, '--socket', badSock, '-L', host.path('bad1.log')]);
  t.is(disks.exitCode, 1, disks.stderr);
  t.regex(disks.stderr, /ERROR The files given hold different disks \(vda: .*; vdb: .*\)/);
  const broken = await runCli('virtnbdmap', ['-f', `${join(set, 'vda.full.data')},${join(set, 'vda.inc.virtnbdbackup.2.data')}`, '--socket', badSock, '-L', host.path('bad2.log')]);
  t.is(broken.exitCode, 1, broken.stderr);
  t.regex(broken.stderr, /ERROR The files given for disk vda do not form one chain: checkpoint virtnbdbackup\.1 was created by none of them/);
  t.false(existsSync(badSock));
});

test('compressed full+inc+inc by Debian virtnbdbackup: exports identical; a corrupted frame fails with EIO for its range only', async (t) => {
  const host = await TestHost.create(t);
  const vm = await makeVm(host, false);
  const set = host.path('set');
  const points = await backupChain(host, vm, set, (level) => peerBackup({ domain: vm.name, level, output: set, workDir: host.dir, compress: true }));
  await checkPoints(t, host, set, points, 'lz4');

  // Corrupt one byte inside the second LZ4 piece of the 40 MiB frame (disk 16 MiB + 32 MiB ...).
  const bad = host.path('corrupt');
  await mkdir(bad);
  const file = join(bad, 'vda.full.data');
  await copyFile(join(set, 'vda.full.data'), file);
  const handle = await open(file, 'r+');
  const scanned = await scanStream(handle, file);
  const frame = scanned.frames.find((f) => f.kind === 'data' && f.offset <= 20 * MiB && f.offset + f.length >= 56 * MiB);
  t.truthy(frame?.pieces && frame.pieces.length >= 2, 'the 40 MiB extent is one frame of several LZ4 pieces');
  const piece = frame!.pieces![1]!;
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, piece.position + Math.floor(piece.size / 2));
  byte[0] ^= 0x5a;
  await handle.write(byte, 0, 1, piece.position + Math.floor(piece.size / 2));
  await handle.close();

  const sock = host.path('corrupt.sock');
  const m = await startMap(t, ['-r', '-f', file, '--socket', sock, '-L', host.path('corrupt.log')]);
  const uri = `nbd+unix:///sda?socket=${sock}`;
  const failed = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read ${piece.offset + MiB} 65536`, uri], { okCodes: [0, 1] });
  t.regex(failed.stdout + failed.stderr, /Input\/output error/, 'the corrupt range fails with EIO');
  const good = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read -P 0x5a ${16 * MiB} ${MiB}`, '-c', `read -P 0x22 ${120 * MiB} ${MiB}`, uri]);
  t.notRegex(good.stdout + good.stderr, /fail|error/i, 'the other ranges still read right');
  const again = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read ${piece.offset} 4096`, uri], { okCodes: [0, 1] });
  t.regex(again.stdout + again.stderr, /Input\/output error/, 'and keeps failing');
  await run('nbdinfo', [uri]);
  t.regex(m.log(), /vda\.full\.data: data frame \d+ .* is corrupt: its LZ4 frame at byte \d+ does not decompress/, 'the log names the file and the frame');
  t.is(await m.stop(), 0, m.log());
});
