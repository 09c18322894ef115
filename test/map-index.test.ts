/**
 * virtnbdmap's chain index, scanner, chain export and copy-on-write overlay
 * on synthetic chains written by our own stages (SparseFramer, Lz4Compress):
 * plain and compressed, with and without a compression trailer, with LZ4
 * pieces of unknown layout; the export must read exactly the disk each
 * chain stands for, serve zero and unbacked ranges as holes, fail only a
 * corrupt frame's range with EIO, and refuse bad input with typed errors.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Chunk } from '../lib/chunk.js';
import { ArgumentError, formatHelp } from '../lib/cli/argParser.js';
import { mapProgramSpec, parseMapArgs } from '../lib/cli/mapArgs.js';
import { instantDomainConfig } from '../lib/map/bootConfig.js';
import { ChainExport, type CorruptFrame } from '../lib/map/chainExport.js';
import { parseDomainXml } from '../lib/xml/domain.js';
import { ChainIndex, overlayRanges, type Frame, type MappedRange } from '../lib/map/chainIndex.js';
import { loadChains, type LoadedChain } from '../lib/map/chains.js';
import { MapChainError, MapInputError } from '../lib/map/errors.js';
import { Lz4DecodeError } from '../lib/lz4/errors.js';
import { Lz4FrameStream } from '../lib/lz4/frameStream.js';
import { CowOverlay } from '../lib/map/overlay.js';
import { PieceCache } from '../lib/map/pieceCache.js';
import { ExportError, type Export } from '../lib/nbd/export.js';
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from '../lib/nbd/protocol.js';
import { compressFrame } from 'lz4-napi';
import { patternBytes, SyntheticChain } from './helpers/map-streams.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const HOLE = NBD_STATE_HOLE | NBD_STATE_ZERO;
/** Not a multiple of 64 KiB: the last block of the disk is short. */
const SIZE = 5 * MiB + 4321;
const UNIT = 256 * KiB;

function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let x = Math.imul(state ^ (state >>> 15), 1 | state);
    x ^= x + Math.imul(x ^ (x >>> 7), 61 | x);
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vnbdmap-index-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The bytes an Export returns for a range, holes as zeros, checking the chunks tile the range. */
async function readBytes(exp: Export, offset: number, length: number): Promise<{ bytes: Buffer; holes: Chunk[] }> {
  const result = await exp.read(offset, length);
  if (Buffer.isBuffer(result)) return { bytes: result, holes: [] };
  const bytes = Buffer.alloc(length);
  let at = offset;
  for (const c of result) {
    if (c.offset !== at) throw new Error(`chunk at ${c.offset}, expected ${at}`);
    if (!c.zero) c.data!.copy(bytes, c.offset - offset);
    at += c.length;
  }
  if (at !== offset + length) throw new Error(`chunks end at ${at}, expected ${offset + length}`);
  return { bytes, holes: result.filter((c) => c.zero) };
}

/**
 * full: data, a zero frame, an unbacked gap, a frame longer than the LZ4
 * unit (several pieces), data at the disk's very end; inc1 and inc2 cut
 * into all of them, one inc with zeros written as data.
 */
async function makeChain(dir: string, compress: boolean, lz4ContentSize = true): Promise<SyntheticChain> {
  const chain = new SyntheticChain(dir, 'vda', SIZE, { compress, unitSize: UNIT, lz4ContentSize });
  await chain.full([
    { offset: 0, data: patternBytes('a', 300 * KiB) },
    { offset: 300 * KiB, zero: 100 * KiB },
    { offset: MiB, data: patternBytes('b', 200 * KiB) },
    { offset: 2 * MiB, data: patternBytes('c', 700 * KiB) },
    { offset: SIZE - 5000, data: patternBytes('end', 5000) },
  ]);
  await chain.inc([
    { offset: 100 * KiB, data: patternBytes('d', 50 * KiB) },
    { offset: MiB + 190 * KiB, data: patternBytes('e', 110 * KiB) },
    { offset: 2 * MiB + 100 * KiB, data: patternBytes('f', 50 * KiB) },
  ]);
  await chain.inc([
    { offset: 0, zero: 64 * KiB },
    { offset: 2 * MiB + 600 * KiB, data: patternBytes('g', 424 * KiB) },
    { offset: 4 * MiB, data: Buffer.from([0x5a]) },
  ]);
  return chain;
}

