/**
 * Our virtnbdmap run as a user runs it: a child process from the sources
 * (test/helpers/cli.ts), which keeps serving until it is signalled. start
 * resolves once it says it is ready ("Press CTRL+C"), or rejects with its
 * log if it exits first; stop() sends SIGINT and resolves with the exit
 * code. A test's teardown kills it if the test did not stop it.
 *
 *     const m = await startMap(t, ['-r', '-f', files.join(','), '--socket', sock, '-L', log]);
 *     // ... nbdinfo 'nbd+unix:///sda?socket=...'
 *     t.is(await m.stop(), 0);
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cliCommand } from './cli.js';

export interface RunningMap {
  child: ChildProcess;
  /** Everything it wrote to stderr (its log) so far. */
  log(): string;
  /** SIGINT, then wait for the exit (SIGKILL after `timeoutMs`); the exit code. */
  stop(timeoutMs?: number): Promise<number | null>;
  /** Resolves with the exit code when it exits by itself. */
  exited: Promise<number | null>;
}

const READY = 'Press CTRL+C';

export async function startMap(t: { teardown(fn: () => void | Promise<void>): void }, args: readonly string[], opts: { readyTimeoutMs?: number } = {}): Promise<RunningMap> {
  const { command, args: argv, cwd } = cliCommand('virtnbdmap', args);
  const child = spawn(command, argv, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout.on('data', (b: Buffer) => (text += b.toString('utf8')));
  child.stderr.on('data', (b: Buffer) => (text += b.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 120_000);
  for (;;) {
    if (text.includes(READY)) break;
    if (child.exitCode !== null || child.signalCode !== null) {
      await exited;
      throw new Error(`virtnbdmap ${args.join(' ')} exited with ${child.exitCode ?? child.signalCode} before it was ready:\n${text}`);
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`virtnbdmap ${args.join(' ')} was not ready in time:\n${text}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    child,
    log: () => text,
    exited,
    async stop(timeoutMs = 60_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}
