import test, { type ExecutionContext } from 'ava';
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, readdir, rm, writeFile, copyFile, open } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { crc32 } from 'node:zlib';
import { FileSink } from '../streams/FileSink.js';
import { ZipSink, ZipSinkError } from '../streams/ZipSink.js';
import { ZipSource, ZipSourceError, type ZipEntry } from '../streams/ZipSource.js';

const run = promisify(execFile);
const PYTHON = '/usr/bin/python3';
const SIGNATURE = Buffer.from([0x50, 0x4b, 0x07, 0x08]);

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'virtnbd-zip-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Random bytes sprinkled with what a naive streaming reader takes for the end
 * of a stored entry: the data descriptor signature, also split across the
 * 64 KiB boundaries of fs streams and pipes, and a fake descriptor.
 */
function diskLikeData(size: number): Buffer {
  const data = randomBytes(size);
  for (let at = 4096; at + 64 < size; at += 1024 * 1024 + 333) SIGNATURE.copy(data, at);
  for (let at = 65536 - 2; at + 64 < size; at += 65536 * 7) SIGNATURE.copy(data, at);
  // "PK\x07\x08", the right CRC-32, then a local header signature: plausible, but the sizes are one off.
  const fake = Buffer.alloc(20);
  SIGNATURE.copy(fake, 0);
  fake.writeUInt32LE(crc32(data.subarray(0, 1000)), 4);
  fake.writeUInt32LE(1001, 8);
  fake.writeUInt32LE(1001, 12);
  fake.writeUInt32LE(0x04034b50, 16);
  fake.copy(data, 1000);
  return data;
}

function pieces(data: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < data.length; at += size) out.push(data.subarray(at, at + size));
  return out;
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

interface Seen {
  name: string;
  size: number | undefined;
  length: number;
  sha256: string;
}

/** Reads every entry whole, in order. */
async function readAll(source: ZipSource): Promise<Seen[]> {
  const seen: Seen[] = [];
  for await (const entry of source) {
    const chunks: Buffer[] = [];
    for await (const chunk of entry.stream) chunks.push(chunk as Buffer);
    const data = Buffer.concat(chunks);
    seen.push({ name: entry.name, size: entry.size, length: data.length, sha256: sha256(data) });
  }
  return seen;
}

/** Reads the named entry only, skipping the others unread. */
async function readOne(source: ZipSource, name: string): Promise<Buffer | undefined> {
  let found: Buffer | undefined;
  for await (const entry of source) {
    if (entry.name !== name) continue;
    const chunks: Buffer[] = [];
    for await (const chunk of entry.stream) chunks.push(chunk as Buffer);
    found = Buffer.concat(chunks);
  }
  return found;
}

interface Expected {
  name: string;
  data: Buffer;
}

/** What the standard backup set zip holds, in order. */
function backupSetEntries(): Expected[] {
  return [
    { name: 'vda.full.data', data: diskLikeData(64 * 1024 * 1024) },
    { name: 'vda.full.data.chksum', data: Buffer.from('3213438597') },
    { name: 'empty.data', data: Buffer.alloc(0) },
    { name: 'checkpoints/virtnbdbackup.0.xml', data: Buffer.from('<domaincheckpoint><name>virtnbdbackup.0</name></domaincheckpoint>') },
    { name: 'sda.full.data', data: diskLikeData(300_000) },
  ];
}

/** Writes `entries` through a ZipSink: data files streamed in pieces, small files added whole. */
async function writeZip(output: Writable, entries: Expected[]): Promise<void> {
  const zip = new ZipSink(output);
  for (const { name, data } of entries) {
    if (name.endsWith('.data')) {
      await pipeline(Readable.from(pieces(data, 1024 * 1024 + 7)), zip.entry(name));
    } else {
      await zip.add(name, data);
    }
  }
  await zip.finalize();
}

