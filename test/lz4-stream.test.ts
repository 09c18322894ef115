/**
 * Lz4FrameStream and Lz4StreamDecompress: LZ4 frames decoded as their
 * parts arrive, into ~1 MiB pieces, as a restore of a compressed backup
 * does. What a user cares about: every frame the writers we meet produce
 * (python-lz4 as virtnbdbackup uses it: linked 64 KiB blocks without block
 * checksums; ours: independent blocks with checksums; 4 MiB blocks) decodes
 * to its exact bytes however its bytes are cut; damage is an error naming
 * the place; pieces handed back are reused, so memory stays bounded.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Chunk } from '../lib/chunk.js';
import { Lz4DataError } from '../lib/format/errors.js';
import { Lz4ChecksumError, Lz4DecodeError } from '../lib/lz4/errors.js';
import { xxh32 } from '../lib/format/xxh32.js';
import { compressLz4Frame } from '../lib/lz4/frameEncoder.js';
import { Lz4FrameStream } from '../lib/lz4/frameStream.js';
import { Lz4StreamDecompress } from '../streams/Lz4StreamDecompress.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function pythonCompress(data: Buffer, args: string): Buffer {
  return execFileSync('/usr/bin/python3', ['-c', `import sys, lz4.frame; sys.stdout.buffer.write(lz4.frame.compress(sys.stdin.buffer.read(), ${args}))`], {
    input: data,
    maxBuffer: 128 * MiB,
  });
}

/** Random, text-like and zero stretches of 48 KiB in turn (matches reach across block starts). */
function mixed(length: number): Buffer {
  const out = Buffer.alloc(length);
  const words = Buffer.from('restore the chain of checkpoints from the backup set, block by block; ');
  for (let at = 0, i = 0; at < length; at += 48 * KiB, i++) {
    const end = Math.min(length, at + 48 * KiB);
    if (i % 3 === 0) randomBytes(end - at).copy(out, at);
    else if (i % 3 === 1) out.fill(words, at, end);
  }
  return out;
}

/** Feed `frame` in parts of the sizes `cut` gives; returns the pieces' bytes joined and the pieces. */
function decodeInParts(stream: Lz4FrameStream, frame: Buffer, cut: () => number): { bytes: Buffer; pieces: number } {
  stream.begin();
  const out: Buffer[] = [];
  for (let at = 0; at < frame.length; ) {
    const end = Math.min(frame.length, at + Math.max(1, cut()));
    for (const piece of stream.push(frame.subarray(at, end))) {
      out.push(Buffer.from(piece));
      stream.release(piece);
    }
    at = end;
  }
  for (const piece of stream.finish()) {
    out.push(Buffer.from(piece));
    stream.release(piece);
  }
  return { bytes: Buffer.concat(out), pieces: out.length };
}

const data = mixed(9 * MiB + 777);
const writers: Array<[string, () => Buffer]> = [
  ['python-lz4 as virtnbdbackup (linked 64 KiB blocks, no block checksums)', () => pythonCompress(data, 'content_checksum=True')],
  ['python-lz4 with 4 MiB independent blocks and block checksums', () => pythonCompress(data, 'block_size=lz4.frame.BLOCKSIZE_MAX4MB, block_linked=False, block_checksum=True, content_checksum=True')],
  ['ours (1 MiB independent blocks, block and content checksums)', () => compressLz4Frame(data)],
];

for (const [name, make] of writers) {
  test(`decodes ${name} fed whole, byte by byte's worth of odd parts, and in 1 MiB parts`, (t) => {
    const frame = make();
    const stream = new Lz4FrameStream(MiB);
    let seed = 7;
    const odd = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 70_001;
    for (const [how, cut] of [['whole', () => frame.length], ['odd parts', odd], ['1 MiB parts', () => MiB]] as const) {
      const { bytes, pieces } = decodeInParts(stream, frame, cut);
      t.true(bytes.equals(data), `${how}: decoded bytes differ`);
      // Pieces of at most 1 MiB, whatever the block size.
      t.true(pieces >= 10 && pieces <= 11, `${how}: ${pieces} pieces for 9 MiB`);
    }
  });
}

test('a damaged byte fails with the byte of the frame; a damaged content checksum fails at the end', (t) => {
  const linked = pythonCompress(data, 'content_checksum=True');
  const stream = new Lz4FrameStream(MiB);
  const body = Buffer.from(linked);
  body[body.length >> 1] ^= 0x40;
  const error = t.throws(() => decodeInParts(stream, body, () => 100_000)) as Error;
  t.true(error instanceof Lz4DecodeError, `${error.name}: ${error.message}`);
  const sum = Buffer.from(linked);
  sum[sum.length - 1] ^= 1;
  t.throws(() => decodeInParts(stream, sum, () => 100_000), { instanceOf: Lz4ChecksumError, message: /content checksum mismatch/ });
  const ours = Buffer.from(compressLz4Frame(data));
  ours[ours.length >> 1] ^= 0x40;
  t.throws(() => decodeInParts(stream, ours, () => 100_000), { instanceOf: Lz4ChecksumError, message: /block checksum mismatch in the block at byte \d+/ });
  t.throws(() => decodeInParts(stream, linked.subarray(0, linked.length - 9), () => 100_000), { instanceOf: Lz4DecodeError, message: /ends before its end mark/ });
});

