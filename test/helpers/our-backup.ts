/**
 * Our virtnbdbackup run against a test VM: as a user runs it (the CLI in a
 * child process, straight from the sources) or through the library call
 * the CLI makes, in process. Plus what end-to-end tests need around it:
 * flushing a running VM's disk so the image file on the host holds what
 * the guest wrote, a copy of the disk's state at a point in time, and
 * rebuilding a raw image from a set with our own stream stages.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli, type CliResult } from './cli.js';
import { run } from './exec.js';
import type { TestHost } from './host.js';
import type { TestVm } from './vm.js';
import { applyStream } from './apply-stream.js';
import { backup, type BackupResult } from '../../lib/backup/backup.js';
import { silentLogger } from '../../lib/backup/log.js';

export type OurLevel = 'copy' | 'full' | 'inc' | 'diff' | 'auto';

/** Our CLI exited non-zero; the message carries its stderr (the log). */
export class OurBackupError extends Error {
  constructor(
    readonly level: OurLevel,
    readonly result: CliResult,
  ) {
    super(`our virtnbdbackup -l ${level} exited with ${result.exitCode ?? result.signal}:\n${result.stderr.trim()}`);
    this.name = 'OurBackupError';
  }
}

/**
 * `virtnbdbackup -n -d VM -l LEVEL -o DIR --scratchdir HOSTDIR -f HOSTDIR/ours.sock [extra]`;
 * throws an OurBackupError unless it exits 0.
 */
export async function ourBackup(host: TestHost, vm: TestVm, level: OurLevel, output: string, extra: readonly string[] = []): Promise<CliResult> {
  const r = await runCli('virtnbdbackup', [
    '-n',
    '-d',
    vm.name,
    '-l',
    level,
    '-o',
    output,
    '--scratchdir',
    host.dir,
    '-f',
    host.path('ours.sock'),
    ...extra,
  ]);
  if (r.exitCode !== 0) throw new OurBackupError(level, r);
  return r;
}

/**
 * The same backup through the library call the CLI makes (`backup()`), in
 * this process: for building long chains quickly where the command line
 * itself is not what a test is about (each CLI run costs a Node start).
 */
export async function ourBackupInProcess(host: TestHost, vm: TestVm, level: OurLevel, output: string): Promise<BackupResult> {
  return backup(
    {
      domain: vm.name,
      level,
      type: 'stream',
      raw: false,
      output,
      stdout: false,
      scratchDir: host.dir,
      socketFile: host.path('ours-lib.sock'),
      compress: false,
      noSparseDetection: false,
      uri: 'qemu:///system',
    },
    { logger: silentLogger },
  );
}

/**
 * Flush disk `target` of the running VM (qemu-io `flush` over HMP, which
 * returns when it is done): QEMU keeps qcow2 metadata in a write-back
 * cache, so without it `qemu-img -U` on the host may not see the latest
 * guest writes yet.
 */
export async function flushDisk(vm: TestVm, target = 'vda'): Promise<void> {
  const out = await vm.hmp(`qemu-io -d ${await vm.qomPath(target)} "flush"`);
  if (out.trim()) throw new Error(`flush of ${target} in VM ${vm.name} failed: ${out.trim()}`);
}

/** A qcow2 copy of disk `target`'s current contents (`qemu-img convert -U`), for comparing restores with this point in time later. */
export async function snapshotDisk(vm: TestVm, dest: string, target = 'vda'): Promise<string> {
  await flushDisk(vm, target);
  await run('qemu-img', ['convert', '-U', '-O', 'qcow2', vm.disk(target).image.path, dest]);
  return dest;
}

/** Data files of disk `target` in a set: the full first, then incs in checkpoint order, then diffs by ident (time). */
export async function chainFiles(dir: string, target = 'vda'): Promise<string[]> {
  const files = (await readdir(dir)).filter((f) => f.startsWith(`${target}.`) && f.endsWith('.data'));
  const num = (f: string): number => Number(/\.(\d+)\.data$/.exec(f)?.[1] ?? -1);
  const full = files.filter((f) => f === `${target}.full.data`);
  const incs = files.filter((f) => f.startsWith(`${target}.inc.`)).sort((a, b) => num(a) - num(b));
  const diffs = files.filter((f) => f.startsWith(`${target}.diff.`)).sort((a, b) => num(a) - num(b));
  return [...full, ...incs, ...diffs];
}

/** Rebuild a raw image of disk `target` from `files` (default: the whole chain) with our parser (test/helpers/apply-stream.ts). */
export async function rebuildRaw(dir: string, raw: string, files?: readonly string[], target = 'vda'): Promise<string> {
  for (const f of files ?? (await chainFiles(dir, target))) await applyStream(join(dir, f), raw);
  return raw;
}
