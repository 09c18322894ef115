/**
 * The NBD stream stages against real servers: ExtentSource (block status
 * of qemu-nbd, compared with nbdinfo --map), NbdReader (chunks rebuild the
 * image bytes), NbdWriter (copies into nbdkit memory and into a new qcow2
 * served by qemu-nbd, checked with qemu-img compare), and error paths.
 */
import test from 'ava';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Chunk } from '../lib/chunk.js';
import type { Extent } from '../lib/extent.js';
import { NbdClient } from '../lib/nbd/client.js';
import { NbdError, NbdUsageError } from '../lib/nbd/errors.js';
import { ExtentSource, type ExtentSourceOptions } from '../streams/ExtentSource.js';
import { NbdReader } from '../streams/NbdReader.js';
import { NbdWriter } from '../streams/NbdWriter.js';
import { run } from './helpers/exec.js';
import { MiB, NbdScratch, nbdFixtureImage } from './helpers/nbd-servers.js';

const BITMAP = 'qemu:dirty-bitmap:b0';

async function source(t: Parameters<typeof NbdScratch.create>[0]) {
  const s = await NbdScratch.create(t);
  const img = await nbdFixtureImage(s);
  const server = await s.qemuNbd(img.path, ['-t', '-e', '8', '-r', '-f', 'qcow2', '-x', 'disk', '-B', img.bitmap]);
  const uri = server.uri('disk');
  const client = await NbdClient.connect(uri, { metaContexts: ['base:allocation', BITMAP] });
  t.teardown(() => client.destroy());
  return { s, img, server, uri, client };
}

function collect<T>(): { sink: Writable; items: T[] } {
  const items: T[] = [];
  const sink = new Writable({
    objectMode: true,
    write(item: T, _enc, cb) {
      items.push(item);
      cb();
    },
  });
  return { sink, items };
}

async function extentsOf(client: NbdClient, opts: ExtentSourceOptions = {}): Promise<Extent[]> {
  const { sink, items } = collect<Extent>();
  await pipeline(new ExtentSource(client, opts), sink);
  return items;
}

type Kind = 'data' | 'zero' | 'skip';
const kind = (e: Extent): Kind => (e.data ? 'data' : e.zero ? 'zero' : 'skip');

/** nbdinfo's map for a context, classified and merged the way ExtentSource documents. */
async function oracle(uri: string, context: string, classify: (flags: number) => Kind): Promise<Array<[number, number, Kind]>> {
  const r = await run('nbdinfo', ['--json', `--map=${context}`, uri]);
  const out: Array<[number, number, Kind]> = [];
  for (const e of JSON.parse(r.stdout) as Array<{ offset: number; length: number; type: number }>) {
    const k = classify(e.type);
    const last = out[out.length - 1];
    if (last && last[2] === k && last[0] + last[1] === e.offset) last[1] += e.length;
    else out.push([e.offset, e.length, k]);
  }
  return out;
}

function assertCovers(t: { is: (a: unknown, b: unknown, m?: string) => void }, extents: Array<{ offset: number; length: number }>, size: number): void {
  let at = 0;
  for (const e of extents) {
    t.is(e.offset, at, `extent at ${e.offset} follows ${at}`);
    at += e.length;
  }
  t.is(at, size, 'extents cover the export');
}

test('ExtentSource: base:allocation extents equal nbdinfo --map, merged, zero = NBD_STATE_ZERO', async (t) => {
  const { client, uri, img } = await source(t);
  const extents = await extentsOf(client);
  assertCovers(t, extents, img.size);
  t.deepEqual(
    extents.map((e) => [e.offset, e.length, kind(e)]),
    await oracle(uri, 'base:allocation', (f) => (f & 2 ? 'zero' : 'data')),
  );
  // And the zero extents really read as zero.
  for (const e of extents.filter((x) => x.zero)) t.true(img.raw.subarray(e.offset, e.offset + e.length).every((b) => b === 0));
});

test('ExtentSource: dirty bitmap alone, and intersected with base:allocation', async (t) => {
  const { client, uri, img } = await source(t);
  const dirty = await extentsOf(client, { dirtyContext: BITMAP });
  assertCovers(t, dirty, img.size);
  t.deepEqual(
    dirty.map((e) => [e.offset, e.length, kind(e)]),
    await oracle(uri, BITMAP, (f) => (f & 1 ? 'data' : 'skip')),
  );
  const both = await extentsOf(client, { dirtyContext: BITMAP, intersectAllocation: true });
  assertCovers(t, both, img.size);
  // Dirty ranges that were zeroed are not read but reported as zero; clean ranges are skipped.
  t.deepEqual(
    both.filter((e) => kind(e) !== 'skip').map((e) => [e.offset / MiB, e.length / 1024, kind(e)]),
    [
      [1, 64, 'data'],
      [4, 64, 'zero'],
      [20, 3072, 'data'],
      [40, 128, 'zero'],
    ],
  );
});

