/**
 * `npx tsx scripts/bench/lz4.ts [--mib N] [--rounds N] [--keep]`: LZ4 compression and
 * decompression of N MiB (default 512) of random data and of N MiB of
 * compressible data (files of /usr/lib concatenated), each tool in a child
 * process of its own, timed from spawn to exit, its peak RSS taken by GNU
 * time (%M), CPU seconds too (this host is shared and noisy: CPU time says
 * more than wall time). Every tool frames the data as a compressed backup
 * does: one LZ4 frame per 32 MiB unit, content and block checksums on.
 *
 * - ours: Lz4Compress / Lz4Decompress (worker threads, lib/lz4), fed 512 KiB
 *   reads into 16 reused buffers like NbdReader's, output written by a
 *   FileSink whose onWritten hands buffers back (recycle());
 * - lz4-napi: compressFrame / decompressFrame, 2 at a time (the old stages);
 * - python-lz4: lz4.frame.compress(..., compression_level=2), what
 *   virtnbdbackup runs, one unit at a time;
 * - lz4 CLI (when installed): `lz4 -1 -BX` on the whole file (one frame,
 *   single-threaded C: the speed reference).
 *
 * Node children run this script compiled by tsc (as dist/ runs: no tsx in
 * the process or its workers); a do-nothing child is measured too, for the
 * RSS Node itself costs. Decompressed output is compared with the input.
 * Results are printed, not asserted.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, open, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import type { Chunk } from '../../lib/chunk.js';
import { Lz4FrameWalker, parseLz4FrameDescriptor } from '../../lib/format/lz4Frame.js';
import { DEFAULT_BLOCK_SIZE, isLz4BlockSize } from '../../lib/lz4/frameEncoder.js';
import { Lz4WorkerPool } from '../../lib/lz4/pool.js';
import { Lz4Compress } from '../../streams/Lz4Compress.js';
import { Lz4Decompress } from '../../streams/Lz4Decompress.js';
import { FileSink } from '../../streams/FileSink.js';

const SELF = fileURLToPath(import.meta.url);
/** The repository (only the parent, run from the sources, uses it). */
const REPO = resolve(SELF, '../../..');
const MiB = 1024 * 1024;
const UNIT = 32 * MiB;
const READ_SIZE = 512 * 1024;
const BENCH_DIR = process.env.VIRTNBD_BENCH_DIR ?? '/var/tmp/virtnbd-bench';

// ---------------------------------------------------------------- children

