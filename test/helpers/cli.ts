/**
 * Runs virtnbd's command-line tools as a user would, in a child process,
 * straight from the TypeScript sources (`node --import tsx`, no build).
 * Gives stdout, stderr and the exit code; never throws for a non-zero exit
 * (tests assert on it), but kills the command after a timeout so nothing hangs.
 *
 *     const r = await runCli('virtnbdrestore', ['-i', dir, '-o', out, '-n']);
 *     t.is(r.exitCode, 0, r.stderr);
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createReadStream } from 'node:fs';

export type CliName = 'virtnbdbackup' | 'virtnbdrestore' | 'virtnbdmap';

const ENTRY = fileURLToPath(new URL('./cli-main.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface CliOptions {
  /** Bytes for stdin, or a file whose bytes are piped to stdin. */
  input?: Buffer | string | { file: string };
  /** Where stdout goes: collected (default) or a file. */
  stdoutFile?: string;
  env?: NodeJS.ProcessEnv;
  /** Kill (SIGKILL) after this long; default 240 s. */
  timeoutMs?: number;
  /** Called once the process is spawned (to signal it, for example). */
  onSpawn?: (child: ChildProcess) => void;
}

export interface CliResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The argv to spawn a CLI from source, for tests that need the raw command line. */
export function cliCommand(name: CliName, args: readonly string[]): { command: string; args: string[]; cwd: string } {
  return { command: process.execPath, args: ['--import', 'tsx', ENTRY, name, ...args], cwd: ROOT };
}

export async function runCli(name: CliName, args: readonly string[], opts: CliOptions = {}): Promise<CliResult> {
  const { command, args: argv, cwd } = cliCommand(name, args);
  const { createWriteStream } = await import('node:fs');
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { cwd, env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 240_000);
    if (opts.stdoutFile) child.stdout.pipe(createWriteStream(opts.stdoutFile));
    else child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => {});
    const input = opts.input;
    if (input === undefined) child.stdin.end();
    else if (typeof input === 'object' && !Buffer.isBuffer(input)) {
      const source = createReadStream(input.file);
      source.on('error', (e) => child.stdin.destroy(e));
      source.pipe(child.stdin);
    } else child.stdin.end(input);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ exitCode: code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
    opts.onSpawn?.(child);
  });
}
