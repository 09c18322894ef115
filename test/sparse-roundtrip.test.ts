import test from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import type { Chunk } from '../lib/chunk.js';
import { createMetadata, type StreamMetadata } from '../lib/format/metadata.js';
import type { CompressionTrailer } from '../lib/format/trailer.js';
import { Lz4Compress } from '../streams/Lz4Compress.js';
import { Lz4Decompress } from '../streams/Lz4Decompress.js';
import { SparseFramer } from '../streams/SparseFramer.js';
import { SparseParser } from '../streams/SparseParser.js';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const MAX_REQUEST = 64 * KiB;

// ---------------------------------------------------------------- a test disk

interface DiskExtent {
  offset: number;
  length: number;
  data: boolean;
}

interface Disk {
  image: Buffer;
  extents: DiskExtent[];
}

/** Small seeded PRNG so a failing layout can be reproduced from the seed in the test title. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let x = Math.imul(state ^ (state >>> 15), 1 | state);
    x ^= x + Math.imul(x ^ (x >>> 7), 61 | x);
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Fill data extents with half random, half compressible bytes; zero extents stay zero. */
function makeDisk(virtualSize: number, extents: DiskExtent[]): Disk {
  const image = Buffer.alloc(virtualSize);
  for (const extent of extents.filter((e) => e.data)) {
    const half = Math.floor(extent.length / 2);
    randomBytes(half).copy(image, extent.offset);
    image.fill(`block at ${extent.offset} `, extent.offset + half, extent.offset + extent.length);
  }
  return { image, extents };
}

/** A layout with the edge cases, then random extents; some ranges are holes (no frame at all). */
function layout(seed: number, virtualSize: number): DiskExtent[] {
  const random = prng(seed);
  const fixed: [number, boolean][] = [
    [1, true],
    [MAX_REQUEST - 1, true],
    [4096, false],
    [MAX_REQUEST, true],
    [Math.floor(3.5 * MAX_REQUEST), true],
    [2 * MAX_REQUEST, true],
    [300 * KiB, false],
  ];
  const extents: DiskExtent[] = [];
  let offset = 0;
  for (const [length, data] of fixed) {
    extents.push({ offset, length, data });
    offset += length;
  }
  while (offset < virtualSize) {
    const length = Math.min(virtualSize - offset, 1 + Math.floor(random() * 3 * MAX_REQUEST));
    const roll = random();
    if (roll < 0.15) {
      offset += length; // hole
      continue;
    }
    extents.push({ offset, length, data: roll < 0.65 });
    offset += length;
  }
  return extents;
}

/** The chunks NbdReader would yield: data extents read in pieces of at most maxRequestSize. */
function chunksOf(disk: Disk, maxRequestSize: number): Chunk[] {
  const chunks: Chunk[] = [];
  for (const extent of disk.extents) {
    if (!extent.data) {
      chunks.push({ offset: extent.offset, length: extent.length, zero: true });
      continue;
    }
    const end = extent.offset + extent.length;
    const split = extent.length > maxRequestSize;
    for (let at = extent.offset; at < end; at += maxRequestSize) {
      const length = Math.min(maxRequestSize, end - at);
      const chunk: Chunk = { offset: at, length, data: disk.image.subarray(at, at + length) };
      if (split) chunk.frame = { offset: extent.offset, length: extent.length };
      chunks.push(chunk);
    }
  }
  return chunks;
}

function dataSizeOf(disk: Disk): number {
  return disk.extents.filter((e) => e.data).reduce((sum, e) => sum + e.length, 0);
}

function metadataFor(disk: Disk, compressed: boolean, incremental = false): StreamMetadata {
  return createMetadata({
    virtualSize: disk.image.length,
    dataSize: dataSizeOf(disk),
    diskName: 'vda',
    diskFormat: 'qcow2',
    checkpointName: 'virtnbdbackup.0',
    compressed: compressed ? 2 : false,
    incremental,
    date: '2026-11-30T07:45:01.123456',
  });
}

interface Framed {
  bytes: Buffer;
  trailer: CompressionTrailer;
}

