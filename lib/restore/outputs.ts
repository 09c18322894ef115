/**
 * What a restore leaves behind besides the images' bytes: the images under
 * their final names, the domain config (original or adjusted), boot files
 * (kernel, initrd, loader, nvram) put back where the config says when they
 * are missing there, and, with --define, the domain defined in libvirt.
 * Also the private work directory (0700) that holds qemu-nbd's sockets and
 * spooled entries for the length of one run. The output side works on
 * HostFiles: this host's files, or a remote hypervisor's over ssh.
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from '../cli/logger.js';
import { Hypervisor } from '../libvirt/hypervisor.js';
import { FileExistsError, LocalHostFiles, type HostFiles } from '../remote/hostFiles.js';
import type { DomainInfo } from '../xml/domain.js';
import { commitFile, exists } from './diskRestore.js';
import { RestoreError, TargetExistsError } from './errors.js';
import type { RestoreOptions } from './options.js';
import { restoredFileName } from './setFiles.js';

const local: HostFiles = new LocalHostFiles();

/** A private directory for one run, removed by dispose() (also after failures). */
export interface WorkDir {
  path: string;
  dispose(): Promise<void>;
}

export async function createWorkDir(parent = tmpdir()): Promise<WorkDir> {
  // mkdtemp makes it 0700: nobody else can reach qemu-nbd's socket inside.
  const path = await mkdtemp(join(parent, 'virtnbdrestore-'));
  return { path, dispose: () => rm(path, { recursive: true, force: true }) };
}

/** A complete image (or raw copy) under its temporary name. */
export interface PendingImage {
  disk: string;
  temp: string;
  format: 'qcow2' | 'raw';
  files: string[];
}

/**
 * Final paths of the restored images: `<output>/<source image base name>`
 * (or the disk name for --sequence, as virtnbdrestore does). Two disks
 * meeting at one name are refused.
 */
export function finalImagePaths(
  disks: readonly string[],
  output: string,
  domain: DomainInfo | undefined,
  options: { byDiskName?: boolean } = {},
): Map<string, string> {
  const paths = new Map<string, string>();
  const owner = new Map<string, string>();
  for (const disk of disks) {
    const name = options.byDiskName ? disk : restoredFileName(disk, domain?.disks.find((d) => d.target === disk));
    const path = resolve(output, name);
    const other = owner.get(path);
    if (other !== undefined) {
      throw new RestoreError(`Disks ${other} and ${disk} would both be restored to ${path} (their source images share a file name); restore them one at a time with -d into different directories`);
    }
    owner.set(path, disk);
    paths.set(disk, path);
  }
  return paths;
}

/** The temporary name an image is written under until it is complete. */
export function temporaryPath(final: string): string {
  return `${final}.partial`;
}

/** Refuse (before anything is written) final names that exist, unless --overwrite. */
export async function checkTargetsFree(paths: Iterable<string>, overwrite: boolean, files: HostFiles = local): Promise<void> {
  if (overwrite) return;
  const taken: string[] = [];
  for (const path of paths) if (await files.exists(path)) taken.push(path);
  if (taken.length > 0) {
    const where = files.remote ? ` on ${files.description}` : '';
    throw new TargetExistsError(`The output directory${where} already holds ${taken.join(', ')}; not overwriting (use --overwrite to replace)`);
  }
}

/** Remove a `.partial` left by an interrupted earlier run, saying so. */
export async function clearStalePartial(temp: string, logger: Logger, files: HostFiles = local): Promise<void> {
  if (await files.exists(temp)) {
    logger.warn(`Removing ${temp}, left by an earlier restore that did not finish`);
    await files.remove(temp);
  }
}

/** Move every pending image to its final name. */
export async function commitImages(
  images: readonly PendingImage[],
  finals: ReadonlyMap<string, string>,
  overwrite: boolean,
  logger: Logger,
  files: HostFiles = local,
): Promise<void> {
  for (const image of images) {
    const final = finals.get(image.disk)!;
    if (files.remote) await commitRemote(files, image.temp, final, overwrite);
    else await commitFile(image.temp, final, { overwrite });
    logger.info(`Restored disk ${image.disk} to ${final}${files.remote ? ` on ${files.description}` : ''}`);
  }
}

/** commitFile() on a remote host: the same refusal of a taken name. */
async function commitRemote(files: HostFiles, temp: string, final: string, overwrite: boolean): Promise<void> {
  try {
    await files.commit(temp, final, overwrite);
  } catch (error) {
    if (error instanceof FileExistsError) throw new TargetExistsError(`${final} exists already on ${files.description}; not overwriting it (use --overwrite to replace it)`);
    throw error;
  }
}

/** writeFileAtomic() on this host or a remote one. */
export async function writeHostFileAtomic(files: HostFiles, path: string, content: string): Promise<void> {
  if (!files.remote) return writeFileAtomic(path, content);
  const temp = `${path}.${randomBytes(4).toString('hex')}.partial`;
  try {
    await files.writeNew(temp, content);
    await files.commit(temp, path, true);
  } finally {
    await files.remove(temp).catch(() => undefined);
  }
}