async function exportOf(files: string[], options: { unitSize?: number; onCorruptFrame?: (p: CorruptFrame) => void } = {}): Promise<{ chain: LoadedChain; exp: ChainExport }> {
  const [chain] = await loadChains(files, { unitSize: options.unitSize });
  const exp = new ChainExport(chain!.index, chain!.files, { onCorruptFrame: options.onCorruptFrame, cache: new PieceCache({ maxBytes: 2 * MiB }) });
  return { chain: chain!, exp };
}

/** Whole-disk and random reads equal the reference image. */
async function assertReads(t: { deepEqual(a: unknown, b: unknown, m?: string): void; true(v: boolean, m?: string): void }, exp: Export, image: Buffer, seed: number): Promise<void> {
  const whole = await readBytes(exp, 0, image.length);
  t.true(whole.bytes.equals(image), 'the whole disk reads as the reference image');
  const random = prng(seed);
  for (let i = 0; i < 150; i++) {
    const offset = Math.floor(random() * image.length);
    const length = Math.min(image.length - offset, 1 + Math.floor(random() * random() * 900 * KiB));
    const { bytes } = await readBytes(exp, offset, length);
    if (!bytes.equals(image.subarray(offset, offset + length))) {
      t.true(false, `read ${offset}+${length} differs from the reference`);
      return;
    }
  }
}

// ------------------------------------------------------------------ the index

test('ChainIndex agrees with a byte-by-byte model of random layers', (t) => {
  for (let seed = 1; seed <= 40; seed++) {
    const random = prng(seed);
    const size = 3000;
    const owner = new Array<number>(size).fill(-1);
    const layers: Frame[][] = [];
    let id = 0;
    for (let layer = 0; layer < 1 + Math.floor(random() * 5); layer++) {
      const frames: Frame[] = [];
      for (let at = Math.floor(random() * 50); at < size; ) {
        const length = Math.min(size - at, 1 + Math.floor(random() * 200));
        if (random() < 0.6) {
          frames.push({ file: layer, index: id, headerAt: 0, kind: random() < 0.2 ? 'zero' : 'data', offset: at, length });
          owner.fill(id, at, at + length);
          id++;
        }
        at += length + Math.floor(random() * 100);
      }
      layers.push(frames);
    }
    const index = ChainIndex.build(size, layers);
    for (let q = 0; q < 30; q++) {
      const offset = Math.floor(random() * size);
      const length = Math.floor(random() * (size - offset));
      const segments = index.segments(offset, length);
      let at = offset;
      for (const s of segments) {
        t.is(s.offset, at, `seed ${seed}: segments are contiguous`);
        for (let b = s.offset; b < s.offset + s.length; b++) {
          if ((s.frame?.index ?? -1) !== owner[b]) {
            t.fail(`seed ${seed}: byte ${b} maps to frame ${s.frame?.index ?? 'none'}, the model says ${owner[b]}`);
            return;
          }
        }
        at += s.length;
      }
      t.is(at, offset + length, `seed ${seed}: segments cover the range`);
    }
    const ranges = index.allRanges();
    for (let i = 1; i < ranges.length; i++) t.true(ranges[i - 1]!.offset + ranges[i - 1]!.length <= ranges[i]!.offset, `seed ${seed}: sorted, no overlap`);
  }
});

