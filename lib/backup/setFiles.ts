/**
 * The files a backup set keeps beside the disk data, as virtnbdbackup
 * writes them: `vmconfig.<ident>.xml` (the live domain XML, verbatim),
 * `<disk>.<ident>.qcow.json` (`qemu-img info --output json --force-share`
 * of each qcow2 image, trimmed as virtnbdbackup trims it), the boot files
 * (loader, nvram, kernel, initrd) as `<basename>.<ident>` (plain basename
 * for copy backups) and `autostart.<ident>` when the domain starts with the
 * host. Failing to save one of the side files is a warning, not a failed
 * backup (virtnbdbackup's behaviour); the vmconfig is needed to restore,
 * so failing to save it is an error.
 *
 * For a remote domain the image info and boot files are the hypervisor's:
 * qemu-img runs there and the boot files are copied over ssh (through a
 * private local temp directory, so no file is held in memory).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { copyToLocal, LocalHostFiles, type HostFiles } from '../remote/hostFiles.js';
import type { DataLevel } from '../format/naming.js';
import { autostartFileName, bootFileName, vmConfigFileName } from '../format/naming.js';
import { BOOT_FILE_KINDS, type DomainInfo } from '../xml/domain.js';
import { BackupError, messageOf } from './errors.js';
import type { DiskTarget } from './level.js';
import type { BackupLogger } from './log.js';
import type { SetOutput } from './output.js';

const run = promisify(execFile);

export interface SetFilesSpec {
  level: DataLevel;
  ident: string;
  domainXml: string;
  domain: DomainInfo;
  targets: readonly DiskTarget[];
  autostart: boolean;
  output: SetOutput;
  log: BackupLogger;
  /** The hypervisor's files (default this host's). */
  files?: HostFiles;
  /** `qemu-img info` of disk images, started earlier (prefetchImageInfo), by path. */
  imageInfo?: ReadonlyMap<string, Promise<string>>;
}

/**
 * Start `qemu-img info` of each disk image whose information the set keeps,
 * while libvirt starts the job: spawning qemu-img at the end cost an
 * incremental backup ~0.1 s of its ~1 s, and during the copy it competed
 * with listing the extents. Failures surface when awaited.
 */
export function prefetchImageInfo(targets: readonly DiskTarget[], files: HostFiles): Map<string, Promise<string>> {
  const info = new Map<string, Promise<string>>();
  for (const target of targets) {
    const path = target.disk.path;
    if (target.qcowInfoFile === undefined || path === undefined || info.has(path)) continue;
    const pending = files.qemuImageInfo(path);
    pending.catch(() => undefined);
    info.set(path, pending);
  }
  return info;
}

/** `qemu-img info` of an image a running VM has open. */
export async function qemuImageInfo(path: string): Promise<string> {
  const { stdout } = await run('qemu-img', ['info', path, '--output', 'json', '--force-share'], { maxBuffer: 16 * 1024 * 1024 });
  return stdout.trim();
}

export async function saveSetFiles(spec: SetFilesSpec): Promise<void> {
  const { output, log, ident } = spec;
  const files = spec.files ?? new LocalHostFiles();
  const where = files.remote ? ` on ${files.description}` : '';
  const config = vmConfigFileName(ident);
  try {
    await output.writeFile(config, spec.domainXml);
    log.info(`Saved VM config to: [${config}]`);
  } catch (e) {
    throw new BackupError('output', `Cannot save the domain configuration ${config} to ${output.description}: ${messageOf(e)}`, { cause: e });
  }

  for (const kind of BOOT_FILE_KINDS) {
    const path = spec.domain.bootFiles[kind];
    if (path === undefined) continue;
    const name = bootFileName(path, spec.level === 'copy' ? undefined : ident);
    try {
      await copyBootFile(files, output, name, path);
      log.info(`Saved boot file [${kind}] ${path}${where} to: [${name}]`);
    } catch (e) {
      log.warn(`Cannot save ${kind} file ${path}${where}: ${messageOf(e)}`);
    }
  }

  for (const target of spec.targets) {
    if (target.qcowInfoFile === undefined) continue;
    const path = target.disk.path;
    if (path === undefined) {
      log.info(`Disk ${target.disk.target}: image information of volume disks is not saved yet (no local path).`);
      continue;
    }
    try {
      await output.writeFile(target.qcowInfoFile, await (spec.imageInfo?.get(path) ?? files.qemuImageInfo(path)));
      log.info(`Saved qcow image config to: [${target.qcowInfoFile}]`);
    } catch (e) {
      log.warn(`Cannot save image information of disk ${target.disk.target} (${path}${where}): ${messageOf(e)}`);
    }
  }

  if (spec.autostart) {
    const name = autostartFileName(ident);
    try {
      await output.writeFile(name, 'True');
      log.info('Autostart setting configured for virtual machine.');
    } catch (e) {
      log.warn(`Cannot save autostart information ${name}: ${messageOf(e)}`);
    }
  }
}

/** A boot file into the set: directly from this host, or fetched over ssh into a private temp file first. */
async function copyBootFile(files: HostFiles, output: SetOutput, name: string, path: string): Promise<void> {
  if (!files.remote) return output.copyFile(name, path);
  const dir = await mkdtemp(join(tmpdir(), 'virtnbdbackup-boot-'));
  try {
    const local = join(dir, 'file');
    await copyToLocal(files, path, local);
    await output.copyFile(name, local);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
