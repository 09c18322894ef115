/**
 * Runs one of our CLIs as if on a separate backup host: inside a new UTS
 * namespace whose host name is `backup-host`, so the host name libvirtd
 * reports differs from ours and the command really takes its remote path
 * (NBD over TCP, files and qemu-nbd over ssh through test/helpers/sshd.ts).
 * Everything else (file system, network) is shared, which is what lets one
 * machine play both parts. Never throws for a non-zero exit. `unshare` and
 * `sh` exec the command, so the child's pid is the CLI's (signals reach it).
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { cliCommand, type CliName, type CliResult } from './cli.js';

/** tsx resolved from here, so the CLI can run in any working directory. */
const TSX = import.meta.resolve('tsx');

export const BACKUP_HOST_NAME = 'backup-host';

export interface RemoteRunOptions {
  cwd?: string;
  timeoutMs?: number;
  /** A file whose bytes are the command's stdin (default none). */
  stdinFile?: string;
  /** Called with the stderr seen so far, and the child (to signal it when a line shows up). */
  onStderr?: (stderr: string, child: import('node:child_process').ChildProcess) => void;
}

export function runAsBackupHost(name: CliName, args: readonly string[], opts: RemoteRunOptions = {}): Promise<CliResult> {
  const { command, args: argv, cwd } = cliCommand(name, args);
  const resolved = argv.map((a) => (a === 'tsx' ? TSX : a));
  const script = `hostname ${BACKUP_HOST_NAME} && exec "$@"`;
  return new Promise((resolve, reject) => {
    const stdin = opts.stdinFile !== undefined ? openSync(opts.stdinFile, 'r') : 'ignore';
    const child = spawn('unshare', ['--uts', 'sh', '-c', script, 'sh', command, ...resolved], { cwd: opts.cwd ?? cwd, stdio: [stdin, 'pipe', 'pipe'] });
    // The child has its own copy of the descriptor now.
    if (typeof stdin === 'number') closeSync(stdin);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 240_000);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => {
      err.push(b);
      opts.onStderr?.(Buffer.concat(err).toString('utf8'), child);
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ exitCode: code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}