test('overlayRanges: an upper range splits, trims and hides lower ones', (t) => {
  const f = (index: number): Frame => ({ file: 0, index, headerAt: 0, kind: 'data', offset: 0, length: 1 });
  const r = (offset: number, length: number, frame: Frame): MappedRange => ({ offset, length, frame });
  const [a, b, c, u1, u2] = [f(1), f(2), f(3), f(4), f(5)];
  const out = overlayRanges([r(0, 100, a!), r(100, 50, b!), r(200, 10, c!)], [r(20, 10, u1!), r(90, 70, u2!)]);
  t.deepEqual(
    out.map((x) => [x.offset, x.length, x.frame.index]),
    [
      [0, 20, 1],
      [20, 10, 4],
      [30, 60, 1],
      [90, 70, 5],
      [200, 10, 3],
    ],
  );
  t.throws(() => ChainIndex.build(100, [[{ ...f(1), offset: 10, length: 10 }, { ...f(2), offset: 15, length: 10 }]]), { instanceOf: RangeError });
});

// --------------------------------------------------------- scan and export

for (const compress of [false, true]) {
  test(`${compress ? 'compressed' : 'plain'} full+inc+inc: every point of the chain reads as the disk did; zero and unbacked ranges are holes`, async (t) => {
    const dir = await tempDir(t);
    const chain = await makeChain(dir, compress);
    for (let point = 0; point < chain.files.length; point++) {
      const { chain: loaded, exp } = await exportOf(chain.files.slice(0, point + 1));
      t.teardown(() => exp.close());
      t.is(loaded.streams.length, point + 1);
      t.is(loaded.checkpoint, `virtnbdbackup.${point}`);
      t.is(exp.size, SIZE);
      if (compress) t.true(loaded.streams.every((s) => s.located === 'trailer'), 'compressed payloads located by the trailer');
      await assertReads(t, exp, chain.points[point]!, 100 + point);
    }
    const { exp } = await exportOf(chain.files);
    t.teardown(() => exp.close());
    // The unbacked gap and the zero frame are holes on the wire, never zero bytes.
    const gap = await readBytes(exp, 400 * KiB, 600 * KiB);
    t.deepEqual(gap.holes.map((c) => [c.offset, c.length]), [[400 * KiB, 600 * KiB]]);
    const zero = await readBytes(exp, 290 * KiB, 200 * KiB);
    t.deepEqual(zero.holes.map((c) => [c.offset, c.length]), [[300 * KiB, 190 * KiB]]);
    const status = await exp.blockStatus(0, SIZE);
    t.deepEqual(
      status.filter((e) => e.flags === HOLE).map((e) => [e.offset, e.length]).slice(0, 2),
      [
        [300 * KiB, 724 * KiB],
        [MiB + 300 * KiB, 724 * KiB],
      ],
      'the zero frame and the gaps are hole+zero',
    );
    t.deepEqual(status[0], { offset: 0, length: 300 * KiB, flags: 0 }, 'data (zeros written by an inc included) is data');
    t.is(status.reduce((sum, e) => sum + e.length, 0), SIZE);
  });
}

test('compressed chain without a trailer: LZ4 frames found by walking their headers', async (t) => {
  const dir = await tempDir(t);
  const chain = await makeChain(dir, true);
  for (const file of chain.files) {
    // Cut everything after the stop frame: the trailer JSON, \r\n and the comp frame.
    const bytes = await readFile(file);
    const stopAt = bytes.lastIndexOf(Buffer.from('stop 0000000000000000 0000000000000000\r\n'));
    await truncate(file, stopAt + 40);
  }
  const { chain: loaded, exp } = await exportOf(chain.files);
  t.teardown(() => exp.close());
  t.true(loaded.streams.every((s) => s.located === 'lz4-headers'), loaded.streams.map((s) => s.located).join());
  t.true(loaded.streams.every((s) => /does not end with a comp frame/.test(s.trailerProblem ?? '')));
  await assertReads(t, exp, chain.image, 7);
});

