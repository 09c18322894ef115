/**
 * Bad input to our virtnbdrestore, each case on a real backup set made by
 * Debian's virtnbdbackup from a running VM: a damaged byte (in an LZ4
 * payload, in a frame header, in plain data with a .chksum), a truncated
 * file, a missing inc, a wrong --until, zips whose entry names leave the
 * output directory, an output directory that already holds the image, and
 * a restore interrupted by SIGTERM. Each fails with exit 1 (143 for the
 * signal) and a message naming what is wrong and where, leaves no image
 * under the final name and no .partial, no qemu-nbd, no work directory.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { copyFile, mkdir, open, readdir, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import test, { type ExecutionContext } from 'ava';
import type { Chunk } from '../lib/chunk.js';
import { createMetadata } from '../lib/format/metadata.js';
import { SparseFramer } from '../streams/SparseFramer.js';
import { cliCommand } from './helpers/cli.js';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages, type PatternWrite } from './helpers/image.js';
import { run } from './helpers/exec.js';
import { peerBackup } from './helpers/peer.js';
import { filesIn, leftovers, ourRestore } from './helpers/restore-check.js';

const PRE_BOOT: PatternWrite[] = [
  { pattern: 0x11, offset: 0, length: MiB },
  { pattern: 0x5a, offset: 16 * MiB, length: 8 * MiB },
];

interface Sets {
  host: TestHost;
  image: string;
  /** full, inc 1, inc 2 (plain). */
  plain: string;
  /** full (compressed). */
  packed: string;
}

let shared: Promise<Sets> | undefined;
const hosts: TestHost[] = [];

/** One VM and its backup sets for all tests of this file (made once, copied by each test before damaging). */
function sets(): Promise<Sets> {
  shared ??= (async () => {
    const host = await TestHost.create({ teardown: () => undefined });
    hosts.push(host);
    const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '128M', writes: PRE_BOOT });
    const vm = await host.defineVm({ disks: [{ image }] });
    await vm.start();
    const plain = host.path('plain');
    await peerBackup({ domain: vm.name, level: 'full', output: plain, workDir: host.dir });
    await vm.writePattern('vda', { pattern: 0x33, offset: 40 * MiB, length: MiB });
    await peerBackup({ domain: vm.name, level: 'inc', output: plain, workDir: host.dir });
    await vm.writePattern('vda', { pattern: 0x44, offset: 41 * MiB, length: MiB });
    await peerBackup({ domain: vm.name, level: 'inc', output: plain, workDir: host.dir });
    const packed = host.path('packed');
    await peerBackup({ domain: vm.name, level: 'full', output: packed, workDir: host.dir, compress: true });
    await vm.destroy();
    return { host, image: image.path, plain, packed };
  })();
  return shared;
}

test.after.always(async () => {
  for (const h of hosts) await h.dispose();
});

/** A private copy of a set (top-level files; checkpoints are not needed to restore). */
async function copySet(from: string, to: string, skip: string[] = []): Promise<string> {
  await mkdir(to, { recursive: true });
  for (const f of await readdir(from, { withFileTypes: true })) {
    if (f.isFile() && !skip.includes(f.name)) await copyFile(join(from, f.name), join(to, f.name));
  }
  return to;
}

async function flipByte(file: string, at: number): Promise<void> {
  const handle = await open(file, 'r+');
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, at);
  byte[0] = byte[0]! ^ 0x5a;
  await handle.write(byte, 0, 1, at);
  await handle.close();
}

/** Byte offset of the first data frame's header in a stream file. */
async function firstDataFrame(file: string): Promise<number> {
  const head = Buffer.alloc(4096);
  const handle = await open(file, 'r');
  await handle.read(head, 0, head.length, 0);
  await handle.close();
  const metaLength = parseInt(head.subarray(22, 38).toString('latin1'), 16);
  return 40 + metaLength + 2;
}

async function expectNothingWritten(t: ExecutionContext, dir: string, out: string): Promise<void> {
  const left = (await filesIn(out)).filter((f) => f.endsWith('.qcow2') || f.endsWith('.partial') || f === 'vda');
  t.deepEqual(left, [], 'no image and no .partial in the output directory');
  t.deepEqual(await leftovers(dir), [], 'no qemu-nbd and no work directory left');
}

