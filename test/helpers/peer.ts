/**
 * Debian's virtnbdbackup (1.9.15), our compatibility peer, run against
 * test VMs: backups with its `virtnbdbackup`, restores with its
 * `virtnbdrestore`. Everything it needs besides the target dirs (NBD
 * sockets, scratch files, restore log) goes into a work dir we own, so
 * runs of concurrent test files do not meet in /var/tmp or /root.
 */
import { readdir } from 'node:fs/promises';
import { basename, join, relative } from 'node:path';
import { run, type RunResult } from './exec.js';
import type { Image, PatternWrite } from './image.js';
import type { TestVm } from './vm.js';

export type PeerLevel = 'copy' | 'full' | 'inc' | 'diff' | 'auto';

export interface PeerBackupOptions {
  domain: string;
  level: PeerLevel;
  /** Backup set directory (created by the peer if missing). */
  output: string;
  /** `-z`: true for the peer's default level (2, stored as `"compressed": 2`), or an lz4 level. */
  compress?: boolean | number;
  /** Where the NBD socket (`-f`) and scratch files (`-S`) go. */
  workDir: string;
  /** Extra flags, e.g. ['-i', 'vda'] or ['-t', 'raw']. */
  extraArgs?: readonly string[];
  timeoutMs?: number;
}

/** `virtnbdbackup -n -d DOMAIN -l LEVEL -o OUTPUT -S WORKDIR -f WORKDIR/peer.sock [-z[N]] ...`; throws a CommandError on a non-zero exit. */
export async function peerBackup(opts: PeerBackupOptions): Promise<RunResult> {
  const args = [
    '-n',
    '-d',
    opts.domain,
    '-l',
    opts.level,
    '-o',
    opts.output,
    '-S',
    opts.workDir,
    '-f',
    join(opts.workDir, 'peer-backup.sock'),
  ];
  if (opts.compress === true) args.push('-z');
  else if (typeof opts.compress === 'number') args.push(`--compress=${opts.compress}`);
  args.push(...(opts.extraArgs ?? []));
  await jobGone(opts.domain);
  return run('virtnbdbackup', args, { timeoutMs: opts.timeoutMs ?? 300_000 });
}

/**
 * The peer exits once it asked libvirt to end its backup job, and libvirt
 * may still be ending it: a next peer run then refuses ("Detected an active
 * backup operation"). Wait up to 30 s for the domain to have no job (an
 * inactive domain has none).
 */
async function jobGone(domain: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    const info = await run('virsh', ['-c', 'qemu:///system', 'domjobinfo', domain]).catch(() => undefined);
    if (info === undefined || /Job type:\s+None/.test(info.stdout)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface PeerRestoreOptions {
  /** Backup set directory. */
  input: string;
  /** Target directory for the restored images (and a copy of the vmconfig). */
  output: string;
  /** Where the NBD socket (`-f`) and the log (`-L`) go. */
  workDir: string;
  /** `-d`: restore only this disk. */
  disk?: string;
  /** `-u`: point in time, e.g. 'virtnbdbackup.0'. */
  until?: string;
  extraArgs?: readonly string[];
  timeoutMs?: number;
}

/** `virtnbdrestore -n -i INPUT -o OUTPUT -f WORKDIR/peer-restore.sock -L WORKDIR/virtnbdrestore.log ...`. */
export async function peerRestore(opts: PeerRestoreOptions): Promise<RunResult> {
  const args = [
    '-n',
    '-i',
    opts.input,
    '-o',
    opts.output,
    '-f',
    join(opts.workDir, 'peer-restore.sock'),
    '-L',
    join(opts.workDir, 'virtnbdrestore.log'),
  ];
  if (opts.disk) args.push('-d', opts.disk);
  if (opts.until) args.push('-u', opts.until);
  args.push(...(opts.extraArgs ?? []));
  return run('virtnbdrestore', args, { timeoutMs: opts.timeoutMs ?? 300_000 });
}

/** Where virtnbdrestore puts the image restored from `source`: the source image's file name in the output dir. */
export function restoredImagePath(output: string, source: Image): string {
  return join(output, basename(source.path));
}

/** `virtnbdbackup --version`, e.g. '1.9.15'. */
export async function peerVersion(): Promise<string> {
  const r = await run('virtnbdbackup', ['-V']);
  return (r.stdout + r.stderr).trim();
}

export interface PeerChainOptions {
  /** Backup set directory. */
  output: string;
  workDir: string;
  compress?: boolean | number;
  /** Disk the incremental writes go to (default 'vda'). */
  target?: string;
  /** One entry per incremental backup: the patterns written into the running VM just before it. */
  incrementals: readonly (readonly PatternWrite[])[];
}

/**
 * A full backup of the running VM, then for each entry of `incrementals`:
 * write its patterns into the VM, then an incremental backup into the same
 * set. Returns the set's files (relative paths, sorted).
 */
export async function peerBackupChain(vm: TestVm, opts: PeerChainOptions): Promise<string[]> {
  const common = { domain: vm.name, output: opts.output, workDir: opts.workDir, compress: opts.compress };
  await peerBackup({ ...common, level: 'full' });
  for (const writes of opts.incrementals) {
    for (const w of writes) await vm.writePattern(opts.target ?? 'vda', w);
    await peerBackup({ ...common, level: 'inc' });
  }
  return listFiles(opts.output);
}

/** All files under `dir`, as sorted paths relative to it ('checkpoints/virtnbdbackup.0.xml', ...). */
export async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath ?? e.path, e.name)))
    .sort();
}
