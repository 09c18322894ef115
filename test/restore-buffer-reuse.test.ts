/**
 * Restore reads data files into a fixed set of reused buffers (FileSource
 * lends them; SparseParser, Lz4Decompress and NbdWriter hand them back
 * once written), so its memory does not grow with the bytes read. What a
 * user cares about: the image written through reused buffers is exactly
 * the disk (a buffer reused too early would corrupt it), and the buffers
 * really are reused. Also: SparseParser passes big pieces on as views of
 * its input, copying only short joins (it once copied 3/4 of all data).
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BufferLender } from '../lib/bufferLender.js';
import type { Chunk } from '../lib/chunk.js';
import { createMetadata } from '../lib/format/metadata.js';
import { DiskImage } from '../lib/restore/diskRestore.js';
import { FileSource } from '../streams/FileSource.js';
import { Lz4Compress } from '../streams/Lz4Compress.js';
import { SparseFramer } from '../streams/SparseFramer.js';
import { SparseParser } from '../streams/SparseParser.js';
import { compareImages } from './helpers/image.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const DISK_SIZE = 48 * MiB;

/** A disk with data extents at odd offsets and lengths (so frame headers shift every alignment), and zero ranges. */
function testDisk(): { image: Buffer; chunks: Chunk[]; dataSize: number } {
  const image = Buffer.alloc(DISK_SIZE);
  const chunks: Chunk[] = [];
  const extents: Array<[number, number, boolean]> = [
    [512, 3 * MiB + 4096, true],
    [4 * MiB, 1536, true],
    [4 * MiB + 64 * KiB, 2 * MiB, false],
    [7 * MiB + 512, 17 * MiB - 1024, true],
    [25 * MiB, 64 * KiB, true],
    [26 * MiB - 4096, 12 * MiB + 8192, true],
  ];
  // Many small extents: an input holds many pieces, whose writes are in flight together.
  for (let i = 0; i < 400; i++) extents.push([40 * MiB + i * 16 * KiB, 4 * KiB + (i % 3) * 512, true]);
  let dataSize = 0;
  for (const [offset, length, data] of extents) {
    if (!data) {
      chunks.push({ offset, length, zero: true });
      continue;
    }
    randomBytes(length).copy(image, offset);
    // Every other 64 KiB compressible, so LZ4 frames vary in size.
    for (let at = offset; at < offset + length; at += 128 * KiB) image.fill(`at ${at} `, at, Math.min(at + 64 * KiB, offset + length));
    dataSize += length;
    for (let at = offset; at < offset + length; at += MiB) {
      const piece = Math.min(MiB, offset + length - at);
      chunks.push({ offset: at, length: piece, data: image.subarray(at, at + piece), ...(length > MiB ? { frame: { offset, length } } : {}) });
    }
  }
  return { image, chunks, dataSize };
}

async function streamBytes(disk: ReturnType<typeof testDisk>, compressed: boolean): Promise<Buffer> {
  const metadata = createMetadata({
    virtualSize: DISK_SIZE,
    dataSize: disk.dataSize,
    diskName: 'vda',
    diskFormat: 'qcow2',
    checkpointName: 'virtnbdbackup.0',
    compressed: compressed ? 2 : false,
  });
  const parts: Buffer[] = [];
  const sink = new Writable({
    write(part: Buffer, _enc, done) {
      parts.push(part);
      done();
    },
  });
  const framer = new SparseFramer({ metadata, maxRequestSize: MiB });
  const source = Readable.from(disk.chunks);
  if (compressed) await pipeline(source, new Lz4Compress({ unitSize: MiB }), framer, sink);
  else await pipeline(source, framer, sink);
  return Buffer.concat(parts);
}

