/**
 * Our LZ4 codec (lib/lz4): frames it writes are read back by our decoder,
 * by lz4-napi (Rust lz4_flex) and by python-lz4 (the C library, what
 * virtnbdbackup restores with); blocks keep the format's end-of-block rules;
 * corrupt blocks and content are caught with the place named; the
 * Lz4Compress stage gives read buffers back only once it has copied them.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import test from 'ava';
import { decompressFrame } from 'lz4-napi';
import type { Chunk } from '../lib/chunk.js';
import { Lz4DataError } from '../lib/format/errors.js';
import { parseLz4FrameDescriptor } from '../lib/format/lz4Frame.js';
import { Xxh32, xxh32 } from '../lib/format/xxh32.js';
import { Lz4ChecksumError, Lz4DecodeError } from '../lib/lz4/errors.js';
import { decompressLz4Frame } from '../lib/lz4/frameDecoder.js';
import { compressLz4Frame, Lz4FrameEncoder } from '../lib/lz4/frameEncoder.js';
import { Lz4WorkerPool } from '../lib/lz4/pool.js';
import { Lz4Compress } from '../streams/Lz4Compress.js';
import { Lz4Decompress } from '../streams/Lz4Decompress.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Deterministic pseudo-random generator (xorshift32), so failures repeat. */
function rng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const WORDS = 'the disk backup frame block checksum qemu libvirt restore chain incremental dirty bitmap extent sparse zero data of and to'.split(' ');

function text(length: number, seed = 1): Buffer {
  const next = rng(seed);
  const out = Buffer.alloc(length);
  let at = 0;
  while (at < length) at += out.write(WORDS[Math.floor(next() * WORDS.length)]! + (next() < 0.1 ? '\n' : ' '), at);
  return out;
}

/** 64 KiB stretches of random bytes, text and zeros in turn. */
function mixed(length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let at = 0, i = 0; at < length; at += 64 * KiB, i++) {
    const end = Math.min(length, at + 64 * KiB);
    if (i % 3 === 0) randomBytes(end - at).copy(out, at);
    else if (i % 3 === 1) text(end - at, i).copy(out, at);
  }
  return out;
}

function pythonDecompress(frame: Buffer): Buffer {
  return execFileSync('/usr/bin/python3', ['-c', 'import sys, lz4.frame; sys.stdout.buffer.write(lz4.frame.decompress(sys.stdin.buffer.read()))'], {
    input: frame,
    maxBuffer: 64 * MiB,
  });
}

function pythonCompress(data: Buffer): Buffer {
  return execFileSync(
    '/usr/bin/python3',
    ['-c', 'import sys, lz4.frame; sys.stdout.buffer.write(lz4.frame.compress(sys.stdin.buffer.read(), content_checksum=True, block_checksum=True, compression_level=2))'],
    { input: data, maxBuffer: 64 * MiB },
  );
}

const cases: Array<[string, () => Buffer]> = [
  ['empty', () => Buffer.alloc(0)],
  ['1 byte', () => Buffer.from([0x42])],
  ['5 bytes', () => Buffer.from('abcab')],
  ['12 bytes', () => Buffer.alloc(12, 7)],
  ['13 bytes', () => Buffer.alloc(13, 7)],
  ['100 zero bytes', () => Buffer.alloc(100)],
  ['random 1 MiB', () => randomBytes(MiB)],
  ['zeros 5 MiB', () => Buffer.alloc(5 * MiB)],
  ['text 3 MiB', () => text(3 * MiB)],
  ['mixed 9 MiB + 7', () => mixed(9 * MiB + 7)],
  ['mixed 32 MiB', () => mixed(32 * MiB)],
];

const pool = new Lz4WorkerPool({ workers: 2 });
const smallBlocks = new Lz4WorkerPool({ workers: 1, blockSize: 65536 });
test.after.always(async () => {
  await pool.close();
  await smallBlocks.close();
});

