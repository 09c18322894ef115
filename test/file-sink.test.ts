import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile, mkdir, rmdir } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { FileSink, FileSinkError } from '../streams/FileSink.js';

const run = promisify(execFile);

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'virtnbd-filesink-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function chunksOf(data: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < data.length; at += size) out.push(data.subarray(at, at + size));
  return out;
}

test('writes the file under its final name, no partial left', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'vda.full.data');
  const data = randomBytes(5 * 1024 * 1024 + 123);
  const sink = new FileSink(path);
  await pipeline(Readable.from(chunksOf(data, 100_000)), sink);
  t.true((await readFile(path)).equals(data));
  t.deepEqual(await readdir(dir), ['vda.full.data']);
  t.is(sink.bytesWritten, data.length);
  t.is(sink.partialPath, `${path}.partial`);
});

test('many small writes queued at once arrive in order', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'small.data');
  const sink = new FileSink(path, { highWaterMark: 64 * 1024 });
  const pieces: Buffer[] = [];
  for (let i = 0; i < 5000; i++) pieces.push(Buffer.from(`line ${i}\n`));
  for (const piece of pieces) sink.write(piece);
  sink.end();
  await once(sink, 'finish');
  t.true((await readFile(path)).equals(Buffer.concat(pieces)));
});

test('an empty input makes an empty file', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'empty.data');
  await pipeline(Readable.from([]), new FileSink(path));
  t.is((await readFile(path)).length, 0);
});

test('a source failing mid-stream leaves neither the file nor the partial', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'vda.full.data');
  async function* failing(): AsyncGenerator<Buffer> {
    yield randomBytes(1024 * 1024);
    yield randomBytes(1024 * 1024);
    throw new Error('NBD connection lost');
  }
  const sink = new FileSink(path);
  await t.throwsAsync(pipeline(failing(), sink), { message: 'NBD connection lost' });
  // pipeline() may reject while the sink still removes its partial file: done once it is closed (as backupDisk waits).
  if (!sink.closed) await new Promise((resolve) => sink.once('close', resolve));
  t.deepEqual(await readdir(dir), []);
});

test('destroy() aborts: the partial file is removed, nothing under the final name', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'vda.full.data');
  const sink = new FileSink(path);
  sink.write(randomBytes(256 * 1024));
  await new Promise<void>((resolve) => sink.write(randomBytes(1024), () => resolve()));
  t.deepEqual(await readdir(dir), ['vda.full.data.partial']);
  sink.destroy();
  await once(sink, 'close');
  t.deepEqual(await readdir(dir), []);
});

test('refuses to clobber an existing file, before writing anything', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'vda.full.data');
  await writeFile(path, 'precious');
  const error = await t.throwsAsync(pipeline(Readable.from([Buffer.from('new')]), new FileSink(path)), { instanceOf: FileSinkError });
  t.is(error!.code, 'EEXIST');
  t.true(error!.message.includes(path), error!.message);
  t.is(await readFile(path, 'utf8'), 'precious');
  t.deepEqual(await readdir(dir), ['vda.full.data']);
});

test('overwrite: true replaces an existing file', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'vda.full.data');
  await writeFile(path, 'old');
  await pipeline(Readable.from([Buffer.from('new')]), new FileSink(path, { overwrite: true }));
  t.is(await readFile(path, 'utf8'), 'new');
  t.deepEqual(await readdir(dir), ['vda.full.data']);
});

test('a leftover partial file is an error and is left alone', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'vda.full.data');
  await writeFile(`${path}.partial`, 'someone else');
  const error = await t.throwsAsync(pipeline(Readable.from([Buffer.from('x')]), new FileSink(path)), { instanceOf: FileSinkError });
  t.is(error!.code, 'EEXIST');
  t.true(error!.message.includes(`${path}.partial`), error!.message);
  t.is(await readFile(`${path}.partial`, 'utf8'), 'someone else');
  t.deepEqual(await readdir(dir), ['vda.full.data.partial']);
});

test('a missing directory is an error naming the file', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'nope', 'vda.full.data');
  const error = await t.throwsAsync(pipeline(Readable.from([Buffer.from('x')]), new FileSink(path)), { instanceOf: FileSinkError });
  t.is(error!.code, 'ENOENT');
  t.true(error!.message.includes(path), error!.message);
});

test('disk full (ENOSPC on a 1 MiB tmpfs) is an error naming the file, and the partial is removed', async (t) => {
  const dir = await tempDir(t);
  const mountPoint = join(dir, 'small');
  await mkdir(mountPoint);
  await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mountPoint]);
  t.teardown(async () => {
    await run('umount', [mountPoint]);
    await rmdir(mountPoint);
  });
  const path = join(mountPoint, 'vda.full.data');
  const error = await t.throwsAsync(pipeline(Readable.from(chunksOf(randomBytes(3 * 1024 * 1024), 256 * 1024)), new FileSink(path)), {
    instanceOf: FileSinkError,
  });
  t.is(error!.code, 'ENOSPC');
  t.true(error!.message.includes(path), error!.message);
  t.regex(error!.message, /no space left on device/);
  t.deepEqual(await readdir(mountPoint), []);
  // The space is free again: a small file fits.
  await pipeline(Readable.from([Buffer.alloc(100_000, 1)]), new FileSink(join(mountPoint, 'small.data')));
  t.deepEqual(await readdir(mountPoint), ['small.data']);
});
