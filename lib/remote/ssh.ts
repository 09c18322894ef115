/**
 * The hypervisor of a remote backup or restore, reached with the system
 * `ssh` binary (nothing to install on either side): run a command there
 * and collect its output, stream a file's bytes from or to it. ssh always
 * runs in BatchMode (a missing key or an unknown host key fails at once
 * instead of prompting), and every failure is an SshError naming the host,
 * the command and what ssh (or the command) said.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';

/** Where and how to log in. */
export interface SshTarget {
  host: string;
  user?: string;
  port?: number;
  /** `-i`: private key file. */
  privateKey?: string;
  /** `UserKnownHostsFile`. */
  knownHosts?: string;
  /** How unknown host keys are treated: refused (normal), added (auto), or ignored. */
  hostKeyCheck?: 'normal' | 'auto' | 'ignore';
}

/** ssh could not log in, or the command run there failed. */
export class SshError extends Error {
  override readonly name = 'SshError';

  constructor(
    message: string,
    readonly exitCode: number | null,
    readonly stderr: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** One shell word: the remote login shell gets a command line, not an argv. */
export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

export function shellCommand(argv: readonly string[]): string {
  return argv.map(shellQuote).join(' ');
}

/** ssh's own failures exit 255; anything else is the remote command's status. */
const SSH_FAILED = 255;
const STDERR_KEEP = 8192;

export interface RunOptions {
  /** Bytes for the command's stdin (none: stdin is empty). */
  input?: Buffer | string | Readable;
  /** Refuse more output than this (default 16 MiB): run() holds it in memory. */
  maxOutput?: number;
  /** Exit codes that are not failures (default [0]). */
  okCodes?: readonly number[];
}

export interface RunResult {
  stdout: Buffer;
  code: number;
}

export class SshHost {
  constructor(readonly target: SshTarget) {}

  /** `user@host:port`, for messages. */
  get description(): string {
    const t = this.target;
    return `${t.user ? `${t.user}@` : ''}${t.host}${t.port !== undefined ? `:${t.port}` : ''}`;
  }

  /** The ssh command line that runs `command` (one shell line) on the host. */
  sshArgs(command: string): string[] {
    const t = this.target;
    const args = ['-T', '-e', 'none', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=30', '-o', 'ServerAliveInterval=15'];
    if (t.port !== undefined) args.push('-p', String(t.port));
    if (t.user !== undefined) args.push('-l', t.user);
    if (t.privateKey !== undefined) args.push('-i', t.privateKey);
    // ssh splits option values at blanks unless double-quoted.
    if (t.knownHosts !== undefined) args.push('-o', `UserKnownHostsFile="${t.knownHosts}"`);
    if (t.hostKeyCheck === 'ignore') args.push('-o', 'StrictHostKeyChecking=no');
    else if (t.hostKeyCheck === 'auto') args.push('-o', 'StrictHostKeyChecking=accept-new');
    args.push('--', t.host, command);
    return args;
  }

  /** Start `argv` on the host; the caller owns the child (stdio all pipes). */
  spawn(argv: readonly string[] | string): ChildProcess {
    const command = typeof argv === 'string' ? argv : shellCommand(argv);
    return spawn('ssh', this.sshArgs(command), { stdio: ['pipe', 'pipe', 'pipe'] });
  }

  /** The message for a failed command: ssh's own failure, or the command's. */
  failure(command: string, code: number | null, stderr: string, cause?: Error): SshError {
    const said = stderr.trim();
    if (cause) return new SshError(`Cannot run ssh to ${this.description}: ${cause.message}`, null, said, { cause });
    if (code === SSH_FAILED || code === null) {
      return new SshError(`ssh to ${this.description} failed${code === null ? ' (killed)' : ''}: ${said || 'no message'} (running: ${command})`, code, said);
    }
    return new SshError(`${command} failed on ${this.description} (exit ${code})${said ? `: ${said}` : ''}`, code, said);
  }

  /** Run `argv` (or a shell line) there to completion; its stdout, or an SshError. */
  run(argv: readonly string[] | string, options: RunOptions = {}): Promise<RunResult> {
    const command = typeof argv === 'string' ? argv : shellCommand(argv);
    const max = options.maxOutput ?? 16 * 1024 * 1024;
    const ok = options.okCodes ?? [0];
    return new Promise((resolve, reject) => {
      const child = this.spawn(command);
      const out: Buffer[] = [];
      let size = 0;
      let stderr = '';
      let tooMuch = false;
      let spawnError: Error | undefined;
      /** A failed source must fail the command: else the far side would take the bytes so far for the whole. */
      let inputError: Error | undefined;
      child.stdout!.on('data', (b: Buffer) => {
        size += b.length;
        if (size > max) {
          if (!tooMuch) child.kill('SIGKILL');
          tooMuch = true;
          return;
        }
        out.push(b);
      });
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (s: string) => {
        stderr = (stderr + s).slice(-STDERR_KEEP);
      });
      child.stdin!.on('error', () => {});
      child.once('error', (e) => {
        spawnError = e;
      });
      child.once('close', (code) => {
        // A source the command did not read to its end would stay open: release it.
        const input = options.input;
        if (input !== undefined && typeof input !== 'string' && !Buffer.isBuffer(input) && !input.readableEnded) input.destroy();
        if (spawnError) return reject(this.failure(command, null, stderr, spawnError));
        if (inputError) return reject(inputError);
        if (tooMuch) return reject(new SshError(`${command} on ${this.description} printed more than ${max} bytes`, code, stderr));
        if (code === null || !ok.includes(code)) return reject(this.failure(command, code, stderr));
        resolve({ stdout: Buffer.concat(out), code });
      });
      const input = options.input;
      if (input === undefined) child.stdin!.end();
      else if (typeof input === 'string' || Buffer.isBuffer(input)) child.stdin!.end(input);
      else {
        input.once('error', (e) => {
          inputError = e;
          child.kill('SIGKILL');
        });
        input.pipe(child.stdin!);
      }
    });
  }

  /** Whether `path` exists there (any kind of file). */
  async exists(path: string): Promise<boolean> {
    return (await this.run(['test', '-e', path], { okCodes: [0, 1] })).code === 0;
  }
}