test('Lz4StreamDecompress: frames in parts become pieces at their true offsets; released pieces are reused', async (t) => {
  const frameA = pythonCompress(data, 'content_checksum=True');
  const frameB = compressLz4Frame(data.subarray(0, 3 * MiB));
  const span = { offset: 64 * MiB, length: data.length + 3 * MiB };
  // One data frame of two LZ4 frames (as for frames of maxRequestSize or more), each in parts of 300 KiB.
  const input: Chunk[] = [{ offset: 0, length: 4096, zero: true }];
  for (const frame of [frameA, frameB]) {
    for (let at = 0; at < frame.length; at += 300 * KiB) {
      const lz4 = frame.subarray(at, at + 300 * KiB);
      input.push(at + 300 * KiB < frame.length ? { ...span, lz4, frame: span, lz4More: true } : { ...span, lz4, frame: span });
    }
  }
  const stage = new Lz4StreamDecompress({ pieceSize: MiB });
  const image = Buffer.alloc(span.length);
  const seen = new Set<ArrayBufferLike>();
  let pieces = 0;
  await pipeline(
    Readable.from(input, { objectMode: true }),
    stage,
    new Writable({
      objectMode: true,
      write(c: Chunk, _e, done) {
        if (c.data) {
          t.deepEqual(c.frame, span);
          c.data.copy(image, c.offset - span.offset);
          seen.add(c.data.buffer);
          pieces += 1;
          stage.release(c.data);
        }
        done();
      },
    }),
  );
  t.true(image.equals(Buffer.concat([data, data.subarray(0, 3 * MiB)])));
  t.true(pieces >= 12, `${pieces} pieces`);
  t.true(seen.size <= 3, `${seen.size} buffers for ${pieces} pieces handed back at once`);
});

test('Lz4StreamDecompress names the data frame and its disk offset when a frame is damaged or cut short', async (t) => {
  const frame = Buffer.from(compressLz4Frame(data.subarray(0, 2 * MiB)));
  frame[frame.length >> 1] ^= 0x40;
  const run = (chunks: Chunk[]): Promise<void> =>
    pipeline(Readable.from(chunks, { objectMode: true }), new Lz4StreamDecompress(), new Writable({ objectMode: true, write: (_c, _e, done) => done() }));
  const span = { offset: 8 * MiB, length: 2 * MiB };
  await t.throwsAsync(run([{ offset: 0, length: MiB, zero: true }, { ...span, lz4: frame }]), { instanceOf: Lz4DataError, message: /frame 2 \(data frame at disk offset 8388608\).*block checksum mismatch in the block at byte/ });
  const whole = compressLz4Frame(data.subarray(0, 2 * MiB));
  await t.throwsAsync(run([{ ...span, lz4: whole.subarray(0, 1000), frame: span, lz4More: true }]), { instanceOf: Lz4DataError, message: /input ended inside an LZ4 frame/ });
});

test('small frames share buffers, pieces stay within 1 MiB for 4 MiB blocks: memory follows bytes, not frames', (t) => {
  const stream = new Lz4FrameStream(MiB);
  const held: Buffer[] = [];
  const small = mixed(16 * KiB);
  // 256 small frames (4 MiB), every piece held: a buffer per frame would be 256 buffers of megabytes.
  for (let i = 0; i < 256; i++) {
    stream.begin();
    held.push(...stream.push(pythonCompress(small, 'content_checksum=True')), ...stream.finish());
  }
  t.true(Buffer.concat(held).equals(Buffer.concat(Array(256).fill(small))));
  t.true(new Set(held.map((p) => p.buffer)).size <= 3, `${new Set(held.map((p) => p.buffer)).size} buffers`);
  const big = pythonCompress(data, 'block_size=lz4.frame.BLOCKSIZE_MAX4MB, content_checksum=True');
  stream.begin();
  const pieces = [...stream.push(big), ...stream.finish()];
  t.true(Buffer.concat(pieces).equals(data));
  t.true(pieces.every((p) => p.length <= MiB), `pieces of ${pieces.map((p) => p.length).join(', ')} bytes`);
});

test('a match may not reach before its frame, even into the bytes of the frame before it in the same buffer', (t) => {
  // A frame of one linked 64 KiB block whose first sequence copies from 1 byte back: there is nothing back there.
  const descriptor = Buffer.from([0x40, 0x40]);
  const header = Buffer.concat([Buffer.from([0x04, 0x22, 0x4d, 0x18]), descriptor, Buffer.from([(xxh32(descriptor) >>> 8) & 0xff])]);
  const block = Buffer.from([0x04, 0x01, 0x00, 0x50, 0x61, 0x62, 0x63, 0x64, 0x65]);
  const size = Buffer.alloc(4);
  size.writeUInt32LE(block.length);
  const bad = Buffer.concat([header, size, block, Buffer.alloc(4)]);
  const stream = new Lz4FrameStream(MiB);
  decodeInParts(stream, pythonCompress(mixed(100 * KiB), 'content_checksum=True'), () => 1 << 30);
  t.throws(() => decodeInParts(stream, bad, () => 1 << 30), { instanceOf: Lz4DecodeError, message: /match offset 1 points before the start/ });
});
