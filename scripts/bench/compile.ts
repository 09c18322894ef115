/**
 * A bench entry compiled with tsc (with what it imports) into `out`, to be
 * run by plain node: tsx's loader would add ~30 MB to the measured RSS.
 */
import { symlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './exec.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** Compile `entry` (a path in the repository) into `out`; returns the emitted .js file. */
export async function compileEntry(entry: string, out: string): Promise<string> {
  const tsc = join(REPO, 'node_modules/typescript/bin/tsc');
  // prettier-ignore
  await run(process.execPath, [
    tsc, '--outDir', out, '--rootDir', REPO, '--module', 'nodenext', '--moduleResolution', 'nodenext',
    '--target', 'es2022', '--strict', '--noImplicitOverride', '--types', 'node', '--skipLibCheck', entry,
  ], { cwd: REPO, timeoutMs: 600_000 });
  // The emitted files are ES modules; outside the repository node needs telling, and the packages.
  await writeFile(join(out, 'package.json'), '{"type":"module"}\n');
  await symlink(join(REPO, 'node_modules'), join(out, 'node_modules'));
  return join(out, dirname(relative(REPO, entry)), basename(entry).replace(/\.ts$/, '.js'));
}