async function frameDisk(disk: Disk, options: { compressed: boolean; maxRequestSize?: number; incremental?: boolean }): Promise<Framed> {
  const maxRequestSize = options.maxRequestSize ?? MAX_REQUEST;
  const framer = new SparseFramer({ metadata: metadataFor(disk, options.compressed, options.incremental), maxRequestSize });
  const parts: Buffer[] = [];
  const sink = new Writable({
    write(part: Buffer, _encoding, callback) {
      parts.push(part);
      callback();
    },
  });
  const source = Readable.from(chunksOf(disk, maxRequestSize));
  if (options.compressed) await pipeline(source, new Lz4Compress({ depth: 4 }), framer, sink);
  else await pipeline(source, framer, sink);
  return { bytes: Buffer.concat(parts), trailer: framer.trailer };
}

// ---------------------------------------------------------------- reading back

/** Yields `bytes` in slices whose lengths `next` picks. */
function* sliced(bytes: Buffer, next: () => number): Generator<Buffer> {
  for (let at = 0; at < bytes.length; ) {
    const length = Math.max(1, next());
    yield bytes.subarray(at, at + length);
    at += length;
  }
}

interface Restored {
  /** Largest input slice the parser was given. */
  largestSlice: number;
  image: Buffer;
  zeros: DiskExtent[];
  chunks: Chunk[];
  parser: SparseParser;
}

async function restore(bytes: Buffer, next: () => number, parserOptions = {}): Promise<Restored> {
  const parser = new SparseParser(parserOptions);
  let image: Buffer | undefined;
  parser.on('metadata', (meta: StreamMetadata) => {
    image = Buffer.alloc(meta.virtualSize);
  });
  const zeros: DiskExtent[] = [];
  const chunks: Chunk[] = [];
  let frontier = 0;
  const sink = new Writable({
    objectMode: true,
    write(chunk: Chunk, _encoding, callback) {
      if (chunk.offset < frontier) return callback(new Error(`chunk at ${chunk.offset} before ${frontier}`));
      frontier = chunk.offset + chunk.length;
      chunks.push({ ...chunk, data: undefined });
      if (chunk.zero) zeros.push({ offset: chunk.offset, length: chunk.length, data: false });
      else {
        if (chunk.data?.length !== chunk.length) return callback(new Error(`bad data length at ${chunk.offset}`));
        chunk.data.copy(image!, chunk.offset);
      }
      callback();
    },
  });
  let largestSlice = 0;
  const slices = Readable.from(sliced(bytes, next), { objectMode: false });
  slices.on('data', (slice: Buffer) => {
    largestSlice = Math.max(largestSlice, slice.length);
  });
  await pipeline(slices, parser, new Lz4Decompress(), sink);
  return { largestSlice, image: image!, zeros, chunks, parser };
}

const whole = () => Number.MAX_SAFE_INTEGER;
const oneByte = () => 1;
function randomSlices(seed: number): () => number {
  const random = prng(seed);
  return () => 1 + Math.floor(random() * (random() < 0.5 ? 50 : 200 * KiB));
}

function zeroExtents(disk: Disk): DiskExtent[] {
  return disk.extents.filter((e) => !e.data);
}

// ---------------------------------------------------------------- tests

for (const compressed of [false, true]) {
  const kind = compressed ? 'compressed' : 'plain';

  test(`${kind} stream round trip in random slices (seed 7)`, async (t) => {
    const disk = makeDisk(2 * MiB + 512, layout(7, 2 * MiB + 512));
    const framed = await frameDisk(disk, { compressed });
    const restored = await restore(framed.bytes, randomSlices(11));
    t.true(restored.image.equals(disk.image));
    t.deepEqual(restored.zeros, zeroExtents(disk));
    t.deepEqual(restored.parser.metadata, metadataFor(disk, compressed));
    if (compressed) {
      t.deepEqual(restored.parser.trailer, framed.trailer);
      t.is(framed.trailer.length, disk.extents.filter((e) => e.data).length);
    } else {
      t.is(restored.parser.trailer, undefined);
    }
  });

  test(`${kind} stream fed one byte at a time`, async (t) => {
    const virtualSize = 5 * MAX_REQUEST;
    const disk = makeDisk(virtualSize, [
      { offset: 0, length: 100, data: true },
      { offset: 100, length: 1000, data: false },
      { offset: 1100, length: MAX_REQUEST + 1000, data: true },
      { offset: 3 * MAX_REQUEST, length: 2 * MAX_REQUEST, data: true },
    ]);
    const framed = await frameDisk(disk, { compressed });
    const restored = await restore(framed.bytes, oneByte);
    t.is(restored.largestSlice, 1);
    t.true(restored.image.equals(disk.image));
    t.deepEqual(restored.zeros, zeroExtents(disk));
  });
}