test('ExtentSource: small query windows and split data extents describe the same disk', async (t) => {
  const { client, img } = await source(t);
  const whole = await extentsOf(client);
  const pieces = await extentsOf(client, { windowSize: 3 * MiB + 4096, maxDataLength: 256 * 1024 });
  assertCovers(t, pieces, img.size);
  for (const e of pieces) if (e.data) t.true(e.length <= 256 * 1024);
  // Re-merging the pieces gives the default answer: windows never split zero extents, never leave gaps.
  const remerged: Extent[] = [];
  for (const e of pieces) {
    const last = remerged[remerged.length - 1];
    if (last && kind(last) === kind(e) && last.offset + last.length === e.offset) last.length += e.length;
    else remerged.push({ ...e });
  }
  t.deepEqual(remerged, whole);
  t.deepEqual(
    pieces.filter((e) => e.zero),
    whole.filter((e) => e.zero),
  );
});

test('ExtentSource: a context the connection did not select is a usage error', async (t) => {
  const { uri } = await source(t);
  const c = await NbdClient.connect(uri, { metaContexts: ['base:allocation'] });
  t.teardown(() => c.destroy());
  t.throws(() => new ExtentSource(c, { dirtyContext: BITMAP }), { instanceOf: NbdUsageError, message: /qemu:dirty-bitmap:b0/ });
});

function rebuild(chunks: Chunk[], size: number): Buffer {
  const out = Buffer.alloc(size, 0xee); // not zero: zero chunks must be checked, not assumed
  for (const c of chunks) {
    if (c.zero) out.fill(0, c.offset, c.offset + c.length);
    else if (c.data) c.data.copy(out, c.offset);
  }
  return out;
}

test('NbdReader: chunks in offset order rebuild the image; long extents carry their frame', async (t) => {
  const { client, img } = await source(t);
  const { sink, items } = collect<Chunk>();
  let maxInFlight = 0;
  const watch = new Writable({
    objectMode: true,
    highWaterMark: 1,
    write(c: Chunk, _e, cb) {
      maxInFlight = Math.max(maxInFlight, client.inFlight);
      sink.write(c, cb);
    },
  });
  const reader = new NbdReader(client, { inFlight: 3, requestSize: 256 * 1024 });
  await pipeline(new ExtentSource(client), reader, watch);
  assertCovers(t, items, img.size);
  t.true(rebuild(items, img.size).equals(img.raw));
  t.true(maxInFlight <= 3, `at most 3 reads in flight, saw ${maxInFlight}`);
  for (const c of items) {
    if (c.data) {
      t.true(c.length <= 256 * 1024);
      t.is(c.data.length, c.length);
    }
  }
  // The 3 MiB of random data at 30 MiB is one extent read in 12 pieces, all naming it.
  const framed = items.filter((c) => c.frame?.offset === 30 * MiB);
  t.is(framed.length, 12);
  t.true(framed.every((c) => c.frame?.length === 3 * MiB));
  t.is(reader.bytesRead, items.filter((c) => c.data).reduce((n, c) => n + c.length, 0));
});

test('NbdReader: dirty extents only (incremental), clean ranges dropped', async (t) => {
  const { client, img } = await source(t);
  const { sink, items } = collect<Chunk>();
  await pipeline(new ExtentSource(client, { dirtyContext: BITMAP, intersectAllocation: true }), new NbdReader(client, { requestSize: MiB }), sink);
  // Request size 1 MiB: the 3 MiB dirty extent comes in 3 pieces of one frame.
  const frame = { offset: 20 * MiB, length: 3 * MiB };
  t.deepEqual(
    items.map((c) => [c.offset / MiB, c.length / 1024, c.zero ? 'zero' : 'data', c.frame]),
    [
      [1, 64, 'data', undefined],
      [4, 64, 'zero', undefined],
      [20, 1024, 'data', frame],
      [21, 1024, 'data', frame],
      [22, 1024, 'data', frame],
      [40, 128, 'zero', undefined],
    ],
  );
  const data = items.filter((c) => c.data);
  for (const c of data) t.true(c.data?.equals(img.raw.subarray(c.offset, c.offset + c.length)));
});

