/**
 * The benchmark disk of DESIGN.md ("Performance references"): a 4 GiB qcow2
 * holding ~1.4 GiB of data: 1 GiB of random bytes, 256 MiB of base64 text
 * and 2000 random 64 KiB blocks scattered at seeded positions. The same
 * recipe with a larger virtual size (16 GiB: the same data bytes, the
 * blocks scattered over the whole disk) shows whether memory grows with the
 * disk rather than with the data.
 *
 * Built once under /var/tmp/virtnbd-bench/ (outside the repository: it is
 * big; bench.qcow2, bench16.qcow2 for 16 GiB) and reused while its manifest
 * matches the recipe below; rebuilt when missing. Contents are
 * deterministic (AES-CTR keystream with a fixed key, positions from a
 * seeded PRNG), so every run reads the same bytes.
 * Built as a sparse raw file, then `qemu-img convert -O qcow2`, which leaves
 * the holes unallocated.
 */
import { createCipheriv } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from './exec.js';

export const BENCH_DIR = process.env.VIRTNBD_BENCH_DIR ?? '/var/tmp/virtnbd-bench';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** The recipe for a virtual size; change `version` whenever the contents change, so caches rebuild. */
export function recipe(virtualSize: number) {
  // Key order matters: the manifest compares the recipe as JSON.
  return {
    version: 1,
    virtualSize,
    random: { offset: 512 * MiB, length: 1 * GiB },
    text: { offset: 2 * GiB, length: 256 * MiB },
    scattered: { count: 2000, blockSize: 64 * KiB, seed: 0x5eed },
  } as const;
}

export type Recipe = ReturnType<typeof recipe>;

/** The bench disk of DESIGN.md. */
export const RECIPE = recipe(4 * GiB);

export interface BenchDisk {
  /** The qcow2 image. */
  path: string;
  virtualSize: number;
  /** Bytes of data (allocated, non-zero) the image holds. */
  dataBytes: number;
  /** Allocated extents as `qemu-img map` reports them. */
  dataExtents: number;
  /** Whether this call built it (false: reused from the cache). */
  built: boolean;
}

interface Manifest {
  recipe: Recipe;
  dataBytes: number;
  dataExtents: number;
}

/** Deterministic pseudo-random bytes: AES-128-CTR keystream (fast, seeded by `label`). */
class Keystream {
  private readonly cipher;
  private readonly zeros = Buffer.alloc(8 * MiB);

  constructor(label: string) {
    const key = Buffer.alloc(16);
    key.write(label.padEnd(16, '.').slice(0, 16), 'latin1');
    this.cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  }

  /** The next n bytes (n <= 8 MiB). */
  next(n: number): Buffer {
    return this.cipher.update(this.zeros.subarray(0, n));
  }
}

/** mulberry32: a small seeded PRNG for block positions. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Seeded 64 KiB-aligned positions outside the random and text regions, no two the same. */
export function scatteredOffsets(r: Recipe = RECIPE): number[] {
  const { count, blockSize, seed } = r.scattered;
  const slots = r.virtualSize / blockSize;
  const inRegion = (off: number): boolean =>
    [r.random, r.text].some((r) => off + blockSize > r.offset && off < r.offset + r.length);
  const rand = prng(seed);
  const taken = new Set<number>();
  while (taken.size < count) {
    const off = Math.floor(rand() * slots) * blockSize;
    if (!inRegion(off)) taken.add(off);
  }
  return [...taken].sort((a, b) => a - b);
}

/** 256 MiB of base64 text: 76-character lines, like `base64` prints. */
function* textPieces(total: number): Generator<Buffer> {
  const ks = new Keystream('virtnbd-text');
  const lineBytes = 57; // 57 bytes -> 76 base64 characters
  const linesPerPiece = 64 * 1024;
  let left = total;
  while (left > 0) {
    const raw = ks.next(lineBytes * linesPerPiece);
    const b64 = raw.toString('base64');
    const out = Buffer.allocUnsafe(linesPerPiece * 77);
    for (let i = 0; i < linesPerPiece; i++) {
      out.write(b64.slice(i * 76, i * 76 + 76), i * 77, 'latin1');
      out[i * 77 + 76] = 0x0a;
    }
    const piece = out.subarray(0, Math.min(out.length, left));
    left -= piece.length;
    yield piece;
  }
}