test('LZ4 pieces that declare no size and do not follow the usual split are laid out by decompressing them', async (t) => {
  const dir = await tempDir(t);
  const chain = await makeChain(dir, true, false);
  // Scanned as if the backup had read in 1 MiB requests: the 256 KiB pieces do not fit that split.
  const { chain: loaded, exp } = await exportOf(chain.files, { unitSize: MiB });
  t.teardown(() => exp.close());
  const unknown = loaded.streams.flatMap((s) => s.frames).filter((f) => f.layoutKnown === false);
  t.true(unknown.length > 0, 'some frames have an unknown layout');
  await assertReads(t, exp, chain.image, 9);
  t.true(unknown.every((f) => f.layoutKnown === true), 'learnt on first use');
});

test('scanning reads frame headers only: a few reads per frame, not the payloads', async (t) => {
  const dir = await tempDir(t);
  const chain = new SyntheticChain(dir, 'vda', 64 * MiB);
  const frames = Array.from({ length: 20 }, (_, i) => ({ offset: i * 3 * MiB, data: patternBytes(`x${i}`, 2 * MiB) }));
  await chain.full(frames);
  const { chain: loaded, exp } = await exportOf(chain.files);
  t.teardown(() => exp.close());
  const s = loaded.streams[0]!;
  t.is(s.frames.length, 20);
  // Meta frame, one window per frame header (payload terminator and next header together), the stop frame.
  t.true(s.reads <= 20 + 3, `${s.reads} reads for 20 frames of 2 MiB`);
});

test('a corrupt LZ4 block fails reads of its range with EIO; the rest is still served', async (t) => {
  const dir = await tempDir(t);
  const chain = await makeChain(dir, true);
  const full = chain.files[0]!;
  // Corrupt the first LZ4 piece of the frame at 1 MiB (200 KiB of 'b'): a byte well inside its block data.
  const [before] = await loadChains([full]);
  const frame = before!.streams[0]!.frames.find((f) => f.offset === MiB)!;
  await Promise.all(before!.files.map((f) => f.handle.close()));
  const piece = frame.pieces![0]!;
  const fh = await open(full, 'r+');
  const one = Buffer.alloc(1);
  await fh.read(one, 0, 1, piece.position + 100);
  one[0] ^= 0xff;
  await fh.write(one, 0, 1, piece.position + 100);
  await fh.close();

  const reported: CorruptFrame[] = [];
  const { exp } = await exportOf(chain.files, { onCorruptFrame: (p) => reported.push(p) });
  t.teardown(() => exp.close());
  const err = await t.throwsAsync(exp.read(MiB + 4096, 4096), { instanceOf: ExportError });
  t.is(err!.code, 'EIO');
  t.regex(err!.message, /vda\.full\.data: data frame \d+ .*disk 1048576\+204800.* is corrupt/);
  await t.throwsAsync(exp.read(MiB, 64 * KiB), { instanceOf: ExportError }, 'the range keeps failing');
  // Before, after, and the part of that frame an incremental backup replaced.
  t.true((await readBytes(exp, 0, MiB)).bytes.equals(chain.image.subarray(0, MiB)));
  t.true((await readBytes(exp, MiB + 190 * KiB, 2 * MiB)).bytes.equals(chain.image.subarray(MiB + 190 * KiB, 3 * MiB + 190 * KiB)));
  t.is(reported.length, 1, 'reported once');
  t.is(reported[0]!.offset, MiB);
});

// --------------------------------------------------------------- bad input

