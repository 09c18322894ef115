/**
 * The stages the backup adds to the sparse-stream ones: Lz4Compress's
 * gathering of read pieces into maximum-request units (the LZ4 framing
 * virtnbdbackup's restore expects), ZeroAsData (changed ranges that read
 * as zeros travel as data in incremental streams), RawImageSink (sparse raw
 * images written at offsets, nothing left under a final name on failure)
 * and ProgressTap.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import test from 'ava';
import { decompressFrameSync } from 'lz4-napi';
import type { Chunk } from '../lib/chunk.js';
import { FramerInputError, Lz4DataError } from '../lib/format/errors.js';
import { createMetadata } from '../lib/format/metadata.js';
import { lz4PartBound } from '../lib/lz4/frameEncoder.js';
import { Lz4WorkerPool } from '../lib/lz4/pool.js';
import { Lz4Compress } from '../streams/Lz4Compress.js';
import { Lz4Decompress } from '../streams/Lz4Decompress.js';
import { ProgressTap } from '../streams/ProgressTap.js';
import { RawImageSink, RawImageSinkError } from '../streams/RawImageSink.js';
import { SparseFramer } from '../streams/SparseFramer.js';
import { SparseParser } from '../streams/SparseParser.js';
import { ZeroAsData } from '../streams/ZeroAsData.js';
import { peekStream } from './helpers/stream-peek.js';

const KiB = 1024;

/** The pieces NbdReader would make of a data frame: `piece`-sized reads carrying `frame` when more than one. */
function pieces(offset: number, data: Buffer, piece: number): Chunk[] {
  const out: Chunk[] = [];
  const frame = data.length > piece ? { offset, length: data.length } : undefined;
  for (let at = 0; at < data.length; at += piece) {
    const part = data.subarray(at, Math.min(at + piece, data.length));
    const chunk: Chunk = { offset: offset + at, length: part.length, data: part };
    if (frame) chunk.frame = frame;
    out.push(chunk);
  }
  return out;
}

async function collect<T>(source: Readable | Iterable<T>, ...stages: NodeJS.ReadWriteStream[]): Promise<T[]> {
  const out: T[] = [];
  const sink = new Writable({
    objectMode: true,
    write(item: T, _e, done) {
      out.push(item);
      done();
    },
  });
  const input = source instanceof Readable ? source : Readable.from(source as Iterable<T>, { objectMode: true });
  await pipeline([input, ...stages, sink]);
  return out;
}

test('Lz4Compress with unitSize: one LZ4 frame per maximum-request unit from the frame start, whatever the read size', async (t) => {
  const unit = 64 * KiB;
  const big = randomBytes(unit * 2 + 10 * KiB); // three units: 64, 64, 10 KiB
  const small = randomBytes(40 * KiB); // shorter than a unit: one LZ4 frame
  const exact = randomBytes(unit); // exactly one unit
  // 24 KiB reads do not divide the unit: pieces straddle unit boundaries.
  const input: Chunk[] = [
    ...pieces(0, big, 24 * KiB),
    { offset: 200 * KiB, length: 16 * KiB, zero: true },
    ...pieces(256 * KiB, small, 16 * KiB),
    ...pieces(512 * KiB, exact, 16 * KiB),
  ];
  const out = await collect<Chunk>(input, new Lz4Compress({ unitSize: unit, depth: 3 }));
  t.deepEqual(
    out.map((c) => [c.offset, c.length, c.zero === true, c.frame?.length]),
    [
      [0, unit, false, big.length],
      [unit, unit, false, big.length],
      [2 * unit, 10 * KiB, false, big.length],
      [200 * KiB, 16 * KiB, true, undefined],
      [256 * KiB, 40 * KiB, false, undefined],
      [512 * KiB, unit, false, undefined],
    ],
  );
  const expected = [big.subarray(0, unit), big.subarray(unit, 2 * unit), big.subarray(2 * unit), undefined, small, exact];
  out.forEach((c, i) => {
    if (c.zero) return;
    t.is(c.data, undefined);
    t.true(decompressFrameSync(c.lz4!).equals(expected[i]!), `unit ${i} decompresses to its bytes`);
  });

  // Framed as virtnbdbackup frames it: the long frame gets {"total": [3 sizes]}, the exact one {"total": [1]}, the short one a number.
  const metadata = createMetadata({
    virtualSize: 1024 * KiB,
    dataSize: big.length + small.length + exact.length,
    diskName: 'vda',
    diskFormat: 'qcow2',
    checkpointName: 'virtnbdbackup.0',
    compressed: 2,
  });
  const framer = new SparseFramer({ metadata, maxRequestSize: unit });
  const bytes = Buffer.concat(await collect<Buffer>(Readable.from(out, { objectMode: true }), framer));
  const peek = peekStream(bytes);
  t.is(peek.trailer!.length, 3);
  t.deepEqual(Object.values(peek.trailer![0] as Record<string, number[]>)[0]!.length, 3);
  t.is(typeof peek.trailer![1], 'number');
  t.deepEqual(Object.values(peek.trailer![2] as Record<string, number[]>)[0]!.length, 1);
  // And our parser reads the stream back to the same bytes.
  const back = await collect<Chunk>(Readable.from([bytes]), new SparseParser(), new Lz4Decompress());
  const data = Buffer.concat(back.filter((c) => !c.zero).map((c) => c.data!));
  t.true(data.equals(Buffer.concat([big, small, exact])));
});