async function buildRaw(rawPath: string, r: Recipe): Promise<void> {
  const fh = await open(rawPath, 'w');
  try {
    await fh.truncate(r.virtualSize);
    const ks = new Keystream('virtnbd-random');
    for (let at = 0; at < r.random.length; at += 8 * MiB) {
      const n = Math.min(8 * MiB, r.random.length - at);
      await fh.write(ks.next(n), 0, n, r.random.offset + at);
    }
    let at = r.text.offset;
    for (const piece of textPieces(r.text.length)) {
      await fh.write(piece, 0, piece.length, at);
      at += piece.length;
    }
    const blocks = new Keystream('virtnbd-blocks');
    for (const off of scatteredOffsets(r)) {
      await fh.write(blocks.next(r.scattered.blockSize), 0, r.scattered.blockSize, off);
    }
  } finally {
    await fh.close();
  }
}

/** Data bytes and extents of an image, from `qemu-img map`. */
export async function mapData(path: string): Promise<{ dataBytes: number; dataExtents: number }> {
  const r = await run('qemu-img', ['map', '--output=json', '-f', 'qcow2', path]);
  const map = JSON.parse(r.stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
  let dataBytes = 0;
  let dataExtents = 0;
  for (const e of map) {
    if (e.data && !e.zero) {
      dataBytes += e.length;
      dataExtents++;
    }
  }
  return { dataBytes, dataExtents };
}

function expectedDataBytes(r: Recipe): number {
  return r.random.length + r.text.length + r.scattered.count * r.scattered.blockSize;
}

/** Cache name of a bench disk: `bench` for DESIGN.md's 4 GiB, `bench16` for 16 GiB. */
export function benchDiskName(virtualSize: number): string {
  return virtualSize === RECIPE.virtualSize ? 'bench' : `bench${virtualSize / GiB}`;
}

/** The bench disk (4 GiB unless told), built if missing or made by another recipe. */
export async function benchDisk(log: (msg: string) => void = () => {}, virtualSize: number = RECIPE.virtualSize): Promise<BenchDisk> {
  const r = recipe(virtualSize);
  await mkdir(BENCH_DIR, { recursive: true });
  const name = benchDiskName(virtualSize);
  const path = join(BENCH_DIR, `${name}.qcow2`);
  const manifestPath = join(BENCH_DIR, `${name}.json`);
  if (existsSync(path) && existsSync(manifestPath)) {
    try {
      const m = JSON.parse(await readFile(manifestPath, 'utf8')) as Manifest;
      if (JSON.stringify(m.recipe) === JSON.stringify(r)) {
        return { path, virtualSize, dataBytes: m.dataBytes, dataExtents: m.dataExtents, built: false };
      }
    } catch {
      /* unreadable manifest: rebuild */
    }
  }
  log(`building the bench disk ${path} (${virtualSize / GiB} GiB qcow2, ~1.4 GiB data; cached for later runs)`);
  const raw = join(BENCH_DIR, `${name}.raw.partial`);
  const partial = `${path}.partial`;
  await rm(manifestPath, { force: true });
  try {
    await buildRaw(raw, r);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, partial], { timeoutMs: 600_000 });
    const { dataBytes, dataExtents } = await mapData(partial);
    if (dataBytes !== expectedDataBytes(r)) {
      throw new Error(`bench disk holds ${dataBytes} data bytes, expected ${expectedDataBytes(r)}`);
    }
    await rename(partial, path);
    const manifest: Manifest = { recipe: r, dataBytes, dataExtents };
    await writeFile(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
    return { path, virtualSize, dataBytes, dataExtents, built: true };
  } finally {
    await rm(raw, { force: true });
    await rm(partial, { force: true });
  }
}
