import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import test from 'ava';
import { createLogger } from '../lib/cli/logger.js';

function terminal(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  const parts: Buffer[] = [];
  stream.on('data', (b: Buffer) => parts.push(b));
  return { stream, text: () => Buffer.concat(parts).toString() };
}

test('the log file gets the whole run, lines before it was attached included; warnings are counted', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vnbd-log-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const term = terminal();
  const log = createLogger({ stream: term.stream, color: false });
  log.info('connecting');
  log.debug('details');
  await log.attachFile(join(dir, 'backup.full.log'));
  log.warn('raw disk vdb skipped');
  log.error('it failed');
  await log.close();
  const file = await readFile(join(dir, 'backup.full.log'), 'utf8');
  t.regex(file, /INFO connecting\n.*DEBUG details\n.*WARNING raw disk vdb skipped\n.*ERROR it failed\n$/);
  t.is(log.warnings, 1);
  t.is(log.errors, 1);
  t.notRegex(term.text(), /details/, 'debug stays off the terminal without --verbose');
  t.regex(term.text(), /^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] INFO connecting$/m);
});

test('--quiet shows warnings and errors only; --verbose shows debug', (t) => {
  const quiet = terminal();
  const q = createLogger({ stream: quiet.stream, quiet: true, color: false });
  q.info('hidden');
  q.warn('shown');
  t.notRegex(quiet.text(), /hidden/);
  t.regex(quiet.text(), /WARNING shown/);
  const verbose = terminal();
  createLogger({ stream: verbose.stream, verbose: true, color: false }).debug('visible');
  t.regex(verbose.text(), /DEBUG visible/);
});
