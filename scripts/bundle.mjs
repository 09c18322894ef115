/**
 * Bundle each command (and the LZ4 worker) into one file under dist/bundle/
 * with esbuild, after tsc built dist/. Why: loading ~170 ES modules one by
 * one cost a command ~0.25 s before it did anything (resolving, reading and
 * compiling each file), more than libvirt takes to start a backup job.
 * The worker sits beside the chunks, where poolWorker looks for it
 * (`./worker.js`); archiver and unzipper stay outside, loaded only when a
 * zip is written or read.
 */
import { build } from 'esbuild';
import { rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const outdir = join(root, 'dist/bundle');
await rm(outdir, { recursive: true, force: true });
await build({
  entryPoints: {
    virtnbdbackup: join(root, 'dist/lib/cli/virtnbdbackup.js'),
    virtnbdrestore: join(root, 'dist/lib/cli/virtnbdrestore.js'),
    virtnbdmap: join(root, 'dist/lib/cli/virtnbdmap.js'),
    worker: join(root, 'dist/lib/lz4/worker.js'),
  },
  outdir,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external: ['archiver', 'unzipper'],
  chunkNames: 'chunk-[hash]',
  logLevel: 'warning',
});