test('the trailer uses the object form exactly for frames of maxRequestSize or more', async (t) => {
  const disk = makeDisk(8 * MAX_REQUEST, [
    { offset: 0, length: MAX_REQUEST - 1, data: true },
    { offset: MAX_REQUEST, length: MAX_REQUEST, data: true },
    { offset: 2 * MAX_REQUEST, length: 3 * MAX_REQUEST + 5, data: true },
  ]);
  const { trailer } = await frameDisk(disk, { compressed: true });
  t.is(typeof trailer[0], 'number');
  const single = trailer[1];
  t.true(typeof single !== 'number' && single!.pieces.length === 1 && single!.pieces[0] === single!.total);
  const split = trailer[2];
  t.true(typeof split !== 'number' && split!.pieces.length === 4);
});

test('uncompressed frames come out in pieces of at most maxPieceSize, marked with their frame', async (t) => {
  const disk = makeDisk(4 * MAX_REQUEST, [{ offset: 10, length: 3 * MAX_REQUEST, data: true }]);
  const framed = await frameDisk(disk, { compressed: false });
  const restored = await restore(framed.bytes, whole, { maxPieceSize: 50000 });
  t.true(restored.image.equals(disk.image));
  const pieces = restored.chunks;
  t.true(pieces.length === 4);
  for (const piece of pieces) {
    t.true(piece.length <= 50000);
    t.deepEqual(piece.frame, { offset: 10, length: 3 * MAX_REQUEST });
  }
});

test('compressed pieces are given their true offsets by Lz4Decompress', async (t) => {
  const disk = makeDisk(4 * MAX_REQUEST, [{ offset: 10, length: 3 * MAX_REQUEST - 7, data: true }]);
  const framed = await frameDisk(disk, { compressed: true });
  const restored = await restore(framed.bytes, whole);
  t.deepEqual(
    restored.chunks.map((c) => [c.offset, c.length]),
    [
      [10, MAX_REQUEST],
      [10 + MAX_REQUEST, MAX_REQUEST],
      [10 + 2 * MAX_REQUEST, MAX_REQUEST - 7],
    ],
  );
});

test('an empty disk makes a valid stream in both forms', async (t) => {
  const disk = makeDisk(MiB, [{ offset: 0, length: MiB, data: false }]);
  for (const compressed of [false, true]) {
    const framed = await frameDisk(disk, { compressed });
    const restored = await restore(framed.bytes, randomSlices(3));
    t.true(restored.image.equals(disk.image));
    if (compressed) t.true(framed.bytes.toString('latin1').endsWith('stop 0000000000000000 0000000000000000\r\n[]\r\ncomp 0000000000000000 0000000000000002\r\n'));
  }
});

test('incremental streams carry no zero frames', async (t) => {
  const disk = makeDisk(MiB, layout(5, MiB));
  const framed = await frameDisk(disk, { compressed: false, incremental: true });
  t.false(framed.bytes.includes('\r\nzero '));
  const restored = await restore(framed.bytes, whole);
  t.deepEqual(restored.zeros, []);
  t.true(restored.parser.metadata?.incremental);
});

// ---------------------------------------------------------------- against virtnbdbackup itself

/**
 * virtnbdbackup's backup loop, run with its own library functions (stream
 * writer, metadata, writeChunk/writeBlock, trailer) over an NBD stand-in that
 * reads the image file; the date is pinned so the bytes can be compared.
 */
