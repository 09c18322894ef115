/**
 * Live compatibility with Debian's virtnbdbackup 1.9.15, our peer: the
 * backup sets it makes of a running VM (full + inc, plain and compressed)
 * are read by our SparseParser to exactly the VM's disk; SparseFramer given
 * the chunks we parsed writes the very same bytes; and a set whose data
 * files our stages wrote (FileSink, ChecksumTap, Lz4Compress) is accepted
 * by Debian's virtnbdrestore for dump and restore, its .chksum equal to
 * zlib's adler32.
 */
import { copyFile, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import test from 'ava';
import type { Chunk } from '../lib/chunk.js';
import type { StreamMetadata } from '../lib/format/metadata.js';
import { checksumFileName, parseDataFileName } from '../lib/format/naming.js';
import { formatChecksumFile } from '../lib/format/adler32.js';
import { SparseParser } from '../streams/SparseParser.js';
import { DEFAULT_MAX_REQUEST_SIZE, SparseFramer } from '../streams/SparseFramer.js';
import { Lz4Compress } from '../streams/Lz4Compress.js';
import { Lz4Decompress } from '../streams/Lz4Decompress.js';
import { ChecksumTap } from '../streams/ChecksumTap.js';
import { FileSink } from '../streams/FileSink.js';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages, type PatternWrite } from './helpers/image.js';
import { run } from './helpers/exec.js';
import { peerBackupChain, peerRestore, restoredImagePath } from './helpers/peer.js';
import { applyStream } from './helpers/apply-stream.js';

const PRE_BOOT: PatternWrite[] = [
  { pattern: 0x11, offset: 0, length: MiB },
  // Longer than QEMU's 32 MiB maximum request: read and compressed in two pieces.
  { pattern: 0x5a, offset: 16 * MiB, length: 40 * MiB },
];

/** Parses a stream file completely: its metadata and every chunk, payloads as found (lz4 kept compressed). */
async function parseAll(file: string): Promise<{ metadata: StreamMetadata; chunks: Chunk[] }> {
  const parser = new SparseParser();
  const chunks: Chunk[] = [];
  await pipeline(
    createReadStream(file),
    parser,
    new Writable({
      objectMode: true,
      write(chunk: Chunk, _e, done) {
        chunks.push(chunk);
        done();
      },
    }),
  );
  return { metadata: parser.metadata!, chunks };
}

async function frame(metadata: StreamMetadata, chunks: Chunk[]): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(
    Readable.from(chunks),
    new SparseFramer({ metadata }),
    new Writable({
      write(b: Buffer, _e, done) {
        out.push(b);
        done();
      },
    }),
  );
  return Buffer.concat(out);
}

async function dataFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => parseDataFileName(f) !== undefined).sort();
}

/** Rebuilds a raw image from a set's full then incs in checkpoint order, with our parser. */
async function rebuild(dir: string, raw: string): Promise<void> {
  const files = await dataFiles(dir);
  const full = files.filter((f) => f.includes('.full.'));
  const incs = files.filter((f) => f.includes('.inc.')).sort((a, b) => ident(a) - ident(b));
  for (const f of [...full, ...incs]) await applyStream(join(dir, f), raw);
}
const ident = (f: string): number => Number(/virtnbdbackup\.(\d+)/.exec(f)![1]);

async function pythonAdler32(file: string): Promise<number> {
  const r = await run('/usr/bin/python3', ['-c', 'import sys,zlib; print(zlib.adler32(open(sys.argv[1],"rb").read()))', file]);
  return Number(r.stdout.trim());
}

