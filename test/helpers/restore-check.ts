/**
 * What restore tests check, with the real tools: a snapshot of a running
 * VM's disk at a point in time (flushed through QEMU, then copied with
 * `qemu-img convert -U`), the allocated bytes of an image (`qemu-img map`),
 * and a run of our virtnbdrestore with the flags every test passes (-n, a
 * log file in the test's dir).
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli, type CliOptions, type CliResult } from './cli.js';
import { run } from './exec.js';
import type { TestVm } from './vm.js';

/** Bytes `qemu-img map` reports as data (allocated) in an image. */
export async function allocatedBytes(path: string): Promise<number> {
  const r = await run('qemu-img', ['map', '--output=json', '-U', path]);
  const extents = JSON.parse(r.stdout) as Array<{ length: number; data: boolean }>;
  return extents.filter((e) => e.data).reduce((sum, e) => sum + e.length, 0);
}

/** Copy disk `target` of the running VM as it is now (QEMU flushes its caches first). */
export async function snapshotDisk(vm: TestVm, target: string, path: string): Promise<void> {
  await vm.hmp(`qemu-io -d ${await vm.qomPath(target)} "flush"`);
  await run('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', vm.disk(target).image.path, path]);
}

/**
 * `virtnbdrestore -n -L <dir>/restore-<n>.log ARGS` from source, with
 * TMPDIR=<dir>, so its private work directory (qemu-nbd sockets) is made
 * there and a test can see that it is gone afterwards (leftovers()).
 */
let runs = 0;
export async function ourRestore(dir: string, args: readonly string[], opts: CliOptions = {}): Promise<CliResult> {
  return runCli('virtnbdrestore', ['-n', '-L', join(dir, `restore-${++runs}.log`), ...args], { ...opts, env: { TMPDIR: dir, ...opts.env } });
}

/** What restores run by ourRestore(dir) left behind: work directories, and qemu-nbd processes on files in dir. */
export async function leftovers(dir: string): Promise<string[]> {
  const work = (await readdir(dir)).filter((f) => f.startsWith('virtnbdrestore-')).map((f) => `work dir ${join(dir, f)}`);
  const servers = (await processesMentioning(dir)).filter((p) => /qemu-nbd/.test(p));
  return [...work, ...servers];
}

/** Files in a directory, sorted (no recursion). */
export async function filesIn(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).sort();
}

/** Processes whose command line contains `needle` (e.g. a socket or image path): none must survive a restore. */
export async function processesMentioning(needle: string): Promise<string[]> {
  const out: string[] = [];
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const { readFile } = await import('node:fs/promises');
      const cmd = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').join(' ');
      if (cmd.includes(needle) && !cmd.includes('restore-check')) out.push(`${pid}: ${cmd}`);
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}