function check(t: ExecutionContext, seen: Seen[], entries: Expected[], sizesKnown: boolean): void {
  t.deepEqual(
    seen.map((s) => s.name),
    entries.map((e) => e.name),
  );
  for (const [i, expected] of entries.entries()) {
    t.is(seen[i].length, expected.data.length, expected.name);
    t.is(seen[i].sha256, sha256(expected.data), expected.name);
    if (sizesKnown) t.is(seen[i].size, expected.data.length, expected.name);
  }
}

async function backupSetZip(t: ExecutionContext): Promise<{ dir: string; path: string; entries: Expected[] }> {
  const dir = await tempDir(t);
  const path = join(dir, 'backup.zip');
  const entries = backupSetEntries();
  await writeZip(new FileSink(path), entries);
  t.deepEqual(await readdir(dir), ['backup.zip']);
  return { dir, path, entries };
}

test('ZipSink output reads back through the central directory (file path)', async (t) => {
  const { path, entries } = await backupSetZip(t);
  check(t, await readAll(new ZipSource(path)), entries, true);
});

test('ZipSink output reads back sequentially from a stream that cannot seek', async (t) => {
  const { path, entries } = await backupSetZip(t);
  check(t, await readAll(new ZipSource(createReadStream(path))), entries, false);
});

test('ZipSink output reads back from a pipe (child process stdout) and from a FIFO path', async (t) => {
  const { dir, path, entries } = await backupSetZip(t);
  const cat = spawn('cat', [path], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => cat.kill());
  check(t, await readAll(new ZipSource(cat.stdout, { label: 'stdin' })), entries, false);

  const fifo = join(dir, 'fifo');
  await run('mkfifo', [fifo]);
  const writer = spawn('sh', ['-c', 'cat "$1" > "$2"', 'sh', path, fifo], { stdio: 'ignore' });
  t.teardown(() => writer.kill());
  check(t, await readAll(new ZipSource(fifo)), entries, false);
});

test('unzip -t and python zipfile accept ZipSink output', async (t) => {
  const { path, entries } = await backupSetZip(t);
  const unzip = await run('unzip', ['-t', path]);
  t.regex(unzip.stdout, /No errors detected/);
  const python = await run(PYTHON, [
    '-c',
    'import json, sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nprint(json.dumps({"bad": z.testzip(), "entries": [[i.filename, i.file_size, i.compress_type] for i in z.infolist()]}))',
    path,
  ]);
  const report = JSON.parse(python.stdout) as { bad: string | null; entries: Array<[string, number, number]> };
  t.is(report.bad, null);
  t.deepEqual(
    report.entries,
    entries.map((e) => [e.name, e.data.length, 0]),
  );
});

test('ZipSink streams into a child process stdin (a pipe); the file it writes is a valid zip', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'piped.zip');
  const child = spawn('sh', ['-c', 'cat > "$1"', 'sh', path], { stdio: ['pipe', 'ignore', 'inherit'] });
  t.teardown(() => child.kill());
  const exited = once(child, 'exit');
  const entries = backupSetEntries().slice(1);
  entries.unshift({ name: 'vda.inc.virtnbdbackup.1.data', data: diskLikeData(8 * 1024 * 1024) });
  await writeZip(child.stdin, entries);
  const [code] = await exited;
  t.is(code, 0);
  const python = await run(PYTHON, ['-c', 'import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).testzip())', path]);
  t.is(python.stdout.trim(), 'None');
  check(t, await readAll(new ZipSource(path)), entries, true);
});