for (const [name, make] of cases) {
  test(`round trip, ${name}: our frames decode with ours, lz4-napi and python-lz4`, async (t) => {
    const data = make();
    const frame = await pool.compressFrame(data);
    const descriptor = parseLz4FrameDescriptor(frame);
    t.like(descriptor, { blockIndependence: true, blockChecksum: true, contentChecksum: true, contentSize: data.length, blockMaxSize: MiB });
    t.true(compressLz4Frame(data).equals(frame), 'the worker and the synchronous encoder write the same bytes');
    t.true((await pool.decompressFrame(frame)).equals(data), 'our decoder (worker)');
    t.true(decompressLz4Frame(frame).equals(data), 'our decoder (synchronous)');
    t.true(Buffer.from(await decompressFrame(frame)).equals(data), 'lz4-napi');
    t.true(pythonDecompress(frame).equals(data), 'python-lz4');
    const small = await smallBlocks.compressFrame(data);
    t.is(parseLz4FrameDescriptor(small).blockMaxSize, 64 * KiB);
    t.true((await smallBlocks.decompressFrame(small)).equals(data), '64 KiB blocks, ours');
    t.true(pythonDecompress(small).equals(data), '64 KiB blocks, python-lz4');
  });
}

test('python-lz4 frames (linked 64 KiB blocks) decode with ours', async (t) => {
  for (const data of [mixed(3 * MiB + 5), text(200 * KiB), Buffer.alloc(0)]) {
    const frame = pythonCompress(data);
    t.true((await pool.decompressFrame(frame)).equals(data));
  }
});

/** Walk the sequences of one compressed block; returns the end-of-block facts the format requires. */
function blockFacts(block: Uint8Array): { decoded: number; lastLiterals: number; lastMatchStart: number } {
  let ip = 0;
  let op = 0;
  let lastMatchStart = -1;
  for (;;) {
    const token = block[ip++]!;
    let literals = token >> 4;
    if (literals === 15) for (let b = 255; b === 255; literals += b) b = block[ip++]!;
    ip += literals;
    op += literals;
    if (ip === block.length) return { decoded: op, lastLiterals: literals, lastMatchStart };
    ip += 2;
    let length = token & 15;
    if (length === 15) for (let b = 255; b === 255; length += b) b = block[ip++]!;
    lastMatchStart = op;
    op += length + 4;
  }
}

test('blocks keep the end-of-block rules: last 5 bytes literals, last match at least 12 bytes before the end', (t) => {
  const encoder = new Lz4FrameEncoder();
  let compressedBlocks = 0;
  const inputs = [
    ...Array.from({ length: 40 }, (_, i) => Buffer.alloc(13 + i, 0x61)),
    ...Array.from({ length: 20 }, (_, i) => Buffer.from('abcd'.repeat(10 + i))),
    text(70 * KiB, 3),
    Buffer.concat([randomBytes(1000), Buffer.alloc(1000)]),
  ];
  for (const data of inputs) {
    const frame = Buffer.alloc(data.length + 64);
    encoder.begin(frame, data.length);
    encoder.write(data);
    encoder.end();
    const word = frame.readUInt32LE(15);
    if (word >>> 31) continue;
    compressedBlocks += 1;
    const facts = blockFacts(frame.subarray(19, 19 + word));
    t.is(facts.decoded, data.length);
    t.true(facts.lastLiterals >= 5, `${data.length} bytes: last literals ${facts.lastLiterals}`);
    if (facts.lastMatchStart >= 0) t.true(data.length - facts.lastMatchStart >= 12, `${data.length} bytes: last match at ${facts.lastMatchStart}`);
  }
  t.true(compressedBlocks > 50, 'most inputs compress');
});

test('incompressible blocks are stored raw, compressible ones compressed, each checksummed', async (t) => {
  const data = Buffer.concat([randomBytes(MiB), text(MiB), randomBytes(100)]);
  const frame = await pool.compressFrame(data);
  const sizes: Array<{ raw: boolean; size: number }> = [];
  let at = 15;
  for (;;) {
    const word = frame.readUInt32LE(at);
    if (word === 0) break;
    const size = word & 0x7fffffff;
    sizes.push({ raw: word >>> 31 === 1, size });
    t.is(frame.readUInt32LE(at + 4 + size), xxh32(frame.subarray(at + 4, at + 4 + size)), 'block checksum');
    at += 4 + size + 4;
  }
  t.deepEqual(sizes.map((s) => s.raw), [true, false, true]);
  t.is(sizes[0]!.size, MiB);
  t.true(sizes[1]!.size < 0.75 * MiB);
  t.is(frame.readUInt32LE(at + 4), xxh32(data), 'content checksum');
  t.is(at + 8, frame.length);
});

test('compression ratio within 5% of python-lz4 (the C library) on text and mixed data', async (t) => {
  for (const data of [text(8 * MiB, 9), mixed(8 * MiB)]) {
    const ours = (await pool.compressFrame(data)).length;
    const theirs = pythonCompress(data).length;
    t.true(ours <= theirs * 1.05, `ours ${ours} bytes, python-lz4 ${theirs}`);
  }
});