test('Lz4Compress with unitSize: pieces out of place and input ending inside a frame are errors', async (t) => {
  const data = randomBytes(48 * KiB);
  const [first, , third] = pieces(0, data, 16 * KiB);
  await t.throwsAsync(collect<Chunk>([first!, third!], new Lz4Compress({ unitSize: 32 * KiB })), { instanceOf: FramerInputError, message: /expected the piece at 16384/ });
  await t.throwsAsync(collect<Chunk>([first!], new Lz4Compress({ unitSize: 32 * KiB })), { instanceOf: FramerInputError, message: /input ended inside the data frame/ });
  t.throws(() => new Lz4Compress({ unitSize: 0 }), { instanceOf: RangeError });
});

const MiB = 1024 * KiB;

/** Bytes that compress somewhat: random 64 KiB blocks between runs of text. */
function mixedBytes(length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let at = 0; at < length; at += 128 * KiB) {
    randomBytes(64 * KiB).copy(out, at);
    const text = Buffer.from(`block ${at} of a test disk; `.repeat(4096));
    text.copy(out, at + 64 * KiB, 0, Math.min(64 * KiB, Math.max(0, length - at - 64 * KiB)));
  }
  return out;
}

/** Parts back into whole LZ4 frames: [unit chunk, frame] in order; every part but a frame's last has lz4More. */
function joinParts(parts: Chunk[]): Array<[Chunk, Buffer]> {
  const out: Array<[Chunk, Buffer]> = [];
  let pending: Buffer[] = [];
  for (const c of parts) {
    if (c.zero) {
      out.push([c, Buffer.alloc(0)]);
      continue;
    }
    pending.push(c.lz4!);
    if (c.lz4More) continue;
    out.push([c, Buffer.concat(pending)]);
    pending = [];
  }
  return out;
}