/** Concatenated LZ4 frames -> one Buffer per frame, cut where Lz4FrameWalker says each ends. */
async function* frames(file: string): AsyncGenerator<Buffer> {
  let walker = new Lz4FrameWalker();
  let parts: Buffer[] = [];
  for await (const buf of createReadStream(file, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) {
    let at = 0;
    while (at < buf.length) {
      const used = walker.feed(buf, at);
      parts.push(buf.subarray(at, at + used));
      at += used;
      if (walker.done) {
        yield parts.length === 1 ? parts[0]! : Buffer.concat(parts);
        parts = [];
        walker = new Lz4FrameWalker();
      }
    }
  }
}

function lz4Payloads(): Transform {
  return new Transform({
    writableObjectMode: true,
    transform(chunk: Chunk, _e, done: TransformCallback) {
      done(null, chunk.lz4);
    },
  });
}

function dataPayloads(): Transform {
  return new Transform({
    writableObjectMode: true,
    transform(chunk: Chunk, _e, done: TransformCallback) {
      done(null, chunk.data);
    },
  });
}

/**
 * The file read as NbdReader reads a disk: 512 KiB pieces into 16 reused
 * buffers, each back once the consumer calls release().
 */
function reusedReads(file: string): { chunks: AsyncGenerator<Chunk>; release(data: Buffer): void } {
  const free = Array.from({ length: 16 }, () => Buffer.allocUnsafe(READ_SIZE));
  const waiting: Array<() => void> = [];
  const release = (data: Buffer): void => {
    free.push(Buffer.from(data.buffer as ArrayBuffer, data.byteOffset, READ_SIZE));
    waiting.shift()?.();
  };
  const chunks = async function* (): AsyncGenerator<Chunk> {
    const fh = await open(file, 'r');
    try {
      const { size } = await fh.stat();
      for (let offset = 0; offset < size; ) {
        while (free.length === 0) await new Promise<void>((r) => waiting.push(r));
        const buf = free.pop()!;
        const { bytesRead } = await fh.read(buf, 0, Math.min(READ_SIZE, size - offset), offset);
        yield { offset, length: bytesRead, data: buf.subarray(0, bytesRead), frame: { offset: 0, length: size } };
        offset += bytesRead;
      }
    } finally {
      await fh.close();
    }
  };
  return { chunks: chunks(), release };
}

async function oursCompress(input: string, output: string): Promise<void> {
  const reads = reusedReads(input);
  // LZ4_BENCH_BLOCK=65536 tries 64 KiB blocks.
  const blockSize = Number(process.env.LZ4_BENCH_BLOCK ?? DEFAULT_BLOCK_SIZE);
  const pool = isLz4BlockSize(blockSize) && blockSize !== DEFAULT_BLOCK_SIZE ? new Lz4WorkerPool({ blockSize }) : undefined;
  const compress = new Lz4Compress({ unitSize: UNIT, depth: Number(process.env.LZ4_BENCH_DEPTH ?? 2), release: reads.release, ...(pool ? { pool } : {}) });
  // Frames go back to the compressor once written, as a backup's FileSink can hand them back.
  // LZ4_BENCH_NO_RECYCLE=1 shows the cost of not handing frames back.
  const onWritten = process.env.LZ4_BENCH_NO_RECYCLE ? undefined : (b: Buffer): void => compress.recycle(b);
  const sink = new FileSink(output, { overwrite: true, sync: false, ...(onWritten ? { onWritten } : {}) });
  await pipeline(Readable.from(reads.chunks, { objectMode: true }), compress, lz4Payloads(), sink);
}

async function oursDecompress(input: string, output: string): Promise<void> {
  let offset = 0;
  const chunks = async function* (): AsyncGenerator<Chunk> {
    for await (const lz4 of frames(input)) {
      const length = parseLz4FrameDescriptor(lz4).contentSize!;
      yield { offset, length, lz4 };
      offset += length;
    }
  };
  const decompress = new Lz4Decompress();
  // Decoded buffers go back once written, as a restore's sink can hand them back.
  const sink = new FileSink(output, { overwrite: true, sync: false, onWritten: (b) => decompress.recycle(b) });
  await pipeline(Readable.from(chunks(), { objectMode: true }), decompress, dataPayloads(), sink);
}

/** Run `work` on each item, `depth` at a time, writing results to `output` in order. */
async function ordered<T>(items: AsyncIterable<T>, depth: number, work: (item: T) => Promise<Uint8Array>, output: string): Promise<void> {
  const out = createWriteStream(output);
  const queue: Promise<Uint8Array>[] = [];
  const write = async (bytes: Uint8Array): Promise<void> => {
    if (!out.write(bytes)) await new Promise<void>((r) => out.once('drain', () => r()));
  };
  for await (const item of items) {
    queue.push(work(item));
    if (queue.length >= depth) await write(await queue.shift()!);
  }
  while (queue.length > 0) await write(await queue.shift()!);
  await new Promise<void>((r, j) => out.end((err?: Error | null) => (err ? j(err) : r())));
}

async function* units(file: string): AsyncGenerator<Buffer> {
  const fh = await open(file, 'r');
  try {
    for (;;) {
      const buf = Buffer.allocUnsafe(UNIT);
      const { bytesRead } = await fh.read(buf, 0, UNIT, null);
      if (bytesRead === 0) return;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
}

async function napiCompress(input: string, output: string): Promise<void> {
  const { compressFrame } = await import('lz4-napi');
  await ordered(units(input), 2, (u) => compressFrame(u, { contentChecksum: true, blockChecksums: true }), output);
}

async function napiDecompress(input: string, output: string): Promise<void> {
  const { decompressFrame } = await import('lz4-napi');
  await ordered(frames(input), 2, (f) => decompressFrame(f), output);
}

async function child(mode: string, input: string, output: string): Promise<void> {
  switch (mode) {
    case 'ours-c':
      return oursCompress(input, output);
    case 'ours-d':
      return oursDecompress(input, output);
    case 'napi-c':
      return napiCompress(input, output);
    case 'napi-d':
      return napiDecompress(input, output);
    case 'idle':
      return;
    default:
      throw new Error(`unknown mode ${mode}`);
  }
}

// ---------------------------------------------------------------- parent

const PY_COMPRESS = `
import sys, lz4.frame
with open(sys.argv[1], 'rb') as src, open(sys.argv[2], 'wb') as dst:
    while True:
        unit = src.read(${UNIT})
        if not unit:
            break
        dst.write(lz4.frame.compress(unit, content_checksum=True, block_checksum=True, compression_level=2))
`;

const PY_DECOMPRESS = `
import sys, lz4.frame
with open(sys.argv[1], 'rb') as src, open(sys.argv[2], 'wb') as dst:
    d = lz4.frame.LZ4FrameDecompressor()
    while True:
        more = src.read(${4 * MiB})
        data = more
        while data:
            dst.write(d.decompress(data))
            if d.eof:
                data = d.unused_data
                d = lz4.frame.LZ4FrameDecompressor()
            else:
                data = b''
        if not more:
            break
`;

interface Tool {
  name: string;
  compress(input: string, output: string): string[];
  decompress(input: string, output: string): string[];
}

/** Where the compiled copy of this script is (set by compile()). */
let compiled = '';

function nodeChild(mode: string): (input: string, output: string) => string[] {
  return (input, output) => [process.execPath, compiled, '--child', mode, input, output];
}

/** Compile this script and what it imports, plus the LZ4 worker (loaded by URL, so no import names it), into `out`. */
async function compile(out: string): Promise<string> {
  const tsc = join(REPO, 'node_modules/typescript/bin/tsc');
  // prettier-ignore
  const args = [
    tsc, '--outDir', out, '--rootDir', REPO, '--module', 'nodenext', '--moduleResolution', 'nodenext',
    '--target', 'es2022', '--strict', '--noImplicitOverride', '--types', 'node', '--skipLibCheck',
    SELF, join(REPO, 'lib/lz4/worker.ts'),
  ];
  const result = spawnSync(process.execPath, args, { cwd: REPO, encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`tsc failed:\n${result.stdout}${result.stderr}`);
  await writeFile(join(out, 'package.json'), '{"type":"module"}\n');
  // The build lives outside the repository: let it find the packages (lz4-napi).
  await symlink(join(REPO, 'node_modules'), join(out, 'node_modules'));
  return join(out, 'scripts/bench/lz4.js');
}

const TOOLS: Tool[] = [
  { name: 'ours', compress: nodeChild('ours-c'), decompress: nodeChild('ours-d') },
  { name: 'lz4-napi', compress: nodeChild('napi-c'), decompress: nodeChild('napi-d') },
  {
    name: 'python-lz4',
    compress: (i, o) => ['/usr/bin/python3', '-c', PY_COMPRESS, i, o],
    decompress: (i, o) => ['/usr/bin/python3', '-c', PY_DECOMPRESS, i, o],
  },
];
if (spawnSync('lz4', ['--version']).status === 0) {
  TOOLS.push({
    name: 'lz4 CLI -1',
    compress: (i, o) => ['lz4', '-1', '-q', '-f', '-BX', i, o],
    decompress: (i, o) => ['lz4', '-d', '-q', '-f', i, o],
  });
}

interface Run {
  wallS: number;
  cpuS: number;
  rssMB: number;
}

/** Run argv under GNU time: wall seconds (ours), peak RSS and CPU seconds (the kernel's). */
function timed(argv: string[], dir: string): Promise<Run> {
  const report = join(dir, 'time.out');
  return new Promise((resolvePromise, reject) => {
    const started = process.hrtime.bigint();
    const proc = spawn('/usr/bin/time', ['-f', '%M %U %S', '-o', report, ...argv], { stdio: ['ignore', 'inherit', 'inherit'], cwd: REPO });
    proc.on('error', reject);
    proc.on('close', (code) => {
      const wallS = Number(process.hrtime.bigint() - started) / 1e9;
      if (code !== 0) return reject(new Error(`${argv.slice(0, 3).join(' ')} ... exited with ${code}`));
      readFile(report, 'utf8').then((text) => {
        const [kb, user, sys] = text.trim().split('\n').pop()!.split(' ').map(Number);
        resolvePromise({ wallS, cpuS: user! + sys!, rssMB: (kb! * 1024) / 1e6 });
      }, reject);
    });
  });
}

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const b of createReadStream(file, { highWaterMark: 4 * MiB }) as AsyncIterable<Buffer>) hash.update(b);
  return hash.digest('hex');
}

/** Fill `file` with `size` bytes from `source` chunks, repeating them as needed. */
async function writeData(file: string, size: number, source: () => AsyncIterable<Buffer>): Promise<void> {
  let left = size;
  const out = createWriteStream(file);
  const gen = async function* (): AsyncGenerator<Buffer> {
    while (left > 0) {
      let any = false;
      for await (const b of source()) {
        if (b.length === 0) continue;
        any = true;
        const part = b.subarray(0, Math.min(left, b.length));
        left -= part.length;
        yield part;
        if (left === 0) return;
      }
      if (!any) throw new Error('no input data');
    }
  };
  await pipeline(Readable.from(gen()), out);
}

async function* randomSource(): AsyncGenerator<Buffer> {
  const { randomBytes } = await import('node:crypto');
  for (;;) yield randomBytes(4 * MiB);
}

/** The regular files under /usr/lib, in a stable order. */
async function* usrLibSource(): AsyncGenerator<Buffer> {
  const walk = async function* (dir: string): AsyncGenerator<string> {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    entries.sort((a, b) => a.name.localeCompare(b.name));
    for (const e of entries) {
      const path = join(dir, e.name);
      if (e.isDirectory()) yield* walk(path);
      else if (e.isFile()) yield path;
    }
  };
  for await (const path of walk('/usr/lib')) {
    try {
      yield await readFile(path);
    } catch {
      // unreadable file: skip
    }
  }
}

function fmt(n: number, digits = 0): string {
  return n.toFixed(digits).padStart(7);
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === '--child') return child(argv[1]!, argv[2]!, argv[3]!);
  const flag = (name: string, dflt: number): number => {
    const i = argv.indexOf(name);
    return i >= 0 ? Number(argv[i + 1]) : dflt;
  };
  const size = flag('--mib', 512) * MiB;
  const rounds = flag('--rounds', 1);
  if (!existsSync('/usr/bin/time')) throw new Error('/usr/bin/time is missing: apt-get install time');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(BENCH_DIR, { recursive: true });
  const dir = await mkdtemp(join(BENCH_DIR, 'lz4-'));
  try {
    compiled = await compile(join(dir, 'build'));
    const idle = await timed(nodeChild('idle')('-', '-'), dir);
    console.log(`node doing nothing: peak RSS ${idle.rssMB.toFixed(0)} MB`);
    const sets: Array<[string, () => AsyncIterable<Buffer>]> = [
      ['random', randomSource],
      ['/usr/lib files', usrLibSource],
    ];
    for (const [label, source] of sets) {
      const input = join(dir, 'input');
      await writeData(input, size, source);
      const want = await sha256(input);
      console.log(`\n${label}, ${size / MiB} MiB (MB/s of uncompressed bytes; median of ${rounds})`);
      console.log('tool           ratio  c MB/s c MB/cpu-s  c RSS MB   d MB/s d MB/cpu-s  d RSS MB');
      for (const tool of TOOLS) {
        const packed = join(dir, 'packed');
        const back = join(dir, 'back');
        const c: Run[] = [];
        const d: Run[] = [];
        for (let r = 0; r < rounds; r++) {
          c.push(await timed(tool.compress(input, packed), dir));
          d.push(await timed(tool.decompress(packed, back), dir));
        }
        const ratio = (await stat(packed)).size / size;
        const ok = (await sha256(back)) === want;
        const med = (runs: Run[], key: keyof Run): number => runs.map((x) => x[key]).sort((a, b) => a - b)[runs.length >> 1]!;
        const mb = size / 1e6;
        console.log(
          `${tool.name.padEnd(12)} ${ratio.toFixed(4)} ${fmt(mb / med(c, 'wallS'))} ${fmt(mb / med(c, 'cpuS'), 0).padStart(10)} ${fmt(med(c, 'rssMB')).padStart(9)}` +
            ` ${fmt(mb / med(d, 'wallS'))} ${fmt(mb / med(d, 'cpuS'), 0).padStart(10)} ${fmt(med(d, 'rssMB')).padStart(9)}${ok ? '' : '  OUTPUT DIFFERS'}`,
        );
        await rm(packed, { force: true });
        await rm(back, { force: true });
      }
      await rm(input, { force: true });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// The LZ4 worker pool is unref'd while idle: nothing keeps a finished child alive.
main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exitCode = 1;
});