test('bad input: not a stream, cut short, trailing bytes, missing file: MapInputError naming the file', async (t) => {
  const dir = await tempDir(t);
  const chain = await makeChain(dir, false);
  const raw = join(dir, 'disk.raw');
  await writeFile(raw, Buffer.alloc(8192));
  const e1 = await t.throwsAsync(loadChains([raw]), { instanceOf: MapInputError });
  t.regex(e1!.message, /disk\.raw: is not a sparse stream .*qemu-nbd/);

  const cut = join(dir, 'cut.full.data');
  const bytes = await readFile(chain.files[0]!);
  await writeFile(cut, bytes.subarray(0, bytes.length - 40));
  const e2 = await t.throwsAsync(loadChains([cut]), { instanceOf: MapInputError });
  t.regex(e2!.message, /cut\.full\.data: frame \d+ at byte \d+: the file ends before its stop frame/);

  const cutPayload = join(dir, 'cut2.full.data');
  await writeFile(cutPayload, bytes.subarray(0, 100 * KiB));
  const e3 = await t.throwsAsync(loadChains([cutPayload]), { instanceOf: MapInputError });
  t.regex(e3!.message, /cut2\.full\.data: frame 1 at byte \d+: the file ends inside the payload/);

  const trailing = join(dir, 'trailing.full.data');
  await writeFile(trailing, Buffer.concat([bytes, Buffer.from('junk')]));
  const e4 = await t.throwsAsync(loadChains([trailing]), { instanceOf: MapInputError });
  t.regex(e4!.message, /4 unexpected bytes follow the stop frame/);

  const e5 = await t.throwsAsync(loadChains([join(dir, 'nope.full.data')]), { instanceOf: MapInputError });
  t.regex(e5!.message, /nope\.full\.data: cannot be read/);
});

test('bad input: files of different disks, a broken chain, no full backup: MapChainError', async (t) => {
  const dir = await tempDir(t);
  const vda = await makeChain(dir, false);
  const vdb = new SyntheticChain(dir, 'vdb', MiB);
  await vdb.full([{ offset: 0, data: patternBytes('vdb', 4096) }]);
  const e1 = await t.throwsAsync(loadChains([vda.files[0]!, vdb.files[0]!], { singleDisk: true }), { instanceOf: MapChainError });
  t.regex(e1!.message, /different disks \(vda: .*vda\.full\.data; vdb: .*vdb\.full\.data\)/);

  const e2 = await t.throwsAsync(loadChains([vda.files[0]!, vda.files[2]!]), { instanceOf: MapChainError });
  t.regex(e2!.message, /disk vda do not form one chain: checkpoint virtnbdbackup\.1 was created by none of them/);

  const e3 = await t.throwsAsync(loadChains([vda.files[1]!, vda.files[2]!]), { instanceOf: MapChainError });
  t.regex(e3!.message, /No full or copy backup of disk vda/);

  // Order on the command line does not matter: the metadata orders the chain.
  const [loaded] = await loadChains([vda.files[2]!, vda.files[0]!, vda.files[1]!]);
  t.deepEqual(loaded!.files.map((f) => f.file), vda.files);
  await Promise.all(loaded!.files.map((f) => f.handle.close()));
});

// ------------------------------------------------------------------ overlay

test('CowOverlay: writes, write-zeroes and trims read back; the backup files are untouched; close deletes the overlay', async (t) => {
  const dir = await tempDir(t);
  const chain = await makeChain(dir, true);
  const sums = async (): Promise<string[]> => Promise.all(chain.files.map(async (f) => createHash('sha256').update(await readFile(f)).digest('hex')));
  const before = await sums();
  const { exp: base } = await exportOf(chain.files);
  const path = join(dir, 'overlay.raw');
  const cow = await CowOverlay.create(base, { path });
  t.teardown(async () => {
    await cow.close();
    await base.close();
  });
  const model = Buffer.from(chain.image);
  const random = prng(42);
  const ops: Promise<void>[] = [];
  for (let i = 0; i < 120; i++) {
    const offset = Math.floor(random() * SIZE);
    const length = Math.min(SIZE - offset, 1 + Math.floor(random() * random() * 300 * KiB));
    const roll = random();
    if (roll < 0.7) {
      const data = patternBytes(`w${i}`, length);
      data.copy(model, offset);
      ops.push(cow.write(offset, data));
    } else if (roll < 0.9) {
      model.fill(0, offset, offset + length);
      ops.push(cow.writeZeroes(offset, length, { noHole: random() < 0.5 }));
    } else {
      // Trim: whole blocks inside the range read as zeros afterwards, the rest is kept.
      const first = Math.ceil(offset / CowOverlay.BLOCK) * CowOverlay.BLOCK;
      const end = offset + length === SIZE ? SIZE : Math.floor((offset + length) / CowOverlay.BLOCK) * CowOverlay.BLOCK;
      if (end > first) model.fill(0, first, end);
      ops.push(cow.trim(offset, length));
    }
    // Let some operations overlap in flight, as a client's pipelined requests do.
    if (i % 5 === 4) await Promise.all(ops.splice(0));
  }
  await Promise.all(ops);
  // The last short block and a write across the disk's end.
  const tail = patternBytes('tail', 10_000);
  tail.copy(model, SIZE - 10_000);
  await cow.write(SIZE - 10_000, tail);
  await assertReads(t, cow, model, 11);
  const status = await cow.blockStatus(0, SIZE);
  t.is(status.reduce((sum, e) => sum + e.length, 0), SIZE, 'block status covers the disk');
  t.true(cow.changedBytes > 0);
  await cow.flush();
  t.deepEqual(await sums(), before, 'backup files unchanged');
  t.true((await stat(path)).isFile());
  await cow.close();
  await t.throwsAsync(stat(path), { code: 'ENOENT' }, 'overlay deleted');
  await t.throwsAsync(cow.read(0, 10), { instanceOf: ExportError });
});