test('xxh32 fed in pieces equals xxh32 at once', (t) => {
  const data = randomBytes(100_003);
  for (const step of [1, 3, 15, 16, 17, 1000, 65536]) {
    const h = new Xxh32();
    for (let at = 0; at < data.length; at += step) h.update(data.subarray(at, Math.min(data.length, at + step)));
    t.is(h.digest(), xxh32(data), `pieces of ${step}`);
  }
});

test('a corrupted block or content checksum is detected, naming the byte of the frame', async (t) => {
  const data = mixed(5 * MiB);
  const frame = await pool.compressFrame(data);
  const badBlock = Buffer.from(frame);
  badBlock[15 + 4 + 1000]! ^= 0x10;
  for (const decode of [(f: Buffer) => pool.decompressFrame(f), async (f: Buffer) => decompressLz4Frame(f)]) {
    const err = await t.throwsAsync(decode(badBlock), { instanceOf: Lz4ChecksumError, message: /LZ4 block checksum mismatch in the block at byte 15 of the LZ4 frame/ });
    t.is(err?.kind, 'block');
    t.is(err?.offsetInFrame, 15);
  }
  const badContent = Buffer.from(frame);
  badContent[frame.length - 1]! ^= 0x01;
  for (const decode of [(f: Buffer) => pool.decompressFrame(f), async (f: Buffer) => decompressLz4Frame(f)]) {
    const err = await t.throwsAsync(decode(badContent), { instanceOf: Lz4ChecksumError, message: new RegExp(`LZ4 content checksum mismatch at byte ${frame.length - 4} `) });
    t.is(err?.kind, 'content');
  }
  await t.throwsAsync(pool.decompressFrame(frame.subarray(0, frame.length - 3)), { instanceOf: Lz4DecodeError, message: /ends inside its content checksum/ });
  await t.throwsAsync(pool.decompressFrame(Buffer.concat([frame, Buffer.alloc(2)])), { instanceOf: Lz4DecodeError, message: /2 bytes follow the LZ4 frame/ });
});

async function collect(input: Chunk[], ...stages: NodeJS.ReadWriteStream[]): Promise<Chunk[]> {
  const out: Chunk[] = [];
  const sink = new Writable({
    objectMode: true,
    write(chunk: Chunk, _e, done) {
      out.push(chunk);
      done();
    },
  });
  await pipeline([Readable.from(input, { objectMode: true }), ...stages, sink]);
  return out;
}

test('Lz4Compress releases each read buffer once, after copying it: reusing it at once changes nothing', async (t) => {
  const frameData = mixed(10 * MiB + 3 * KiB);
  const piece = 512 * KiB;
  const input: Chunk[] = [];
  for (let at = 0; at < frameData.length; at += piece) {
    // Each piece is a copy the stage may scribble over once released, as NbdReader reuses its buffers.
    const data = Buffer.from(frameData.subarray(at, Math.min(frameData.length, at + piece)));
    input.push({ offset: at, length: data.length, data, frame: { offset: 0, length: frameData.length } });
  }
  const released = new Map<Buffer, number>();
  const release = (data: Buffer): void => {
    released.set(data, (released.get(data) ?? 0) + 1);
    data.fill(0xee);
  };
  const out = await collect(input, new Lz4Compress({ unitSize: 4 * MiB, depth: 2, release, pool }));
  t.deepEqual(out.map((c) => [c.offset, c.length]), [
    [0, 4 * MiB],
    [4 * MiB, 4 * MiB],
    [8 * MiB, 2 * MiB + 3 * KiB],
  ]);
  t.is(released.size, input.length);
  t.true([...released.values()].every((n) => n === 1), 'each buffer released exactly once');
  const back = await collect(out, new Lz4Decompress({ pool }));
  t.true(Buffer.concat(back.map((c) => c.data!)).equals(frameData));
});

test('Lz4Decompress names frame, disk offset and LZ4 byte of a corrupt content checksum', async (t) => {
  const data = text(300 * KiB);
  const lz4 = await pool.compressFrame(data);
  lz4[lz4.length - 2]! ^= 0x04;
  await t.throwsAsync(collect([{ offset: 8192, length: data.length, lz4 }], new Lz4Decompress({ pool })), {
    instanceOf: Lz4DataError,
    message: new RegExp(`^frame 1 \\(data frame at disk offset 8192\\): cannot decompress LZ4 data: LZ4 content checksum mismatch at byte ${lz4.length - 4} `),
  });
});