const PYTHON_WRITER = `
import json, sys
from argparse import Namespace
from libvirtnbdbackup.sparsestream import streamer, types
from libvirtnbdbackup.common import common as lib
spec = json.loads(sys.argv[1])
image = open(spec["image"], "rb").read()
class Nbd:
    def pread(self, length, offset):
        return image[offset:offset + length]
class Now:
    @staticmethod
    def now():
        return Namespace(isoformat=lambda: spec["date"])
streamer.datetime = Namespace(datetime=Now)
con = Namespace(nbd=Nbd(), maxRequestSize=spec["maxRequestSize"])
stream = streamer.SparseStream(types)
T = types.SparseStreamTypes()
args = Namespace(cpt=Namespace(name="virtnbdbackup.0", parent=""), compress=spec["compress"], level=spec["level"])
disk = Namespace(target="vda", format="qcow2")
extents = [Namespace(**e) for e in spec["extents"]]
dataSize = sum(e.length for e in extents if e.data)
sizes = []
with open(spec["output"], "wb") as writer:
    meta = stream.dumpMetadata(args, len(image), dataSize, disk)
    stream.writeFrame(writer, T.META, 0, len(meta))
    writer.write(meta)
    writer.write(T.TERM)
    for e in extents:
        if e.data:
            stream.writeFrame(writer, T.DATA, e.offset, e.length)
            cSizes = None
            if e.length >= con.maxRequestSize:
                size, cSizes = lib.writeChunk(writer, e, con, "stream", args.compress)
            else:
                size = lib.writeBlock(writer, e, con, "stream", args.compress)
            writer.write(T.TERM)
            if args.compress:
                sizes.append({size: cSizes} if cSizes else size)
        elif args.level not in ("inc", "diff"):
            stream.writeFrame(writer, T.ZERO, e.offset, e.length)
    stream.writeFrame(writer, T.STOP, 0, 0)
    if args.compress:
        stream.writeCompressionTrailer(writer, sizes)
`;

async function tempDir(t: import('ava').ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'virtnbd-sparse-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function pythonStream(dir: string, disk: Disk, compress: false | number, level: string): Promise<Buffer> {
  const image = join(dir, 'source.raw');
  const output = join(dir, `python-${level}-${compress}.data`);
  await writeFile(image, disk.image);
  const spec = {
    image,
    output,
    maxRequestSize: MAX_REQUEST,
    compress,
    level,
    date: '2026-11-30T07:45:01.123456',
    extents: disk.extents,
  };
  await run('/usr/bin/python3', ['-c', PYTHON_WRITER, JSON.stringify(spec)]);
  return readFile(output);
}

for (const level of ['full', 'inc']) {
  test(`uncompressed ${level} stream is byte-identical to virtnbdbackup's`, async (t) => {
    const dir = await tempDir(t);
    const disk = makeDisk(2 * MiB, layout(23, 2 * MiB));
    const python = await pythonStream(dir, disk, false, level);
    const ours = await frameDisk(disk, { compressed: false, incremental: level === 'inc' });
    t.is(ours.bytes.length, python.length);
    t.true(ours.bytes.equals(python));
  });
}

test('compressed streams virtnbdbackup writes (C lz4 frames) are read back exactly', async (t) => {
  const dir = await tempDir(t);
  const disk = makeDisk(2 * MiB, layout(29, 2 * MiB));
  const python = await pythonStream(dir, disk, 2, 'full');
  const restored = await restore(python, randomSlices(31));
  t.true(restored.image.equals(disk.image));
  t.deepEqual(restored.zeros, zeroExtents(disk));
  // Same trailer structure as ours: number or object in the same places, same piece counts.
  const ours = await frameDisk(disk, { compressed: true });
  const shape = (trailer: CompressionTrailer | undefined) =>
    (trailer ?? []).map((entry) => (typeof entry === 'number' ? 'n' : entry.pieces.length));
  t.deepEqual(shape(restored.parser.trailer), shape(ours.trailer));
  // Both start with the same meta frame, byte for byte.
  const metaFrameLength = 40 + parseInt(python.subarray(22, 38).toString('latin1'), 16) + 2;
  t.true(python.subarray(0, metaFrameLength).equals(ours.bytes.subarray(0, metaFrameLength)));
});

