/**
 * Running our virtnbdbackup against test VMs and looking at what it left:
 * the command (from source, in a child process, in any working
 * directory), the backup set rebuilt into a raw image in chain order, the
 * ranges an incremental file holds, and the checks that a run left no job,
 * socket, scratch file or partial file behind.
 */
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { parseDataFileName } from '../../lib/format/naming.js';
import { applyStream } from './apply-stream.js';
import { cliCommand, type CliResult } from './cli.js';
import { run } from './exec.js';
import type { TestHost } from './host.js';
import { listFiles } from './peer.js';
import { peekStream } from './stream-peek.js';
import type { TestVm } from './vm.js';

/** tsx resolved from here, so the CLI can run in any working directory. */
const TSX = import.meta.resolve('tsx');

export interface BackupRunOptions {
  /** Working directory (default: the host's scratch dir). `-o -` leaves its checkpoint files here. */
  cwd?: string;
  /** Send stdout to this file (the zip of `-o -`). */
  stdoutFile?: string;
  /** Close our end of stdout after this many bytes, as a reader that goes away would. */
  stdoutLimit?: number;
  timeoutMs?: number;
  /** Called with the child once spawned. */
  onSpawn?: (child: import('node:child_process').ChildProcess) => void;
}

/** `virtnbdbackup ARGS` from source; resolves with its exit code and output, never throws for a failed run. */
export function runBackup(host: TestHost, args: readonly string[], opts: BackupRunOptions = {}): Promise<CliResult> {
  const { command, args: argv } = cliCommand('virtnbdbackup', args);
  const resolved = argv.map((a) => (a === 'tsx' ? TSX : a));
  return new Promise((resolve, reject) => {
    const child = spawn(command, resolved, { cwd: opts.cwd ?? host.dir, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 180_000);
    let seen = 0;
    if (opts.stdoutFile) child.stdout.pipe(createWriteStream(opts.stdoutFile));
    else
      child.stdout.on('data', (b: Buffer) => {
        seen += b.length;
        if (opts.stdoutLimit !== undefined && seen >= opts.stdoutLimit) child.stdout.destroy();
        else out.push(b);
      });
    child.stderr.on('data', (b: Buffer) => err.push(b));
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

/** Where a test's runs put the NBD socket and scratch files. */
export interface JobPaths {
  socket: string;
  scratchDir: string;
}

/** `-f SOCKET --scratchdir DIR -n` plus the given arguments. */
export function jobArgs(paths: JobPaths, ...args: string[]): string[] {
  return [...args, '-f', paths.socket, '--scratchdir', paths.scratchDir, '-n'];
}

/** No job on the domain, no socket, no scratch file, no partial file in `dirs`. */
export async function assertNothingLeft(t: ExecutionContext, vm: TestVm | undefined, paths: JobPaths, dirs: readonly string[]): Promise<void> {
  if (vm && (await vm.isActive())) {
    const info = await vm.jobInfo();
    t.is(info['Job type'], 'None', `no job left on ${vm.name}`);
  }
  t.false(existsSync(paths.socket), `socket ${paths.socket} removed`);
  const scratch = existsSync(paths.scratchDir) ? await readdir(paths.scratchDir) : [];
  t.deepEqual(
    scratch.filter((f) => f.startsWith('backup.')),
    [],
    'no scratch file left',
  );
  for (const dir of dirs) {
    if (!existsSync(dir)) continue;
    t.deepEqual(
      (await listFiles(dir)).filter((f) => f.endsWith('.partial')),
      [],
      `no partial file in ${dir}`,
    );
  }
}

/** Data files of a set in restore order: full/copy, then inc by checkpoint number, then diff by time. */
export async function chainOrder(dir: string): Promise<string[]> {
  const files = (await readdir(dir)).filter((f) => parseDataFileName(f) !== undefined);
  const rank = (f: string): [number, number] => {
    const p = parseDataFileName(f)!;
    if (p.level === 'full' || p.level === 'copy') return [0, 0];
    if (p.level === 'inc') return [1, Number(/\.(\d+)$/.exec(p.ident!)![1])];
    return [2, Number(p.ident)];
  };
  return files.sort((a, b) => {
    const [ra, na] = rank(a);
    const [rb, nb] = rank(b);
    return ra - rb || na - nb;
  });
}

/** Rebuild disk `disk` of a stream set into a raw file, in chain order, with our parser. */
export async function rebuildDisk(dir: string, disk: string, raw: string): Promise<string[]> {
  const files = (await chainOrder(dir)).filter((f) => parseDataFileName(f)!.disk === disk);
  for (const f of files) await applyStream(join(dir, f), raw);
  return files;
}

export interface Range {
  offset: number;
  length: number;
}

/** The ranges the data frames of a stream file cover, adjacent ones merged. */
export async function dataFrameRanges(file: string): Promise<Range[]> {
  const peek = peekStream(await readFile(file));
  const ranges: Range[] = [];
  for (const f of peek.frames) {
    if (f.kind !== 'data') continue;
    const last = ranges[ranges.length - 1];
    if (last && last.offset + last.length === f.offset) last.length += f.length;
    else ranges.push({ offset: f.offset, length: f.length });
  }
  return ranges;
}

/** The meta frame's JSON of a stream file. */
export async function streamMeta(file: string): Promise<Record<string, unknown>> {
  return peekStream(await readFile(file)).meta;
}

/**
 * Make QEMU write a running VM's disk out to its image file (qemu-io
 * `flush` in the VM), so qemu-img reading the file with -U sees the
 * guest's writes: QEMU keeps qcow2 metadata in memory until a flush.
 */
export async function flushDisk(vm: TestVm, target: string): Promise<void> {
  const out = await vm.hmp(`qemu-io -d ${await vm.qomPath(target)} "flush"`);
  if (out.trim()) throw new Error(`flush of disk ${target} of ${vm.name} failed: ${out.trim()}`);
}

/** zlib.adler32 of a file, as Python computes it (virtnbdbackup's checksum). */
export async function pythonAdler32(file: string): Promise<number> {
  const r = await run('/usr/bin/python3', ['-c', 'import sys,zlib; print(zlib.adler32(open(sys.argv[1],"rb").read()))', file]);
  return Number(r.stdout.trim());
}