test('reads what virtnbdbackup writes to stdout (python zipfile, streamed, zip64 data descriptors)', async (t) => {
  const dir = await tempDir(t);
  const data = diskLikeData(3 * 1024 * 1024);
  const dataPath = join(dir, 'vda.full.data');
  await writeFile(dataPath, data);
  // As libvirtnbdbackup's zip output does: ZipFile on the stdout pipe, entries opened with force_zip64.
  const script = [
    'import sys, time, zipfile',
    'z = zipfile.ZipFile(sys.stdout.buffer, "x", zipfile.ZIP_STORED)',
    'for name, data in [("vda.full.data", open(sys.argv[1], "rb").read()), ("vmconfig.virtnbdbackup.0.xml", b"<domain/>")]:',
    '    info = zipfile.ZipInfo(filename=name, date_time=time.localtime(time.time())[:6])',
    '    info.compress_type = zipfile.ZIP_STORED',
    '    with z.open(info, "w", force_zip64=True) as f:',
    '        f.write(data)',
    'z.write(sys.argv[1], "copy-of-data")',
    'z.close()',
  ].join('\n');
  const expected: Expected[] = [
    { name: 'vda.full.data', data },
    { name: 'vmconfig.virtnbdbackup.0.xml', data: Buffer.from('<domain/>') },
    { name: 'copy-of-data', data },
  ];
  // Straight from the pipe.
  const python = spawn(PYTHON, ['-c', script, dataPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => python.kill());
  check(t, await readAll(new ZipSource(python.stdout, { label: 'stdin' })), expected, false);
  // Saved through a pipe (so python still cannot seek), read from the file.
  const zipPath = join(dir, 'python.zip');
  await run('sh', ['-c', `"$0" -c '${script.replace(/'/g, `'"'"'`)}' "$1" | cat > "$2"`, PYTHON, dataPath, zipPath]);
  check(t, await readAll(new ZipSource(zipPath)), expected, true);
  check(t, await readAll(new ZipSource(createReadStream(zipPath))), expected, false);
});

test('deflated entries (python zipfile) read from a file and from a stream', async (t) => {
  const dir = await tempDir(t);
  const zipPath = join(dir, 'deflated.zip');
  const text = Buffer.from('<domain type="kvm"><name>vm1</name></domain>\n'.repeat(20_000));
  const random = randomBytes(200_000);
  await writeFile(join(dir, 'text'), text);
  await writeFile(join(dir, 'random'), random);
  await run(PYTHON, [
    '-c',
    'import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:\n    z.write(sys.argv[2], "vmconfig.virtnbdbackup.0.xml")\n    z.write(sys.argv[3], "random.bin")',
    zipPath,
    join(dir, 'text'),
    join(dir, 'random'),
  ]);
  const expected: Expected[] = [
    { name: 'vmconfig.virtnbdbackup.0.xml', data: text },
    { name: 'random.bin', data: random },
  ];
  check(t, await readAll(new ZipSource(zipPath)), expected, true);
  check(t, await readAll(new ZipSource(createReadStream(zipPath))), expected, true);
});

test('a compressed entry of unknown size in a stream (zip - | ...) is a clear error', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'text'), 'hello '.repeat(10_000));
  const zip = spawn('zip', ['-q', '-', 'text'], { cwd: dir, stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => zip.kill());
  await t.throwsAsync(readAll(new ZipSource(zip.stdout, { label: 'stdin' })), {
    instanceOf: ZipSourceError,
    message: /stdin: entry "text" .*compressed and its size is only given after its data/,
  });
});

test('entries nobody reads are skipped, from a file and from a stream', async (t) => {
  const { path, entries } = await backupSetZip(t);
  const wanted = entries[3];
  t.true((await readOne(new ZipSource(path), wanted.name))!.equals(wanted.data));
  t.true((await readOne(new ZipSource(createReadStream(path)), wanted.name))!.equals(wanted.data));
  const names: string[] = [];
  for await (const entry of new ZipSource(createReadStream(path))) names.push(entry.name);
  t.deepEqual(
    names,
    entries.map((e) => e.name),
  );
});

test('breaking out of the loop early closes the input', async (t) => {
  const { path } = await backupSetZip(t);
  const input = createReadStream(path);
  for await (const entry of new ZipSource(input)) {
    t.is(entry.name, 'vda.full.data');
    break;
  }
  t.true(input.destroyed);
});

test('a damaged entry errors its stream (CRC-32), from a file and from a stream', async (t) => {
  const { dir, path } = await backupSetZip(t);
  const damaged = join(dir, 'damaged.zip');
  await copyFile(path, damaged);
  const file = await open(damaged, 'r+');
  // Well inside the first entry's data (it starts after a ~43 byte local header).
  await file.write(Buffer.from([0xff ^ (await readFile(path))[5_000_000]]), 0, 1, 5_000_000);
  await file.close();
  for (const source of [new ZipSource(damaged), new ZipSource(createReadStream(damaged))]) {
    const error = await t.throwsAsync(readAll(source), { instanceOf: ZipSourceError });
    t.regex(error!.message, /"vda\.full\.data".*damaged: CRC-32/);
  }
});

test('a truncated archive is an error, not a hang', async (t) => {
  const { dir, path } = await backupSetZip(t);
  const truncated = join(dir, 'truncated.zip');
  const whole = await readFile(path);
  await writeFile(truncated, whole.subarray(0, 10_000_000));
  const fromStream = await t.throwsAsync(readAll(new ZipSource(createReadStream(truncated))), { instanceOf: ZipSourceError });
  t.regex(fromStream!.message, /truncated/);
  const fromFile = await t.throwsAsync(readAll(new ZipSource(truncated)), { instanceOf: ZipSourceError });
  t.true(fromFile!.message.includes(truncated), fromFile!.message);
  // Cut just before the central directory (its offset is in the end record, the last 22 bytes).
  await writeFile(truncated, whole.subarray(0, whole.readUInt32LE(whole.length - 22 + 16)));
  await t.throwsAsync(readAll(new ZipSource(createReadStream(truncated))), { instanceOf: ZipSourceError, message: /truncated/ });
});

test('what is not a zip archive is a typed error', async (t) => {
  const dir = await tempDir(t);
  const junk = join(dir, 'junk.zip');
  await writeFile(junk, randomBytes(100_000));
  await t.throwsAsync(readAll(new ZipSource(junk)), { instanceOf: ZipSourceError, message: /junk\.zip is not a readable zip archive/ });
  await t.throwsAsync(readAll(new ZipSource(createReadStream(junk), { label: 'stdin' })), { instanceOf: ZipSourceError, message: /stdin: not a zip archive/ });
  await t.throwsAsync(readAll(new ZipSource(Readable.from([]), { label: 'stdin' })), { instanceOf: ZipSourceError, message: /stdin: empty input/ });
  await t.throwsAsync(readAll(new ZipSource(join(dir, 'missing.zip'))), { instanceOf: ZipSourceError, message: /missing\.zip/ });
});

test('an entry whose producer fails fails the archive: no zip file is left', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'backup.zip');
  const output = new FileSink(path);
  const zip = new ZipSink(output);
  await zip.add('vmconfig.virtnbdbackup.0.xml', '<domain/>');
  async function* failing(): AsyncGenerator<Buffer> {
    yield randomBytes(3 * 1024 * 1024);
    throw new Error('NBD server went away');
  }
  await t.throwsAsync(pipeline(failing(), zip.entry('vda.full.data')), { message: 'NBD server went away' });
  await t.throwsAsync(zip.finalize(), { message: 'NBD server went away' });
  t.throws(() => zip.entry('sda.full.data'), { instanceOf: ZipSinkError });
  // FileSink, destroyed with the error, removed its partial file.
  t.true(output.destroyed);
  t.deepEqual(await readdir(dir), []);
});