// ------------------------------------------------------------ LZ4 decoding

/** LZ4 frames made by python-lz4 (what Debian's virtnbdbackup writes: linked blocks, content size, checksums). */
function pythonFrames(): { level: number; raw: Buffer; frame: Buffer }[] {
  const script = [
    'import lz4.frame, os, sys, base64, struct',
    'rnd = os.urandom(300000)',
    "txt = base64.b64encode(os.urandom(700000))",
    "rep = b'virtnbd ' * 90000",
    'out = sys.stdout.buffer',
    'for level in (0, 2, 9):',
    '  for raw in (rnd, txt, rep, b"", b"x"):',
    '    f = lz4.frame.compress(raw, content_checksum=True, block_checksum=True, compression_level=level)',
    "    out.write(struct.pack('<III', level, len(raw), len(f)) + raw + f)",
  ].join('\n');
  const r = spawnSync('/usr/bin/python3', ['-c', script], { maxBuffer: 64 * MiB });
  if (r.status !== 0) throw new Error(`python3 -c (python3-lz4, a dependency of virtnbdbackup) failed: ${r.stderr.toString()}`);
  const out: { level: number; raw: Buffer; frame: Buffer }[] = [];
  for (let at = 0; at < r.stdout.length; ) {
    const level = r.stdout.readUInt32LE(at);
    const rawLength = r.stdout.readUInt32LE(at + 4);
    const frameLength = r.stdout.readUInt32LE(at + 8);
    at += 12;
    out.push({ level, raw: r.stdout.subarray(at, at + rawLength), frame: r.stdout.subarray(at + rawLength, at + rawLength + frameLength) });
    at += rawLength + frameLength;
  }
  return out;
}

/** A whole frame through the streaming decoder restores use, in parts of 100 000 bytes. */
function streamDecode(stream: Lz4FrameStream, frame: Buffer): Buffer {
  stream.begin();
  const out: Buffer[] = [];
  for (let at = 0; at < frame.length; at += 100_000) out.push(...stream.push(frame.subarray(at, at + 100_000)).map((p) => Buffer.from(p)));
  out.push(...stream.finish().map((p) => Buffer.from(p)));
  return Buffer.concat(out);
}