test('Lz4Compress with parts: LZ4 frames stream out in slot-sized parts, framed to exactly the bytes of whole frames', async (t) => {
  const pool = new Lz4WorkerPool({ workers: 2 });
  t.teardown(() => pool.close());
  const unit = 10 * MiB;
  const big = mixedBytes(2 * unit + 3 * MiB + 5); // units of 10, 10 and 3 MiB (+5 bytes)
  const small = mixedBytes(40 * KiB);
  const input = (): Chunk[] => [
    ...pieces(0, big, 512 * KiB),
    { offset: 24 * MiB, length: MiB, zero: true },
    ...pieces(26 * MiB, small, 16 * KiB),
  ];
  const parts = await collect<Chunk>(input(), new Lz4Compress({ unitSize: unit, parts: true, depth: 1, pool }));
  const whole = await collect<Chunk>(input(), new Lz4Compress({ unitSize: unit, depth: 1, pool }));

  const maxPart = lz4PartBound(MiB, true, true);
  t.true(parts.every((c) => c.zero || c.lz4!.length <= maxPart), 'no part holds more than one slot of content');
  t.true(parts.every((c) => c.data === undefined));
  t.is(parts.filter((c) => c.lz4More).length, 9 + 9 + 3, 'a 10 MiB unit comes in 10 parts of 1 MiB (9 with more to come), a 3 MiB one in 4');
  const joined = joinParts(parts);
  t.deepEqual(
    joined.map(([c]) => [c.offset, c.length, c.zero === true, c.frame?.length]),
    whole.map((c) => [c.offset, c.length, c.zero === true, c.frame?.length]),
  );
  const expected = [big.subarray(0, unit), big.subarray(unit, 2 * unit), big.subarray(2 * unit), undefined, small];
  joined.forEach(([c, lz4], i) => {
    if (c.zero) return;
    t.true(lz4.equals(whole[i]!.lz4!), `unit ${i}: the parts make the same LZ4 frame as the whole one`);
    t.true(decompressFrameSync(lz4).equals(expected[i]!), `unit ${i} decompresses to its bytes`);
  });

  const metadata = createMetadata({
    virtualSize: 32 * MiB,
    dataSize: big.length + small.length,
    diskName: 'vda',
    diskFormat: 'qcow2',
    checkpointName: 'virtnbdbackup.0',
    compressed: 2,
  });
  const framed = async (chunks: Chunk[]): Promise<{ bytes: Buffer; trailer: unknown }> => {
    const framer = new SparseFramer({ metadata, maxRequestSize: unit });
    const bytes = Buffer.concat(await collect<Buffer>(Readable.from(chunks, { objectMode: true }), framer));
    return { bytes, trailer: framer.trailer };
  };
  const fromParts = await framed(parts);
  const fromWhole = await framed(whole);
  t.deepEqual(fromParts.trailer, fromWhole.trailer, 'trailer sizes count each LZ4 frame over its parts');
  t.true(fromParts.bytes.equals(fromWhole.bytes), 'the stream is byte for byte the one whole frames make');

  // Lz4Decompress takes the parts straight from Lz4Compress too, and the framed stream reads back.
  const direct = await collect<Chunk>(parts, new Lz4Decompress({ pool }));
  t.true(Buffer.concat(direct.filter((c) => !c.zero).map((c) => c.data!)).equals(Buffer.concat([big, small])));
  const back = await collect<Chunk>(Readable.from([fromParts.bytes]), new SparseParser(), new Lz4Decompress({ pool }));
  t.true(Buffer.concat(back.filter((c) => !c.zero).map((c) => c.data!)).equals(Buffer.concat([big, small])));
});

test('Lz4Compress with parts holds input back while its output is not read: a slow reader never has a whole frame queued', async (t) => {
  const pool = new Lz4WorkerPool({ workers: 1 });
  t.teardown(() => pool.close());
  const unit = 32 * MiB;
  const data = mixedBytes(unit);
  const compressor = new Lz4Compress({ unitSize: unit, parts: true, depth: 1, pool });
  let most = 0;
  let seen = 0;
  const slow = new Writable({
    objectMode: true,
    highWaterMark: 1,
    write(_chunk: Chunk, _e, done) {
      seen += 1;
      // Stall until the compressor has made all it will without being read (its queue stops growing).
      let last = -1;
      const watch = (): void => {
        most = Math.max(most, compressor.readableLength);
        if (compressor.readableLength === last) done();
        else setTimeout(watch, 300);
        last = compressor.readableLength;
      };
      watch();
    },
  });
  // One read of the whole unit, as a reader with 32 MiB requests makes: all of it is input at once.
  await pipeline([Readable.from([{ offset: 0, length: unit, data }], { objectMode: true }), compressor, slow]);
  t.is(seen, 32, 'a 32 MiB unit comes in 32 parts');
  // One part on the readable side, plus at most the worker's two slots' parts made meanwhile.
  t.true(most <= 3, `parts queued at most: ${most}`);
});