test('a failing output fails the entries being written', async (t) => {
  const output = new Writable({
    write(_chunk, _encoding, callback) {
      callback(new Error('disk on fire'));
    },
  });
  const zip = new ZipSink(output);
  await t.throwsAsync(pipeline(Readable.from(pieces(randomBytes(4 * 1024 * 1024), 65536)), zip.entry('vda.full.data')), { message: 'disk on fire' });
  await t.throwsAsync(zip.finalize(), { message: 'disk on fire' });
});

test('invalid entry names are refused rather than silently rewritten', (t) => {
  const zip = new ZipSink(new Writable({ write: (_c, _e, cb) => cb() }));
  for (const name of ['', '/etc/passwd', '../x', 'a//b', 'C:x', 'dir/', 'a\\b']) {
    t.throws(() => zip.entry(name), { instanceOf: ZipSinkError }, name);
  }
  zip.abort();
});

test('an entry larger than 4 GiB (zip64, streamed with a data descriptor) round-trips', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'large.zip');
  const block = randomBytes(1024 * 1024);
  const size = 4 * 1024 * 1024 * 1024 + 3 * 1024 * 1024 + 12_345;
  let crc = 0;
  function* blocks(): Generator<Buffer> {
    for (let left = size; left > 0; ) {
      const piece = block.subarray(0, Math.min(left, block.length));
      crc = crc32(piece, crc);
      left -= piece.length;
      yield piece;
    }
  }
  // The last MiB of the data: the end of one block, then the start of the last, partial one.
  const tail = Buffer.concat([block.subarray(size % block.length), block.subarray(0, size % block.length)]);
  // No fsync: FileSink's syncing is tested elsewhere; 4 GiB of writeback would only slow this down.
  const zip = new ZipSink(new FileSink(path, { sync: false }));
  await zip.add('first.txt', 'first');
  await pipeline(Readable.from(blocks()), zip.entry('big.data'));
  await zip.add('last.txt', 'last');
  await zip.finalize();

  // Python reads the zip64 central directory and seeks to the entry's end.
  const python = await run(PYTHON, [
    '-c',
    [
      'import json, sys, zipfile',
      'z = zipfile.ZipFile(sys.argv[1])',
      'f = z.open("big.data"); f.seek(-1048576, 2); tail = f.read()',
      'print(json.dumps({"entries": [[i.filename, i.file_size, i.CRC] for i in z.infolist()], "tail": tail.hex()[:64], "tailLength": len(tail), "last": z.read("last.txt").decode()}))',
    ].join('\n'),
    path,
  ]);
  const report = JSON.parse(python.stdout) as { entries: Array<[string, number, number]>; tail: string; tailLength: number; last: string };
  t.deepEqual(report.entries, [
    ['first.txt', 5, crc32('first')],
    ['big.data', size, crc],
    ['last.txt', 4, crc32('last')],
  ]);
  t.is(report.tailLength, 1024 * 1024);
  t.is(report.tail, tail.subarray(0, 32).toString('hex'));
  t.is(report.last, 'last');

  // Both of our readers; ZipSource checks the CRC-32 itself, we count bytes and compare the tail.
  for (const source of [new ZipSource(path), new ZipSource(createReadStream(path, { highWaterMark: 1024 * 1024 }))]) {
    const seen: Array<[string, number, string]> = [];
    for await (const entry of source as AsyncIterable<ZipEntry>) {
      let length = 0;
      const recent: Buffer[] = [];
      let recentLength = 0;
      await pipeline(
        entry.stream,
        new Writable({
          write(chunk: Buffer, _encoding, callback) {
            length += chunk.length;
            recent.push(chunk);
            recentLength += chunk.length;
            while (recentLength - recent[0].length >= 1024 * 1024) recentLength -= recent.shift()!.length;
            callback();
          },
        }),
      );
      const last = Buffer.concat(recent).subarray(-1024 * 1024);
      seen.push([entry.name, length, entry.name === 'big.data' ? String(last.equals(tail)) : last.toString()]);
    }
    t.deepEqual(seen, [
      ['first.txt', 5, 'first'],
      ['big.data', size, 'true'],
      ['last.txt', 4, 'last'],
    ]);
  }
});