test('the streaming LZ4 decoder decodes python-lz4 (linked blocks) and lz4-napi frames; corruption never passes unnoticed', async (t) => {
  const cases: { name: string; raw: Buffer; frame: Buffer }[] = pythonFrames().map((c) => ({ name: `python level ${c.level}, ${c.raw.length} bytes`, raw: c.raw, frame: c.frame }));
  t.is(cases.length, 15);
  for (const raw of [patternBytes('napi', 700_000), Buffer.alloc(65536 * 4 + 1, 7), Buffer.alloc(0), Buffer.from('y')]) {
    cases.push({ name: `lz4-napi ${raw.length} bytes`, raw, frame: await compressFrame(raw, { contentChecksum: true, blockChecksums: true }) });
  }
  const stream = new Lz4FrameStream();
  for (const c of cases) t.true(streamDecode(stream, c.frame).equals(c.raw), c.name);
  const random = prng(5);
  for (const c of cases.filter((x) => x.raw.length > 1000)) {
    for (let i = 0; i < 40; i++) {
      const bad = Buffer.from(c.frame);
      const at = Math.floor(random() * bad.length);
      bad[at] ^= 1 + Math.floor(random() * 255);
      try {
        t.true(streamDecode(stream, bad).equals(c.raw), `${c.name}: byte ${at} flipped, yet decoded to other data`);
      } catch (err) {
        t.true(err instanceof Lz4DecodeError, `${c.name}: byte ${at}: ${(err as Error).message}`);
      }
    }
  }
});

test('PieceCache: bounded by bytes, leased pieces stay, concurrent misses share one fill, failures are not kept', async (t) => {
  const cache = new PieceCache({ maxBytes: 256 * KiB, maxEntries: 8 });
  let fills = 0;
  const fill = (value: number) => async (target: Buffer): Promise<number> => {
    fills++;
    target.fill(value, 0, 64 * KiB);
    return 64 * KiB;
  };
  const [a, b] = await Promise.all([cache.acquire('a', 64 * KiB, fill(1)), cache.acquire('a', 64 * KiB, fill(9))]);
  t.is(fills, 1, 'one fill for two concurrent requests');
  t.is(a.data[0], 1);
  t.is(b.data[100], 1);
  for (let i = 0; i < 10; i++) (await cache.acquire(`k${i}`, 64 * KiB, fill(i + 10))).release();
  t.true(cache.stats().bytes <= 256 * KiB + 64 * KiB, 'bounded (the leased piece aside)');
  t.is(a.data[0], 1, 'a leased piece is never reused under its holder');
  a.release();
  b.release();
  await t.throwsAsync(cache.acquire('bad', 64 * KiB, async () => Promise.reject(new Error('corrupt'))), { message: 'corrupt' });
  const retry = await cache.acquire('bad', 64 * KiB, fill(3));
  t.is(retry.data[0], 3, 'a failed fill is tried again');
  retry.release();
});

// ------------------------------------------------------------ command line

test("virtnbdmap's command line: Debian 1.9.15's flags and defaults, plus --socket and --boot", (t) => {
  const env = { home: '/root' };
  const run = (argv: string[]) => {
    const r = parseMapArgs(argv, env);
    if (r.kind !== 'run') throw new Error(`expected options, got ${r.kind}`);
    return r.options;
  };
  const d = run(['-f', '/b/sda.full.data,/b/sda.inc.virtnbdbackup.1.data']);
  t.deepEqual(d.files, ['/b/sda.full.data', '/b/sda.inc.virtnbdbackup.1.data']);
  t.is(d.device, '/dev/nbd0');
  t.is(d.exportName, 'sda');
  t.deepEqual(d.listen, { host: '127.0.0.1', port: 10809 });
  t.false(d.readOnly);
  t.false(d.boot);
  t.is(d.logFile, '/root/virtnbdmap.log');
  const o = run(['-rv', '-f', 'x.data', '-d', '/dev/nbd2', '-e', 'vda', '-l', '0.0.0.0', '-p', '10900', '-b', '65536', '-t', '4', '-n', '-L', '/tmp/m.log']);
  t.true(o.readOnly && o.verbose && o.noProgress);
  t.deepEqual([o.device, o.exportName, o.listen, o.logFile], ['/dev/nbd2', 'vda', { host: '0.0.0.0', port: 10900 }, '/tmp/m.log']);
  t.deepEqual(run(['-f', 'x.data', '--socket', '/run/s.sock']).listen, { socketPath: '/run/s.sock' });
  const boot = run(['--boot', '--name', 'vm2', '-U', 'qemu:///system', '-f', '/b/']);
  t.true(boot.boot);
  t.is(boot.name, 'vm2');
  t.is(boot.listen, undefined, '--boot serves on a socket in its work directory');
  for (const [argv, message] of [
    [[], /the following arguments are required: -f\/--file/],
    [['-f', 'x', '-p', 'http'], /invalid int value: 'http'/],
    [['-f', 'x', '-p', '70000'], /70000 is not a TCP port/],
    [['-f', 'x', '--socket', '/s', '-p', '1'], /--socket: not allowed with -l/],
    [['-f', 'x', '--boot', '-l', '0.0.0.0'], /--boot: .* use --socket PATH instead/],
    [['-f', 'x', '--name', 'y'], /--name: only with --boot/],
    [['-f', ','], /expected a comma-separated list/],
  ] as const) {
    const err = t.throws(() => parseMapArgs(argv as unknown as string[], env), { instanceOf: ArgumentError });
    t.regex(err!.format(), message as RegExp);
    t.is(err!.exitCode, 2);
  }
  // Every flag Debian's virtnbdmap documents is accepted.
  const debian = spawnSync('virtnbdmap', ['--help'], { encoding: 'utf8' }).stdout;
  const flags = [...debian.matchAll(/^\s+(-\w)(?: [A-Z_]+)?, (--[\w-]+)/gm)].map((m) => [m[1]!, m[2]!]);
  t.true(flags.length >= 13, debian);
  const ours = mapProgramSpec(env).options;
  for (const [short, long] of flags) t.true(ours.some((o) => o.short === short && o.long === long), `${short}/${long} is one of ours too`);
  t.regex(formatHelp(mapProgramSpec(env)), /--socket PATH[\s\S]*--boot/);
});

