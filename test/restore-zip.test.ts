/**
 * Backup sets read straight from zip archives, never unpacked: a zip file
 * (`-i set.zip`) and a zip arriving on stdin (`cat set.zip | virtnbdrestore
 * -i -`) restore to exactly what the directory restores to. Archives made
 * by our ZipSink in backup order, by `zip -r` (deflated, in whatever order
 * zip walks the directory, so files may come before the ones they continue)
 * from a compressed set, and by Debian's virtnbdbackup writing to stdout.
 * Dump prints what Debian's virtnbdrestore prints; verify checks .chksum
 * files, from a directory and from stdin, and names a damaged file.
 */
import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import test, { type ExecutionContext } from 'ava';
import { ZipSink } from '../streams/ZipSink.js';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages, imageInfo, type PatternWrite } from './helpers/image.js';
import { run } from './helpers/exec.js';
import { peerBackup } from './helpers/peer.js';
import type { CliResult } from './helpers/cli.js';
import { leftovers, ourRestore, snapshotDisk } from './helpers/restore-check.js';

const PRE_BOOT: PatternWrite[] = [
  { pattern: 0x11, offset: 0, length: MiB },
  { pattern: 0x5a, offset: 16 * MiB, length: 36 * MiB },
];

async function pythonAdler32(file: string): Promise<number> {
  const r = await run('/usr/bin/python3', ['-c', 'import sys,zlib; print(zlib.adler32(open(sys.argv[1],"rb").read()))', file]);
  return Number(r.stdout.trim());
}

/** Zip `names` of `dir` in this order with our ZipSink (stored entries; data files streamed, so with data descriptors). */
async function zipWithSink(dir: string, names: readonly string[], zip: string): Promise<void> {
  const sink = new ZipSink(createWriteStream(zip));
  for (const name of names) await sink.add(name, createReadStream(join(dir, name)));
  await sink.finalize();
}

async function restoreAndCompare(t: ExecutionContext, host: TestHost, label: string, args: string[], reference: string, input?: { file: string }): Promise<CliResult> {
  const out = host.path(`out-${label}`);
  const r = await ourRestore(host.dir, [...args, '-o', out], input ? { input } : {});
  t.is(r.exitCode, 0, `${label}: ${r.stderr}`);
  const cmp = await compareImages(reference, join(out, 'vda.qcow2'));
  t.true(cmp.identical, `${label}: ${cmp.message}`);
  return r;
}

test('zip file and zip on stdin restore what the directory restores; dump and verify work on all three', async (t) => {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '256M', writes: PRE_BOOT });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  const set = host.path('set');
  await peerBackup({ domain: vm.name, level: 'full', output: set, workDir: host.dir });
  await vm.writePattern('vda', { pattern: 0x33, offset: 100 * MiB, length: 2 * MiB });
  await peerBackup({ domain: vm.name, level: 'inc', output: set, workDir: host.dir });
  await vm.writePattern('vda', { pattern: 0x44, offset: 101 * MiB, length: MiB });
  await peerBackup({ domain: vm.name, level: 'diff', output: set, workDir: host.dir });
  const state = host.path('state.qcow2');
  await snapshotDisk(vm, 'vda', state);

  const files = (await readdir(set, { recursive: true })).filter((f) => !f.endsWith('checkpoints')).sort();
  const data = ['vda.full.data', 'vda.inc.virtnbdbackup.1.data', files.find((f) => f.startsWith('vda.diff.'))!];
  // Debian 1.9.15 writes no .chksum files: add them (zlib's adler32, computed by Python) for verify.
  for (const f of data) await writeFile(join(set, `${f}.chksum`), String(await pythonAdler32(join(set, f))));
  const others = files.filter((f) => !data.includes(f));
  const zip = host.path('set.zip');
  await zipWithSink(set, [...data, ...data.map((f) => `${f}.chksum`), ...others], zip);

  await restoreAndCompare(t, host, 'dir', ['-i', set], state);
  await restoreAndCompare(t, host, 'zipfile', ['-i', zip], state);
  await restoreAndCompare(t, host, 'stdin', ['-i', '-'], state, { file: zip });
  // Files before the ones they continue from: held back until their parent arrives.
  const reversed = host.path('reversed.zip');
  await zipWithSink(set, [...others, ...[...data].reverse()], reversed);
  const held = await restoreAndCompare(t, host, 'stdin-reversed', ['-i', '-'], state, { file: reversed });
  t.regex(held.stderr, /vda\.inc\.virtnbdbackup\.1\.data arrived before the file it continues from; holding it/);

  // Dump: the same list as Debian's virtnbdrestore prints, from each input.
  const peerDump = await run('virtnbdrestore', ['-i', set, '-o', 'dump', '-L', host.path('peer-dump.log')]);
  const expected = JSON.parse(peerDump.stdout.slice(peerDump.stdout.indexOf('[')));
  for (const [label, args, input] of [
    ['dir', ['-i', set], undefined],
    ['zip', ['-i', zip], undefined],
    ['stdin', ['-i', '-'], { file: zip }],
  ] as const) {
    const r = await ourRestore(host.dir, [...args, '-o', 'dump'], input ? { input } : {});
    t.is(r.exitCode, 0, `dump ${label}: ${r.stderr}`);
    t.deepEqual(JSON.parse(r.stdout), expected, `dump ${label}`);
  }

  // Verify: all good, then one damaged byte in the inc, named.
  for (const [label, args, input] of [
    ['dir', ['-i', set], undefined],
    ['stdin', ['-i', '-'], { file: zip }],
  ] as const) {
    const r = await ourRestore(host.dir, [...args, '-o', 'verify'], input ? { input } : {});
    t.is(r.exitCode, 0, `verify ${label}: ${r.stderr}`);
  }
  const handle = await open(join(set, data[1]!), 'r+');
  const at = 300;
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, at);
  byte[0] = byte[0]! ^ 0xff;
  await handle.write(byte, 0, 1, at);
  await handle.close();
  const bad = await ourRestore(host.dir, ['-i', set, '-a', 'verify', '-o', host.path('unused')]);
  t.is(bad.exitCode, 1);
  t.regex(bad.stderr, /vda\.inc\.virtnbdbackup\.1\.data: adler32 is \d+, vda\.inc\.virtnbdbackup\.1\.data\.chksum says \d+/);
  t.regex(bad.stderr, /Verification failed: 1 data file does not match its checksum: vda\.inc\.virtnbdbackup\.1\.data/);
  t.notRegex(bad.stderr, /vda\.full\.data: adler32 is/);
  t.deepEqual(await leftovers(host.dir), []);
});

