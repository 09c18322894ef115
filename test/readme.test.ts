/**
 * README.md's example of using the stages from code must stay true: the
 * code block is run as it is written (importing 'virtnbd' from this
 * checkout) and must print what the README says it prints.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import test from 'ava';

const root = fileURLToPath(new URL('..', import.meta.url));

async function example(marker: string): Promise<string> {
  const readme = await readFile(join(root, 'README.md'), 'utf8');
  const at = readme.indexOf(`<!-- example:${marker} -->`);
  if (at < 0) throw new Error(`README.md has no example ${marker}`);
  const block = /```ts\n([\s\S]*?)```/.exec(readme.slice(at));
  if (!block) throw new Error(`README.md example ${marker} has no ts block`);
  return block[1]!;
}

async function runExample(t: { teardown(fn: () => Promise<void>): void }, marker: string, args: string[] = []) {
  const code = (await example(marker)).replace(/from 'virtnbd'/g, `from '${pathToFileURL(join(root, 'lib/index.ts')).href}'`);
  const dir = await mkdtemp(join(tmpdir(), 'vnbd-readme-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'example.mts'), code);
  return promisify(execFile)(process.execPath, ['--import', import.meta.resolve('tsx'), 'example.mts', ...args], { cwd: dir });
}

test('the README example of the stages runs and prints what the README says', async (t) => {
  const { stdout } = await runExample(t, 'stages');
  const lines = stdout.trim().split('\n');
  t.regex(lines[0]!, /^vda\.full\.data written, adler32 \d+$/);
  t.deepEqual(lines.slice(1), [
    'data at 0, 1048576 bytes',
    'zero at 1048576, 7340032 bytes',
    'disk vda, 8388608 bytes',
  ]);
});

test('the README example of the libvirt client answers with libvirt\'s own message for a missing domain', async (t) => {
  const missing = `vnbd-readme-missing-${process.pid}`;
  const error = await t.throwsAsync(runExample(t, 'libvirt', [missing]));
  const failed = error as Error & { code?: number; stderr?: string };
  t.is(failed.code, 1);
  t.is(failed.stderr?.trim(), `Domain not found: no domain with matching name '${missing}'`);
});