test('frames in parts: SparseFramer and Lz4Decompress reject a part that does not continue its LZ4 frame', async (t) => {
  const pool = new Lz4WorkerPool({ workers: 1 });
  t.teardown(() => pool.close());
  const data = mixedBytes(9 * MiB);
  const parts = await collect<Chunk>(pieces(0, data, MiB), new Lz4Compress({ unitSize: 16 * MiB, parts: true, pool }));
  t.is(parts.length, 9);
  const stray: Chunk = { offset: 9 * MiB, length: 4096, lz4: parts[2]!.lz4! };
  const metadata = createMetadata({ virtualSize: 16 * MiB, dataSize: data.length + 4096, diskName: 'vda', diskFormat: 'qcow2', checkpointName: 'virtnbdbackup.0', compressed: 2 });
  await t.throwsAsync(collect<Buffer>(Readable.from([parts[0]!, stray], { objectMode: true }), new SparseFramer({ metadata, maxRequestSize: 16 * MiB })), {
    instanceOf: FramerInputError,
    message: /expected the next part of the LZ4 frame of the piece at 0/,
  });
  await t.throwsAsync(collect<Buffer>(Readable.from(parts.slice(0, 2), { objectMode: true }), new SparseFramer({ metadata, maxRequestSize: 16 * MiB })), {
    instanceOf: FramerInputError,
    message: /input ended inside the data frame at 0/,
  });
  await t.throwsAsync(collect<Chunk>([parts[0]!, stray], new Lz4Decompress({ pool })), { instanceOf: Lz4DataError, message: /came in parts, but the chunk at 9437184/ });
  await t.throwsAsync(collect<Chunk>(parts.slice(0, 2), new Lz4Decompress({ pool })), { instanceOf: Lz4DataError, message: /input ended inside the LZ4 frame/ });
});

test('ZeroAsData turns zero chunks into data pieces of zeros with their frame, without copying per piece', async (t) => {
  const payload = Buffer.from('changed');
  const input: Chunk[] = [
    { offset: 0, length: payload.length, data: payload },
    { offset: 64 * KiB, length: 40 * KiB, zero: true },
    { offset: 128 * KiB, length: 8 * KiB, zero: true },
  ];
  const stage = new ZeroAsData({ pieceSize: 16 * KiB });
  const out = await collect<Chunk>(input, stage);
  t.deepEqual(
    out.map((c) => [c.offset, c.length, c.frame?.offset, c.frame?.length]),
    [
      [0, payload.length, undefined, undefined],
      [64 * KiB, 16 * KiB, 64 * KiB, 40 * KiB],
      [80 * KiB, 16 * KiB, 64 * KiB, 40 * KiB],
      [96 * KiB, 8 * KiB, 64 * KiB, 40 * KiB],
      [128 * KiB, 8 * KiB, undefined, undefined],
    ],
  );
  t.true(out.slice(1).every((c) => c.data!.length === c.length && c.data!.every((b) => b === 0)));
  t.is(out[1]!.data!.buffer, out[2]!.data!.buffer, 'pieces share one zero buffer');
  t.is(stage.zeroBytes, 48 * KiB);

  // In an incremental stream they are data frames, so a restore writes the zeros.
  const metadata = createMetadata({
    virtualSize: 256 * KiB,
    dataSize: payload.length + 48 * KiB,
    diskName: 'vda',
    diskFormat: 'qcow2',
    checkpointName: 'virtnbdbackup.1',
    parentCheckpoint: 'virtnbdbackup.0',
    incremental: true,
  });
  const bytes = Buffer.concat(await collect<Buffer>(Readable.from(out, { objectMode: true }), new SparseFramer({ metadata })));
  t.deepEqual(
    peekStream(bytes).frames.filter((f) => f.kind !== 'meta').map((f) => [f.kind, f.offset, f.length]),
    [
      ['data', 0, payload.length],
      ['data', 64 * KiB, 40 * KiB],
      ['data', 128 * KiB, 8 * KiB],
      ['stop', 0, 0],
    ],
  );
});