test('a damaged byte in an LZ4 payload: restore fails naming the frame and disk offset; nothing left', async (t) => {
  const { host, packed } = await sets();
  const dir = host.path(`lz4-${randomBytes(3).toString('hex')}`);
  const set = await copySet(packed, join(dir, 'set'));
  const frame = await firstDataFrame(join(set, 'vda.full.data'));
  // Inside the first LZ4 frame's compressed block, past its 7-byte frame header and 4-byte block size.
  await flipByte(join(set, 'vda.full.data'), frame + 40 + 30);
  const out = join(dir, 'out');
  const r = await ourRestore(dir, ['-i', set, '-o', out]);
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stderr, /ERROR vda\.full\.data: frame 1 \(data frame at disk offset 0\): .*(checksum|decompress|corrupt)/i);
  await expectNothingWritten(t, dir, out);
});

test('a damaged frame header: restore fails naming the frame and its byte offset', async (t) => {
  const { host, plain } = await sets();
  const dir = host.path(`hdr-${randomBytes(3).toString('hex')}`);
  const set = await copySet(plain, join(dir, 'set'));
  const frame = await firstDataFrame(join(set, 'vda.inc.virtnbdbackup.1.data'));
  await flipByte(join(set, 'vda.inc.virtnbdbackup.1.data'), frame + 10);
  const out = join(dir, 'out');
  const r = await ourRestore(dir, ['-i', set, '-o', out]);
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stderr, new RegExp(`vda\\.inc\\.virtnbdbackup\\.1\\.data: frame 1 at byte ${frame}: `));
  await expectNothingWritten(t, dir, out);
});

test('a damaged byte in plain data: verify names the file; restore fails on its .chksum', async (t) => {
  const { host, plain } = await sets();
  const dir = host.path(`sum-${randomBytes(3).toString('hex')}`);
  const set = await copySet(plain, join(dir, 'set'));
  for (const f of (await readdir(set)).filter((n) => n.endsWith('.data'))) {
    const r = await run('/usr/bin/python3', ['-c', 'import sys,zlib; print(zlib.adler32(open(sys.argv[1],"rb").read()))', join(set, f)]);
    await writeFile(join(set, `${f}.chksum`), r.stdout.trim());
  }
  const frame = await firstDataFrame(join(set, 'vda.full.data'));
  await flipByte(join(set, 'vda.full.data'), frame + 40 + 1000);
  const verify = await ourRestore(dir, ['-i', set, '-o', 'verify']);
  t.is(verify.exitCode, 1);
  t.regex(verify.stderr, /Verification failed: 1 data file does not match its checksum: vda\.full\.data/);
  const out = join(dir, 'out');
  const r = await ourRestore(dir, ['-i', set, '-o', out]);
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stderr, /vda\.full\.data: adler32 checksum \d+ does not match \d+ stored in vda\.full\.data\.chksum/);
  await expectNothingWritten(t, dir, out);
});

test('a truncated data file: restore fails saying where it ends', async (t) => {
  const { host, plain } = await sets();
  const dir = host.path(`trunc-${randomBytes(3).toString('hex')}`);
  const set = await copySet(plain, join(dir, 'set'));
  const file = join(set, 'vda.inc.virtnbdbackup.2.data');
  await truncate(file, Math.floor((await stat(file)).size / 2));
  const out = join(dir, 'out');
  const r = await ourRestore(dir, ['-i', set, '-o', out]);
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stderr, /vda\.inc\.virtnbdbackup\.2\.data: frame \d+ at byte \d+: stream ends at byte \d+/);
  await expectNothingWritten(t, dir, out);
});

test('a missing inc is refused naming the missing checkpoint, before anything is written', async (t) => {
  const { host, plain } = await sets();
  const dir = host.path(`hole-${randomBytes(3).toString('hex')}`);
  const set = await copySet(plain, join(dir, 'set'), ['vda.inc.virtnbdbackup.1.data']);
  const out = join(dir, 'out');
  const r = await ourRestore(dir, ['-i', set, '-o', out]);
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stderr, /hole: checkpoint virtnbdbackup\.1 was created by no data file in the backup set, but vda\.inc\.virtnbdbackup\.2\.data continues from it/);
  t.false(existsSync(out), 'the output directory was not even created');
  t.deepEqual(await leftovers(dir), []);
});

test('a wrong --until is refused before anything is written', async (t) => {
  const { host, plain } = await sets();
  const dir = host.path(`until-${randomBytes(3).toString('hex')}`);
  await mkdir(dir);
  const out = join(dir, 'out');
  const r = await ourRestore(dir, ['-i', plain, '-o', out, '--until', 'virtnbdbackup.9']);
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stderr, /--until virtnbdbackup\.9: no backup of disk vda created checkpoint virtnbdbackup\.9.*Known: virtnbdbackup\.0, virtnbdbackup\.1, virtnbdbackup\.2/);
  t.false(existsSync(out));
});

