/**
 * The compressible workload: a 4 GiB qcow2 whose data is a tar of /usr/lib
 * (shared libraries, Python, Perl, locales...: what real guest disks hold,
 * unlike the bench disk's random bytes), written from offset 0 and cut at
 * 1 GiB so a round takes about as long as on the bench disk.
 *
 * Deterministic enough: GNU tar with sorted names, fixed mtime and owners,
 * so the bytes only change when the host's packages do. Built once under
 * BENCH_DIR (usrlib.qcow2) and reused while its manifest matches the recipe;
 * the manifest records how many tar bytes were written.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BENCH_DIR, mapData, type BenchDisk } from './disk.js';
import { run } from './exec.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** Change `version` whenever the contents change, so the cache rebuilds. */
export const TAR_RECIPE = {
  version: 1,
  virtualSize: 4 * GiB,
  source: '/usr/lib',
  maxBytes: 1 * GiB,
  tar: ['--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '--format=gnu'],
} as const;

interface Manifest {
  recipe: typeof TAR_RECIPE;
  tarBytes: number;
  dataBytes: number;
  dataExtents: number;
}

/** Write the tar stream of the source into `raw` from offset 0, up to maxBytes; returns bytes written. */
async function writeTar(raw: string): Promise<number> {
  const fh = await open(raw, 'w');
  const tar = spawn('tar', ['-cf', '-', ...TAR_RECIPE.tar, '-C', '/', TAR_RECIPE.source.slice(1)], { stdio: ['ignore', 'pipe', 'ignore'] });
  let written = 0;
  try {
    await fh.truncate(TAR_RECIPE.virtualSize);
    for await (const chunk of tar.stdout as AsyncIterable<Buffer>) {
      const piece = chunk.subarray(0, TAR_RECIPE.maxBytes - written);
      await fh.write(piece, 0, piece.length, written);
      written += piece.length;
      if (written >= TAR_RECIPE.maxBytes) break;
    }
  } finally {
    // Cut at maxBytes: tar is stopped, not waited for (its exit status says nothing we need).
    tar.kill('SIGKILL');
    await fh.close();
  }
  return written;
}

/** The compressible disk, built if missing or made by another recipe. */
export async function tarDisk(log: (msg: string) => void = () => {}): Promise<BenchDisk & { tarBytes: number }> {
  await mkdir(BENCH_DIR, { recursive: true });
  const path = join(BENCH_DIR, 'usrlib.qcow2');
  const manifestPath = join(BENCH_DIR, 'usrlib.json');
  if (existsSync(path) && existsSync(manifestPath)) {
    try {
      const m = JSON.parse(await readFile(manifestPath, 'utf8')) as Manifest;
      if (JSON.stringify(m.recipe) === JSON.stringify(TAR_RECIPE)) {
        return { path, virtualSize: TAR_RECIPE.virtualSize, dataBytes: m.dataBytes, dataExtents: m.dataExtents, tarBytes: m.tarBytes, built: false };
      }
    } catch {
      /* unreadable manifest: rebuild */
    }
  }
  log(`building the compressible disk ${path} (tar of ${TAR_RECIPE.source}, first ${TAR_RECIPE.maxBytes / GiB} GiB; cached for later runs)`);
  const raw = join(BENCH_DIR, 'usrlib.raw.partial');
  const partial = `${path}.partial`;
  await rm(manifestPath, { force: true });
  try {
    const tarBytes = await writeTar(raw);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, partial], { timeoutMs: 600_000 });
    const { dataBytes, dataExtents } = await mapData(partial);
    await rename(partial, path);
    const manifest: Manifest = { recipe: TAR_RECIPE, tarBytes, dataBytes, dataExtents };
    await writeFile(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
    return { path, virtualSize: TAR_RECIPE.virtualSize, dataBytes, dataExtents, tarBytes, built: true };
  } finally {
    await rm(raw, { force: true });
    await rm(partial, { force: true });
  }
}