test('zip -r of a compressed set (deflated, any order) and virtnbdbackup -o - restore from stdin', async (t) => {
  const host = await TestHost.create(t);
  // Not qemu's default cluster size: the restored images must take it from the set's qcow.json,
  // which virtnbdbackup -o - writes after the data (so a stream restore converts at the end).
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '256M', clusterSize: 131072, writes: PRE_BOOT });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();

  // Debian's virtnbdbackup writing a full backup as a zip to stdout.
  const peerZip = host.path('peer-full.zip');
  const child = spawn('virtnbdbackup', ['-n', '-d', vm.name, '-l', 'full', '-o', '-', '-S', host.dir, '-f', host.path('peer.sock'), '-z'], {
    cwd: host.dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
  await pipeline(child.stdout, createWriteStream(peerZip));
  t.is(await exited, 0, `virtnbdbackup -o -: ${stderr}`);
  const full = host.path('state-full.qcow2');
  await snapshotDisk(vm, 'vda', full);
  const fromStdin = await restoreAndCompare(t, host, 'peer-stdin', ['-i', '-'], full, { file: peerZip });
  t.regex(fromStdin.stderr, /Converting .*vda\.partial to the source image's qcow2 options \(.*cluster_size=131072/);
  await restoreAndCompare(t, host, 'peer-zipfile', ['-i', peerZip], full);
  for (const label of ['peer-stdin', 'peer-zipfile']) {
    t.is((await imageInfo(host.path(`out-${label}`, 'vda.qcow2')))['cluster-size'], 131072, `${label}: the source's cluster size`);
  }

  // A compressed chain zipped by zip(1), deflated, in directory order.
  const set = host.path('zset');
  await peerBackup({ domain: vm.name, level: 'full', output: set, workDir: host.dir, compress: true });
  await vm.writePattern('vda', { pattern: 0x66, offset: 10 * MiB, length: 3 * MiB });
  await peerBackup({ domain: vm.name, level: 'inc', output: set, workDir: host.dir, compress: true });
  await vm.writePattern('vda', { pattern: 0x77, offset: 11 * MiB, length: MiB });
  await peerBackup({ domain: vm.name, level: 'inc', output: set, workDir: host.dir, compress: true });
  const last = host.path('state-last.qcow2');
  await snapshotDisk(vm, 'vda', last);
  const zip = host.path('zset.zip');
  await run('zip', ['-q', '-r', zip, '.'], { cwd: set });
  await restoreAndCompare(t, host, 'zip-r-stdin', ['-i', '-'], last, { file: zip });
  t.deepEqual(await leftovers(host.dir), []);
});