test('BufferLender reuses a buffer only once every hold is released; other views are ignored', (t) => {
  const lender = new BufferLender(1024, 4);
  const a = lender.lend();
  const piece = a.subarray(100, 200);
  lender.retain(piece);
  lender.retain(a.subarray(0, 10));
  lender.release(a);
  lender.release(Buffer.alloc(1024));
  lender.release(piece);
  t.not(lender.lend().buffer, a.buffer, 'reused while a view was still held');
  lender.release(a.subarray(0, 10));
  lender.release(a); // one release too many: ignored
  t.is(lender.lend().buffer, a.buffer, 'not reused after the last hold was released');
  t.not(lender.lend().buffer, a.buffer, 'handed out twice');
  t.is(lender.allocated, 3);
});

test('SparseParser passes pieces on as views of its 1 MiB inputs, copying only short joins', async (t) => {
  const disk = testDisk();
  const bytes = await streamBytes(disk, false);
  // Input boundaries at every phase against the frames: a piece may start just before one.
  for (let phase = 777; phase < MiB; phase += 64 * KiB) {
    const inputs = [Buffer.from(bytes.subarray(0, phase))];
    for (let at = phase; at < bytes.length; at += MiB) inputs.push(Buffer.from(bytes.subarray(at, at + MiB)));
    await parsesIntoViews(t, disk.image, inputs);
  }
});

async function parsesIntoViews(t: ExecutionContext, expected: Buffer, inputs: Buffer[]): Promise<void> {
  const memory = new Set(inputs.map((b) => b.buffer));
  let copied = 0;
  let copies = 0;
  const image = Buffer.alloc(DISK_SIZE);
  await pipeline(
    Readable.from(inputs, { objectMode: false }),
    new SparseParser({ maxPieceSize: MiB }),
    new Writable({
      objectMode: true,
      write(chunk: Chunk, _enc, done) {
        if (chunk.data) {
          chunk.data.copy(image, chunk.offset);
          if (!memory.has(chunk.data.buffer)) {
            copied += chunk.length;
            copies += 1;
          }
        }
        done();
      },
    }),
  );
  t.true(image.equals(expected), `the parsed pieces do not rebuild the disk (first input ${inputs[0]!.length} bytes)`);
  t.true(copies <= inputs.length, `${copies} pieces copied for ${inputs.length} inputs (first input ${inputs[0]!.length} bytes)`);
  t.true(copied <= inputs.length * 64 * KiB, `${copied} bytes copied for ${inputs.length} inputs (first input ${inputs[0]!.length} bytes)`);
}

for (const compressed of [false, true]) {
  test(`restore through FileSource's reused buffers writes the exact disk (${compressed ? 'compressed' : 'plain'} stream)`, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'virtnbd-reuse-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const disk = testDisk();
    const dataFile = join(dir, 'vda.full.data');
    await writeFile(dataFile, await streamBytes(disk, compressed));
    const expected = join(dir, 'expected.raw');
    await writeFile(expected, disk.image);
    // Small odd-sized reads: many inputs, pieces cut across them, joins at every turn; an LZ4
    // frame (<= 1 MiB) spans up to 16 inputs, all held until it is complete.
    const source = await FileSource.open(dataFile, { bufferSize: 64 * KiB + 4608, spare: 24 });
    const image = await DiskImage.create({ disk: 'vda', path: join(dir, 'vda.qcow2'), virtualSize: DISK_SIZE, socket: join(dir, 'vda.sock') });
    try {
      const result = await image.apply(source, 'vda.full.data', { fresh: true, loans: source });
      t.is(result.dataBytes, disk.dataSize);
      await image.close();
    } catch (error) {
      await image.discard();
      throw error;
    }
    const reads = Math.ceil(source.bytesRead / (64 * KiB + 4608));
    t.true(reads > 200, `only ${reads} reads`);
    t.true(source.buffersAllocated <= 40, `${source.buffersAllocated} buffers allocated for ${reads} reads`);
    const cmp = await compareImages(expected, join(dir, 'vda.qcow2'), { formatA: 'raw', formatB: 'qcow2' });
    t.true(cmp.identical, cmp.message);
  });
}