/** Write a small text file atomically (temporary name, fsync, rename over). */
export async function writeFileAtomic(path: string, content: string): Promise<void> {
  const temp = `${path}.${randomBytes(4).toString('hex')}.partial`;
  try {
    await writeFile(temp, content, { flush: true });
    await commitFile(temp, path, { overwrite: true });
  } finally {
    await rm(temp, { force: true });
  }
}

/**
 * Put boot files back where the domain config says, when they are missing
 * there (an existing file is never replaced: it may belong to a running VM).
 * `locate` finds the set's copy of a host path; a missing copy is a warning.
 */
export async function restoreBootFiles(
  domain: DomainInfo,
  locate: (hostPath: string) => string | undefined,
  open: (name: string) => Promise<Readable>,
  logger: Logger,
  files: HostFiles = local,
): Promise<string[]> {
  const restored: string[] = [];
  for (const [kind, hostPath] of Object.entries(domain.bootFiles)) {
    if (hostPath === undefined) continue;
    if (files.remote) {
      if (await restoreRemoteBootFile(files, kind, hostPath, locate, open, logger)) restored.push(hostPath);
      continue;
    }
    if (await exists(hostPath)) {
      logger.info(`File [${hostPath}]: for boot option [${kind}] already exists, skipping.`);
      continue;
    }
    const copy = locate(hostPath);
    if (copy === undefined) {
      logger.warn(`The backup set holds no copy of ${basename(hostPath)} (boot option ${kind}, ${hostPath}); it is not restored`);
      continue;
    }
    logger.info(`Restoring configured file [${hostPath}] for boot option [${kind}] from ${copy}`);
    const temp = `${hostPath}.${randomBytes(4).toString('hex')}.partial`;
    try {
      await mkdir(dirname(hostPath), { recursive: true });
      await pipeline(await open(copy), createWriteStream(temp, { flags: 'wx', flush: true }));
      await commitFile(temp, hostPath, { overwrite: false });
      restored.push(hostPath);
    } catch (error) {
      logger.warn(`Cannot restore ${hostPath} for boot option ${kind}: ${(error as Error).message}`);
    } finally {
      await rm(temp, { force: true });
    }
  }
  return restored;
}

/** Define the domain from `xml` through our libvirt client; mark it autostart if the backup says so. Returns its name. */
export async function defineDomain(uri: string, xml: string, autostart: boolean, logger: Logger, credentials?: RestoreOptions['credentials']): Promise<string> {
  const hypervisor = new Hypervisor(uri, credentials ? { credentials } : {});
  try {
    await hypervisor.connect();
    const domain = await hypervisor.defineXML(xml);
    logger.info(`Defined domain ${domain.getName()}`);
    if (autostart) {
      try {
        await domain.setAutostart(true);
        logger.info('Setting autostart config for domain.');
      } catch (error) {
        logger.warn(`Cannot mark domain ${domain.getName()} autostart: ${(error as Error).message}`);
      }
    }
    return domain.getName();
  } catch (error) {
    throw new RestoreError(`Cannot define the restored domain through ${uri}: ${(error as Error).message}`, { cause: error });
  } finally {
    await hypervisor.close().catch(() => undefined);
  }
}

/** Refresh the libvirt storage pool whose target is `dir`, if there is one (best effort, local URIs only). */
export async function refreshPool(uri: string, dir: string, logger: Logger): Promise<void> {
  if (!/^qemu:\/\/\//.test(uri)) return;
  const hypervisor = new Hypervisor(uri, { keepaliveInterval: 0 });
  try {
    await hypervisor.connect();
    const pool = await hypervisor.storagePoolLookupByTargetPath(resolve(dir));
    await pool.refresh();
    logger.info(`Refreshed contents of libvirt pool [${pool.getName()}]`);
  } catch (error) {
    logger.debug(`No libvirt storage pool refreshed for ${dir}: ${(error as Error).message}`);
  } finally {
    await hypervisor.close().catch(() => undefined);
  }
}

/** One boot file put back on a remote host, under a temporary name first; a failure is a warning. */
async function restoreRemoteBootFile(
  files: HostFiles,
  kind: string,
  hostPath: string,
  locate: (hostPath: string) => string | undefined,
  open: (name: string) => Promise<Readable>,
  logger: Logger,
): Promise<boolean> {
  const where = files.description;
  if (await files.exists(hostPath)) {
    logger.info(`File [${hostPath}] on ${where}: for boot option [${kind}] already exists, skipping.`);
    return false;
  }
  const copy = locate(hostPath);
  if (copy === undefined) {
    logger.warn(`The backup set holds no copy of ${basename(hostPath)} (boot option ${kind}, ${hostPath}); it is not restored`);
    return false;
  }
  logger.info(`Restoring configured file [${hostPath}] on ${where} for boot option [${kind}] from ${copy}`);
  const temp = `${hostPath}.${randomBytes(4).toString('hex')}.partial`;
  try {
    await files.mkdirp(dirname(hostPath));
    await files.writeNew(temp, await open(copy));
    await files.commit(temp, hostPath, false);
    return true;
  } catch (error) {
    logger.warn(`Cannot restore ${hostPath} on ${where} for boot option ${kind}: ${(error as Error).message}`);
    return false;
  } finally {
    await files.remove(temp).catch(() => undefined);
  }
}