test('Debian virtnbdbackup sets are read, reframed byte for byte, and our files restore with its virtnbdrestore', async (t) => {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '256M', writes: PRE_BOOT });
  // Some incompressible data too, so compression is exercised for real.
  const random = host.path('random.bin');
  await writeFile(random, (await import('node:crypto')).randomBytes(3 * MiB));
  await run('qemu-io', ['-f', 'qcow2', '-c', `write -s ${random} ${100 * MiB} ${3 * MiB}`, image.path]);
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();

  // 1. Plain full + inc by the peer.
  const plain = host.path('plain');
  await peerBackupChain(vm, {
    output: plain,
    workDir: host.dir,
    incrementals: [
      [
        { pattern: 0x33, offset: 200 * MiB, length: MiB },
        { pattern: 0x44, offset: 150 * MiB + 0x1234, length: 256 },
      ],
    ],
  });
  t.deepEqual(await dataFiles(plain), ['vda.full.data', 'vda.inc.virtnbdbackup.1.data']);
  const rawPlain = host.path('plain.raw');
  await rebuild(plain, rawPlain);
  const cmp = await compareImages(image.path, rawPlain, { formatB: 'raw' });
  t.true(cmp.identical, `our parser's reading of the plain set: ${cmp.message}`);

  for (const f of await dataFiles(plain)) {
    const { metadata, chunks } = await parseAll(join(plain, f));
    t.true((await frame(metadata, chunks)).equals(await readFile(join(plain, f))), `${f} reframed byte for byte`);
  }

  // 2. Our stages write a compressed set from the same chunks (with .chksum);
  //    Debian's virtnbdrestore dumps and restores it to the VM's disk.
  const ours = host.path('ours');
  await mkdir(join(ours, 'checkpoints'), { recursive: true });
  for (const f of await readdir(plain, { recursive: true })) {
    if (!f.endsWith('.data') && !f.endsWith('.log') && f !== 'checkpoints') await copyFile(join(plain, f), join(ours, f));
  }
  for (const f of await dataFiles(plain)) {
    const { metadata } = await parseAll(join(plain, f));
    const tap = new ChecksumTap();
    await pipeline(
      createReadStream(join(plain, f)),
      new SparseParser(),
      new Lz4Decompress(),
      // Pieces gathered into maxRequestSize units, as a backup does: the parser's pieces follow its input's cuts.
      new Lz4Compress({ unitSize: DEFAULT_MAX_REQUEST_SIZE }),
      new SparseFramer({ metadata: { ...metadata, compressed: 2 } }),
      tap,
      new FileSink(join(ours, f)),
    );
    await writeFile(join(ours, checksumFileName(f)), formatChecksumFile(tap.checksum));
    t.is(tap.checksum, await pythonAdler32(join(ours, f)), `${f}.chksum is zlib's adler32`);
  }
  t.deepEqual(
    (await readdir(ours)).filter((f) => f.includes('.data')).sort(),
    ['vda.full.data', 'vda.full.data.chksum', 'vda.inc.virtnbdbackup.1.data', 'vda.inc.virtnbdbackup.1.data.chksum'],
  );
  const dump = await run('virtnbdrestore', ['-i', ours, '-o', 'dump', '-L', host.path('dump.log')]);
  const dumped = dump.stdout + dump.stderr;
  t.regex(dumped, /virtnbdbackup\.1/);
  t.regex(dumped, /"compressed": 2/);
  const restored = host.path('restored');
  await peerRestore({ input: ours, output: restored, workDir: host.dir });
  const cmpOurs = await compareImages(image.path, restoredImagePath(restored, image));
  t.true(cmpOurs.identical, `virtnbdrestore of our compressed set: ${cmpOurs.message}`);

  // 3. Compressed full + inc by the peer: read to the disk, reframed byte for byte (trailer included).
  const packed = host.path('packed');
  await peerBackupChain(vm, {
    output: packed,
    workDir: host.dir,
    compress: true,
    incrementals: [[{ pattern: 0x55, offset: 64 * MiB, length: 2 * MiB }]],
  });
  const rawPacked = host.path('packed.raw');
  await rebuild(packed, rawPacked);
  const cmpPacked = await compareImages(image.path, rawPacked, { formatB: 'raw' });
  t.true(cmpPacked.identical, `our parser's reading of the compressed set: ${cmpPacked.message}`);
  for (const f of await dataFiles(packed)) {
    // The parser cannot know a compressed piece's place before it is
    // decompressed: pair each LZ4 piece with its decompressed twin to get
    // the chunks exactly as virtnbdbackup read them.
    const { metadata, chunks: packedChunks } = await parseAll(join(packed, f));
    const plainChunks: Chunk[] = [];
    await pipeline(
      Readable.from(packedChunks),
      new Lz4Decompress(),
      new Writable({
        objectMode: true,
        write(chunk: Chunk, _e, done) {
          plainChunks.push(chunk);
          done();
        },
      }),
    );
    t.is(plainChunks.length, packedChunks.length);
    const chunks = plainChunks.map((c, i) => (c.zero ? c : { ...c, data: undefined, lz4: packedChunks[i]!.lz4 }));
    t.true(chunks.some((c) => c.lz4 !== undefined));
    t.true((await frame(metadata, chunks)).equals(await readFile(join(packed, f))), `${f} reframed byte for byte`);
  }
});