test('zips whose entry names leave the output directory are refused, from a file and from stdin', async (t) => {
  const { host, plain } = await sets();
  const dir = host.path(`zip-${randomBytes(3).toString('hex')}`);
  await mkdir(dir);
  const escapee = join(dir, 'escaped.txt');
  const absolute = join(dir, `abs-${randomBytes(3).toString('hex')}.txt`);
  for (const [label, evil] of [
    ['dotdot', '../escaped.txt'],
    ['absolute', absolute],
  ] as const) {
    const zip = join(dir, `${label}.zip`);
    // Python's zipfile keeps such names only through ZipInfo; what an attacker would write.
    await run('/usr/bin/python3', [
      '-c',
      'import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1],"w")\nz.write(sys.argv[2]+"/vda.full.data","vda.full.data")\nz.writestr(zipfile.ZipInfo(sys.argv[3]),"owned")\nz.close()',
      zip,
      plain,
      evil,
    ]);
    const out = join(dir, `out-${label}`);
    for (const [how, args, input] of [
      ['file', ['-i', zip], undefined],
      ['stdin', ['-i', '-'], { file: zip }],
    ] as const) {
      const r = await ourRestore(dir, [...args, '-o', out], input ? { input } : {});
      t.is(r.exitCode, 1, `${label} ${how}: ${r.stderr}`);
      t.regex(r.stderr, /refusing the archive \(its names must stay inside the backup set\)/, `${label} ${how}`);
      t.regex(r.stderr, label === 'dotdot' ? /climbs out of the output directory/ : /is an absolute path/);
      t.deepEqual((await filesIn(out)).filter((f) => f !== 'vmconfig.xml'), [], `${label} ${how}: no image`);
    }
  }
  t.false(existsSync(escapee));
  t.false(existsSync(absolute));
  t.deepEqual(await leftovers(dir), []);
});

test('an output directory that holds the image is refused unless --overwrite', async (t) => {
  const { host, plain, image } = await sets();
  const dir = host.path(`exists-${randomBytes(3).toString('hex')}`);
  await mkdir(dir);
  const out = join(dir, 'out');
  await mkdir(out);
  const target = join(out, 'vda.qcow2');
  await writeFile(target, 'precious');
  const r = await ourRestore(dir, ['-i', plain, '-o', out]);
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stderr, /already holds .*vda\.qcow2; not overwriting \(use --overwrite to replace\)/);
  t.is(await readFile(target, 'utf8'), 'precious', 'the existing file is untouched');
  t.deepEqual((await filesIn(out)).sort(), ['vda.qcow2']);
  const again = await ourRestore(dir, ['-i', plain, '-o', out, '--overwrite']);
  t.is(again.exitCode, 0, again.stderr);
  const cmp = await compareImages(image, target);
  t.true(cmp.identical, cmp.message);
});

test('SIGTERM during a restore: exit 143, no image under the final name, no .partial, no qemu-nbd, no socket', async (t) => {
  const host = await TestHost.create(t);
  // A set big enough that the restore is still running when the signal comes: 384 MiB of random data.
  const set = host.path('set');
  await mkdir(set);
  const size = 384 * MiB;
  const metadata = createMetadata({ virtualSize: 512 * MiB, dataSize: size, diskName: 'vda', diskFormat: 'qcow2', checkpointName: 'virtnbdbackup.0' });
  async function* chunks(): AsyncGenerator<Chunk> {
    for (let at = 0; at < size; at += 4 * MiB) yield { offset: at, length: 4 * MiB, data: randomBytes(4 * MiB) };
  }
  await pipeline(Readable.from(chunks()), new SparseFramer({ metadata }), createWriteStream(join(set, 'vda.full.data')));
  const out = host.path('out');
  const { command, args, cwd } = cliCommand('virtnbdrestore', ['-n', '-L', host.path('r.log'), '-i', set, '-o', out]);
  const child = spawn(command, args, { cwd, env: { ...process.env, TMPDIR: host.dir }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  // Wait until data is being written into the temporary image, then interrupt.
  const partial = join(out, 'vda.partial');
  let signalled = false;
  for (;;) {
    const written = await stat(partial).then((s) => s.size, () => 0);
    if (written > 32 * MiB) {
      child.kill('SIGTERM');
      signalled = true;
      break;
    }
    if (child.exitCode !== null) break;
    await sleep(20);
  }
  t.true(signalled, `the restore was still running when signalled: ${stderr}`);
  t.is(await exited, 143, stderr);
  t.regex(stderr, /Restore interrupted by SIGTERM/);
  t.deepEqual(await filesIn(out), [], 'no image, no .partial');
  t.deepEqual(await leftovers(host.dir), []);
});