test('NbdReader: a failing read fails the pipeline with NbdError EIO', async (t) => {
  const s = await NbdScratch.create(t);
  const server = await s.nbdkit(['--filter=error', 'memory', '8M', 'error=EIO', 'error-pread-rate=100%']);
  const c = await NbdClient.connect(server.uri(), { metaContexts: ['base:allocation'] });
  t.teardown(() => c.destroy());
  const extents: Extent[] = [{ offset: 0, length: 8 * MiB, data: true, zero: false }];
  const err = await t.throwsAsync(pipeline(Readable.from(extents), new NbdReader(c, { requestSize: MiB }), collect<Chunk>().sink), {
    instanceOf: NbdError,
  });
  t.is(err?.code, 'EIO');
});

async function copy(client: NbdClient, target: NbdClient, opts: { targetIsZero?: boolean } = {}): Promise<NbdWriter> {
  const writer = new NbdWriter(target, { inFlight: 4, ...opts });
  await pipeline(new ExtentSource(client), new NbdReader(client, { requestSize: MiB }), writer);
  return writer;
}

function dataBytes(extents: Extent[]): number {
  return extents.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
}

test('NbdWriter: copy into nbdkit memory; qemu-img compare finds it identical', async (t) => {
  const { s, client, img } = await source(t);
  const target = await s.nbdkit(['memory', String(img.size)]);
  const tc = await NbdClient.connect(target.uri());
  t.teardown(() => tc.destroy());
  // Pre-fill the target with junk so zero chunks must really be written.
  for (let off = 0; off < img.size; off += 8 * MiB) await tc.write(off, Buffer.alloc(8 * MiB, 0x99));
  const writer = await copy(client, tc);
  t.is(writer.bytesWritten, dataBytes(await extentsOf(client)));
  t.is(writer.bytesWritten + writer.bytesZeroed, img.size);
  await tc.disconnect();
  const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', img.path, target.uri()], { okCodes: [0, 1] });
  t.is(cmp.exitCode, 0, cmp.stdout + cmp.stderr);
});

test('NbdWriter: restore into a new qcow2 served by qemu-nbd, zero chunks skipped on the fresh image', async (t) => {
  const { s, client, img } = await source(t);
  for (const targetIsZero of [true, false]) {
    const dst = s.path(`restored-${targetIsZero}.qcow2`);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', dst, String(img.size)]);
    const server = await s.qemuNbd(dst, ['-t', '-f', 'qcow2', '-x', 'restore']);
    const tc = await NbdClient.connect(server.uri('restore'));
    const writer = await copy(client, tc, { targetIsZero });
    t.is(writer.bytesZeroed, targetIsZero ? 0 : img.size - writer.bytesWritten);
    await tc.disconnect();
    await server.kill();
    const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', img.path, dst], { okCodes: [0, 1] });
    t.is(cmp.exitCode, 0, cmp.stdout + cmp.stderr);
    // Thin: nothing beyond the source's data got allocated.
    const map = JSON.parse((await run('qemu-img', ['map', '--output=json', '-f', 'qcow2', dst])).stdout) as Array<{ length: number; data: boolean }>;
    const allocated = map.filter((m) => m.data).reduce((n, m) => n + m.length, 0);
    t.true(allocated <= writer.bytesWritten, `allocated ${allocated} > written ${writer.bytesWritten} (targetIsZero ${targetIsZero})`);
  }
});

test('NbdWriter: ENOSPC from the server fails the pipeline with NbdError', async (t) => {
  const { s, client, img } = await source(t);
  const target = await s.nbdkit(['--filter=error', 'memory', String(img.size), 'error=ENOSPC', 'error-pwrite-rate=100%']);
  const tc = await NbdClient.connect(target.uri());
  t.teardown(() => tc.destroy());
  const err = await t.throwsAsync(copy(client, tc), { instanceOf: NbdError });
  t.is(err?.code, 'ENOSPC');
  t.is(err?.command, 'NBD_CMD_WRITE');
});

test('NbdWriter: refuses chunks that still hold LZ4 frames', async (t) => {
  const s = await NbdScratch.create(t);
  const server = await s.nbdkit(['memory', '1M']);
  const c = await NbdClient.connect(server.uri());
  t.teardown(() => c.destroy());
  const chunks: Chunk[] = [{ offset: 0, length: 4096, lz4: Buffer.alloc(10) }];
  await t.throwsAsync(pipeline(Readable.from(chunks), new NbdWriter(c)), { instanceOf: NbdUsageError, message: /LZ4 frame/ });
});
