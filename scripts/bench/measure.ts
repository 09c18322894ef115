/**
 * Measuring one command: wall time (from spawn to exit, taken here) and the
 * peak RSS the kernel recorded for it (ru_maxrss via GNU time's %M, i.e.
 * the largest resident set of the process or of any descendant it waited
 * for). The OS measures every tool the same way, whether C or Node.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { commandLine } from './exec.js';

const GNU_TIME = '/usr/bin/time';

export interface Measurement {
  /** The command as run (without the time wrapper). */
  command: string;
  wallMs: number;
  peakRssBytes: number;
  stdout: string;
  stderr: string;
}

export async function measure(cmd: string, args: readonly string[], opts: { timeoutMs?: number; cwd?: string } = {}): Promise<Measurement> {
  if (!existsSync(GNU_TIME)) throw new Error(`${GNU_TIME} is missing: apt-get install time`);
  const command = commandLine(cmd, args);
  const dir = await mkdtemp(join(tmpdir(), 'virtnbd-measure-'));
  const rssFile = join(dir, 'rss');
  try {
    const { wallMs, stdout, stderr } = await new Promise<{ wallMs: number; stdout: string; stderr: string }>((resolve, reject) => {
      const started = process.hrtime.bigint();
      const child = spawn(GNU_TIME, ['-f', '%M', '-o', rssFile, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: opts.cwd });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 600_000);
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`cannot run \`${command}\`: ${e.message}`));
      });
      child.on('exit', () => {
        // Stop the clock at exit, not when the pipes close.
        const wallMs = Number(process.hrtime.bigint() - started) / 1e6;
        child.on('close', (code, signal) => {
          clearTimeout(timer);
          const stdout = Buffer.concat(out).toString('utf8');
          const stderr = Buffer.concat(err).toString('utf8');
          if (code === 0) resolve({ wallMs, stdout, stderr });
          else reject(new Error(`\`${command}\` ${signal ? `was killed by ${signal}` : `exited with code ${code}`}${stderr.trim() ? `: ${stderr.trim()}` : ''}`));
        });
      });
    });
    const kb = Number.parseInt((await readFile(rssFile, 'utf8')).trim().split('\n').pop() ?? '', 10);
    if (!Number.isFinite(kb)) throw new Error(`no peak RSS recorded for \`${command}\``);
    return { command, wallMs, peakRssBytes: kb * 1024, stdout, stderr };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}