/** Restore with Debian's virtnbdrestore (qemu-img + qemu-nbd) and return the raw image. */
async function virtnbdrestore(dir: string, stream: Buffer): Promise<Buffer> {
  const input = join(dir, 'backup');
  const output = join(dir, 'restore');
  await run('mkdir', ['-p', input]);
  await writeFile(join(input, 'vda.full.data'), stream);
  // virtnbdrestore insists on a domain config in the backup set, even with --sequence.
  await writeFile(join(input, 'vmconfig.virtnbdbackup.0.xml'), "<domain type='qemu'><name>virtnbd-sparse-test</name><devices/></domain>");
  await run('virtnbdrestore', ['-i', input, '-o', output, '-n', '-s', 'vda.full.data', '-f', join(dir, 'nbd.sock'), '-L', join(dir, 'restore.log')]);
  const raw = join(dir, 'restored.raw');
  await run('qemu-img', ['convert', '-O', 'raw', join(output, 'vda'), raw]);
  return readFile(raw);
}

test('virtnbdrestore restores our streams, compressed with a frame over 32 MiB and plain', async (t) => {
  const dir = await tempDir(t);
  const big = 32 * MiB;
  const virtualSize = 40 * MiB;
  const disk = makeDisk(virtualSize, [
    { offset: 0, length: 4096, data: true },
    { offset: 4096, length: MiB - 4096, data: false },
    { offset: MiB, length: big + 3 * MiB, data: true },
    { offset: big + 4 * MiB, length: 1000, data: true },
  ]);
  for (const compressed of [true, false]) {
    const framed = await frameDisk(disk, { compressed, maxRequestSize: big });
    if (compressed) t.deepEqual(typeof framed.trailer[1] === 'number' ? 0 : framed.trailer[1]!.pieces.length, 2);
    const sub = join(dir, compressed ? 'c' : 'p');
    await run('mkdir', ['-p', sub]);
    const image = await virtnbdrestore(sub, framed.bytes);
    t.is(image.length, virtualSize);
    t.true(image.equals(disk.image), `${compressed ? 'compressed' : 'plain'} restore differs`);
  }
});


// ---------------------------------------------------------------- backpressure

/** Write `items` until write() says stop; returns how many were accepted. */
function writeUntilFull(stream: Writable, items: Iterable<unknown>): number {
  let written = 0;
  for (const item of items) {
    written += 1;
    if (!stream.write(item)) break;
  }
  return written;
}

test('with nobody reading, each stage soon refuses more input', async (t) => {
  const disk = makeDisk(64 * MAX_REQUEST, [{ offset: 0, length: 64 * MAX_REQUEST, data: true }]);
  const framed = await frameDisk(disk, { compressed: false });
  const slices = [...sliced(framed.bytes, () => 16 * KiB)];

  const parser = new SparseParser({ maxPieceSize: 16 * KiB });
  const parsed = writeUntilFull(parser, slices);
  // A slice may yield two pieces (one cut at an aligned offset, one joined across slices), so a few more slices fit.
  t.true(parsed < 12, `parser took ${parsed} of ${slices.length} slices`);
  t.true(parser.readableLength <= 3);
  parser.destroy();

  const chunks = chunksOf(disk, 16 * KiB);
  const compressor = new Lz4Compress({ depth: 3 });
  const compressed = writeUntilFull(compressor, chunks);
  t.true(compressed <= 3 + 3, `compressor took ${compressed} of ${chunks.length} chunks`);
  compressor.destroy();

  const framer = new SparseFramer({ metadata: metadataFor(disk, false), maxRequestSize: 16 * KiB });
  const framedCount = writeUntilFull(framer, chunks);
  t.true(framedCount < 8, `framer took ${framedCount} of ${chunks.length} chunks`);
  framer.destroy();
});
