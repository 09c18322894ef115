/**
 * Running host commands for tests: one place that turns a failed command
 * into an error naming the command, its exit status and its stderr, so a
 * failing test says what went wrong on the host, not just "exit 1".
 */
import { spawn, spawnSync } from 'node:child_process';

export interface RunOptions {
  /** Bytes written to the command's stdin (stdin is closed after). */
  input?: string | Buffer;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Kill the command (SIGKILL) after this long; default 120 s, so nothing hangs a test run. */
  timeoutMs?: number;
  /** Exit codes that count as success (default [0]). */
  okCodes?: number[];
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface RunBytesResult {
  stdout: Buffer;
  stderr: string;
  exitCode: number;
}

/** A command exited with an unexpected status, was killed, or could not start. */
export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number | null,
    readonly signal: string | null,
    readonly stdout: string,
    readonly stderr: string,
    cause?: Error,
  ) {
    const how = cause
      ? `could not run: ${cause.message}`
      : signal
        ? `was killed by ${signal}`
        : `exited with code ${exitCode}`;
    const err = stderr.trim();
    const out = stdout.trim();
    super(
      `command \`${command}\` ${how}` +
        (err ? `\nstderr: ${clip(err)}` : '') +
        (!err && out ? `\nstdout: ${clip(out)}` : ''),
      cause ? { cause } : undefined,
    );
    this.name = 'CommandError';
  }
}

const DEFAULT_TIMEOUT_MS = 120_000;

/** Quote a command line for messages and logs (not for a shell). */
export function commandLine(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/** Run a command; resolve with its text output, or reject with a CommandError. */
export async function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await runBytes(cmd, args, opts);
  return { stdout: r.stdout.toString('utf8'), stderr: r.stderr, exitCode: r.exitCode };
}

/** Run a command; resolve with its stdout as bytes, or reject with a CommandError. */
export function runBytes(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunBytesResult> {
  const line = commandLine(cmd, args);
  const okCodes = opts.okCodes ?? [0];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let failed: Error | undefined;
    const timer = setTimeout(() => {
      failed = new Error(`timed out after ${opts.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`);
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      failed ??= e;
    });
    // A command that exits without reading its stdin must not crash us with EPIPE.
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out);
      const stderr = Buffer.concat(err).toString('utf8');
      if (failed || code === null || !okCodes.includes(code)) {
        reject(new CommandError(line, code, signal, stdout.toString('utf8'), stderr, failed));
      } else {
        resolve({ stdout, stderr, exitCode: code });
      }
    });
  });
}

/**
 * Synchronous variant for process-exit handlers, where no promise can run.
 * Never throws: returns whether the command succeeded.
 */
export function runSyncQuiet(cmd: string, args: readonly string[], timeoutMs = 30_000): boolean {
  const r = spawnSync(cmd, args, { stdio: 'ignore', timeout: timeoutMs });
  return r.status === 0;
}

function clip(s: string, max = 4000): string {
  return s.length > max ? `${s.slice(0, max)}... (${s.length - max} more characters)` : s;
}
