/**
 * Our CLIs as installed run on dist/bundle/: build it (tsc, then the bundle: npm run build) once per
 * bench process, before the first bench that times them, so every bench in
 * one `npm run bench` measures the same build.
 */
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './exec.js';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

let built: Promise<void> | undefined;

export function buildDist(log: (msg: string) => void): Promise<void> {
  if (!built) {
    log('building dist/ (npm run build)');
    built = run(process.execPath, [join(REPO, 'node_modules/typescript/bin/tsc'), '-p', join(REPO, 'tsconfig.json')], { cwd: REPO, timeoutMs: 600_000 })
      .then(() => run(process.execPath, [join(REPO, 'scripts/bundle.mjs')], { cwd: REPO, timeoutMs: 600_000 }))
      .then(() => undefined);
    built.catch(() => (built = undefined));
  }
  return built;
}