// ------------------------------------------------------- instant recovery

test('instantDomainConfig: overlays for the mapped disks, a new name, boot files, no leftovers of the old run', (t) => {
  const vmconfig = `<domain type='kvm' id='7'>
  <name>web</name>
  <uuid>0b6d4cbb-2a3c-4f2e-9d55-2f2c9f1d7f10</uuid>
  <memory unit='KiB'>131072</memory>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <kernel>/var/lib/vm/vmlinuz</kernel>
    <initrd>/var/lib/vm/initrd.img</initrd>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web.qcow2' index='2'/>
      <backingStore type='file' index='3'><format type='qcow2'/><source file='/var/lib/libvirt/images/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web-data.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
      <target dev='vnet3'/>
      <model type='virtio'/>
    </interface>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-7-web/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>`;
  const c = instantDomainConfig(vmconfig, {
    disks: [{ target: 'vda', overlay: '/tmp/w/vda.overlay.qcow2' }],
    bootFiles: { kernel: '/backup/vmlinuz.virtnbdbackup.1' },
  });
  t.is(c.name, 'instant_web');
  t.is(c.original, 'web');
  const info = parseDomainXml(c.xml);
  t.is(info.name, 'instant_web');
  t.is(info.uuid, undefined, 'libvirt makes a new uuid');
  t.deepEqual(
    info.disks.map((d) => [d.target, d.type, d.format, d.path, d.backingStore.length]),
    [['vda', 'file', 'qcow2', '/tmp/w/vda.overlay.qcow2', 0]],
    'only the mapped disk, as its overlay; no cdrom, no old backing chain',
  );
  t.is(info.bootFiles.kernel, '/backup/vmlinuz.virtnbdbackup.1');
  t.is(info.bootFiles.initrd, '/var/lib/vm/initrd.img', 'boot files not replaced stay');
  t.notRegex(c.xml, /channel\/target\/domain-7-web/, 'the agent socket path of the old run is gone');
  t.regex(c.xml, /<target type="virtio" name="org.qemu.guest_agent.0"|<target type='virtio' name='org.qemu.guest_agent.0'/, 'the channel itself stays');
  t.notRegex(c.xml, /vnet3/);
  t.regex(c.xml, /52:54:00:12:34:56/, 'the MAC address stays');
  t.is(instantDomainConfig(vmconfig, { name: 'rescue', disks: [] }).name, 'rescue');
});