test('ProgressTap reports data bytes and passes chunks through unchanged', async (t) => {
  const seen: number[] = [];
  const input: Chunk[] = [
    { offset: 0, length: 4, data: Buffer.from('abcd') },
    { offset: 4, length: 100, zero: true },
    { offset: 104, length: 2, data: Buffer.from('ef') },
  ];
  const tap = new ProgressTap((n) => seen.push(n));
  t.deepEqual(await collect<Chunk>(input, tap), input);
  t.deepEqual(seen, [4, 2]);
  t.is(tap.bytes, 6);
});

/** Resolves once a stream has closed (its cleanup done), whatever its error. */
function closed(stream: Writable): Promise<void> {
  return stream.closed ? Promise.resolve() : new Promise((resolve) => stream.once('close', () => resolve()));
}

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vnbdtest-stages-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('RawImageSink writes a sparse raw image at the chunk offsets, of the virtual size, under its final name only when done', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'vdb.copy.data');
  const a = randomBytes(64 * KiB);
  const b = Buffer.alloc(4 * KiB, 0xab);
  const size = 64 * 1024 * KiB;
  await pipeline(
    Readable.from(
      [
        { offset: 0, length: a.length, data: a },
        { offset: 1024 * KiB, length: 32 * 1024 * KiB, zero: true },
        { offset: 40 * 1024 * KiB, length: b.length, data: b },
      ] satisfies Chunk[],
      { objectMode: true },
    ),
    new RawImageSink(path, { virtualSize: size }),
  );
  t.false(existsSync(`${path}.partial`));
  const info = await stat(path);
  t.is(info.size, size);
  t.true(info.blocks * 512 < 1024 * KiB, `image is sparse (${info.blocks * 512} bytes allocated)`);
  const content = await readFile(path);
  t.true(content.subarray(0, a.length).equals(a));
  t.true(content.subarray(40 * 1024 * KiB, 40 * 1024 * KiB + b.length).equals(b));
  t.true(content.subarray(a.length, 40 * 1024 * KiB).every((x) => x === 0));
  // qemu-img agrees it is a plain raw image of that size.
  const qinfo = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-f', 'raw', path], { encoding: 'utf8' })) as { 'virtual-size': number };
  t.is(qinfo['virtual-size'], size);
});

test('RawImageSink removes its partial file on failure and refuses to overwrite', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'vda.full.data');
  const failing = new Readable({
    objectMode: true,
    read() {
      this.push({ offset: 0, length: 4, data: Buffer.from('abcd') } satisfies Chunk);
      this.destroy(new Error('NBD read failed'));
    },
  });
  const sink = new RawImageSink(path, { virtualSize: 1024 });
  await t.throwsAsync(pipeline(failing, sink), { message: 'NBD read failed' });
  // pipeline() rejects before a destroyed sink has finished its cleanup: wait for 'close'.
  await closed(sink);
  t.false(existsSync(path));
  t.false(existsSync(`${path}.partial`));

  const sink2 = new RawImageSink(path, { virtualSize: 1024 });
  await t.throwsAsync(pipeline(Readable.from([{ offset: 1020, length: 8, data: Buffer.alloc(8) }] satisfies Chunk[], { objectMode: true }), sink2), {
    instanceOf: RawImageSinkError,
    message: /past the virtual size/,
  });
  await closed(sink2);
  t.false(existsSync(`${path}.partial`));

  await writeFile(path, 'earlier backup');
  await t.throwsAsync(pipeline(Readable.from([] as Chunk[], { objectMode: true }), new RawImageSink(path, { virtualSize: 1024 })), {
    instanceOf: RawImageSinkError,
    message: /Refusing to overwrite/,
  });
  t.is(await readFile(path, 'utf8'), 'earlier backup');
});
