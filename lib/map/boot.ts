/**
 * Instant recovery: start the backed-up VM from its backup while its disks
 * are being served by our NBD server. Each disk gets a qcow2 overlay whose
 * backing file is the disk's NBD export (`nbd+unix:///vda?socket=...`,
 * format raw), so the guest's writes land in the overlay and the backup is
 * only read; libvirt 9.0 follows that backing file by itself (it shows as
 * a network backingStore). The domain is transient (virDomainCreateXML)
 * and tied to our libvirt connection (AUTODESTROY): stop() destroys it,
 * and should virtnbdmap die, libvirt destroys it when the connection drops.
 *
 * QEMU runs as the DAC user libvirt reports in its capabilities (root
 * here, libvirt-qemu on a stock Debian): the work directory, the overlays
 * and the socket are handed to that user so QEMU can open them.
 */
import { chown, copyFile, readdir, readFile, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Logger } from '../cli/logger.js';
import { bootFileName, parseVmConfigFileName, vmConfigFileName } from '../format/naming.js';
import { Hypervisor } from '../libvirt/hypervisor.js';
import type { Domain } from '../libvirt/domain.js';
import { LibvirtError, VIR_ERR_NO_DOMAIN } from '../libvirt/errors.js';
import { VIR_DOMAIN_START_AUTODESTROY } from '../libvirt/flags.js';
import { createImage } from '../qemu/qemuImg.js';
import { parseDomainXml, type BootFiles } from '../xml/domain.js';
import { parseXmlDocument } from '../xml/xmlTree.js';
import { instantDomainConfig, type BootFilePaths } from './bootConfig.js';
import { BootError } from './errors.js';

/** One disk to boot from: its export and its chain's identity. */
export interface BootDisk {
  disk: string;
  /** Export name on our server. */
  exportName: string;
  size: number;
}

export interface BootOptions {
  disks: readonly BootDisk[];
  /** Backup set directory (vmconfig and boot files live there). */
  setDir: string;
  /** Idents of the chain's files, newest first: which vmconfig.<ident>.xml to take. */
  idents: readonly string[];
  /** Unix socket our NBD server listens on. */
  socketPath: string;
  /** Private work directory (overlays, NVRAM copy). */
  workDir: string;
  /** Domain name (default instant_<name>). */
  name?: string;
  /** libvirt URI (default qemu:///system). */
  uri?: string;
  logger: Logger;
}

export interface BootedDomain {
  name: string;
  /** The vmconfig file it was made from. */
  vmconfig: string;
  /** The qcow2 overlays, by disk. */
  overlays: Map<string, string>;
  /** Resolves, with a reason, once the domain is no longer running (the guest shut down, someone destroyed it). */
  ended: Promise<string>;
  /** Destroy the domain if it still runs and close the libvirt connection. Idempotent. */
  stop(): Promise<void>;
}

/** How often the domain's state is polled. */
const WATCH_INTERVAL_MS = 1000;

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** The newest vmconfig.<ident>.xml of the chain; else the newest one in the directory. */
async function findVmconfig(setDir: string, idents: readonly string[], logger: Logger): Promise<{ path: string; ident: string }> {
  for (const ident of idents) {
    const path = join(setDir, vmConfigFileName(ident));
    if (await exists(path)) return { path, ident };
  }
  const others: { path: string; ident: string; mtime: number }[] = [];
  for (const name of await readdir(setDir).catch(() => [] as string[])) {
    const ident = parseVmConfigFileName(name);
    if (ident !== undefined) others.push({ path: join(setDir, name), ident, mtime: (await stat(join(setDir, name))).mtimeMs });
  }
  const newest = others.sort((a, b) => b.mtime - a.mtime)[0];
  if (!newest) {
    throw new BootError(`No domain config in ${setDir}: --boot needs the vmconfig.<checkpoint>.xml virtnbdbackup saves beside the data files (looked for ${idents.map(vmConfigFileName).join(', ')})`);
  }
  logger.warn(`No vmconfig of the mapped checkpoint (${idents.join(', ')}) in ${setDir}; using ${basename(newest.path)}`);
  return newest;
}

/**
 * Where each boot file the config names is now: the backup's copy
 * (`<basename>.<ident>`, matching the disks' state) or else the original
 * path. The NVRAM is copied into the work directory, since the VM writes it.
 */
async function resolveBootFiles(files: BootFiles, setDir: string, ident: string, workDir: string): Promise<BootFilePaths> {
  const out: BootFilePaths = {};
  for (const kind of ['kernel', 'initrd', 'loader', 'nvram'] as const) {
    const original = files[kind];
    if (original === undefined) continue;
    const candidates = [join(setDir, bootFileName(original, ident)), join(setDir, bootFileName(original, undefined)), original];
    let found: string | undefined;
    for (const c of candidates) {
      if (await exists(c)) {
        found = c;
        break;
      }
    }
    if (found === undefined) {
      throw new BootError(`The ${kind} ${original} of the domain is neither in the backup set (${basename(candidates[0]!)}) nor on this host`);
    }
    if (kind === 'nvram') {
      const copy = join(workDir, `${basename(original)}.instant`);
      await copyFile(found, copy);
      found = copy;
    }
    if (found !== original) out[kind] = found;
  }
  return out;
}

/** uid/gid QEMU runs as, from the DAC security model of libvirt's capabilities; undefined for root or unknown. */
function qemuOwner(capabilities: string, domainType: string): { uid: number; gid: number } | undefined {
  const root = parseXmlDocument(capabilities, 'libvirt capabilities', 'capabilities');
  for (const model of root.child('host')?.all('secmodel') ?? []) {
    if (model.childText('model') !== 'dac') continue;
    const label = model.all('baselabel').find((l) => l.attr('type') === domainType) ?? model.child('baselabel');
    const m = /^\+?(\d+):\+?(\d+)$/.exec(label?.text ?? '');
    if (!m) return undefined;
    const [uid, gid] = [Number(m[1]), Number(m[2])];
    return uid === 0 && gid === 0 ? undefined : { uid, gid };
  }
  return undefined;
}

/** The export as a backing file name qemu and libvirt both parse. */
function backingUri(exportName: string, socketPath: string): string {
  const plain = /^[\w./-]+$/;
  const name = plain.test(exportName) ? exportName : encodeURIComponent(exportName);
  const socket = plain.test(socketPath) ? socketPath : encodeURIComponent(socketPath);
  return `nbd+unix:///${name}?socket=${socket}`;
}

function isNoDomain(err: unknown): boolean {
  return err instanceof LibvirtError && err.code === VIR_ERR_NO_DOMAIN;
}

/** Create the overlays and start the transient domain. On failure, nothing is left running. */
export async function bootInstant(o: BootOptions): Promise<BootedDomain> {
  const { logger } = o;
  const { path: vmconfig, ident } = await findVmconfig(o.setDir, o.idents, logger);
  const configText = await readFile(vmconfig, 'utf8');
  let info;
  try {
    info = parseDomainXml(configText, vmconfig);
  } catch (err) {
    throw new BootError(`${vmconfig}: ${(err as Error).message}`, { cause: err });
  }
  const mapped = new Set(o.disks.map((d) => d.disk));
  for (const disk of info.disks.filter((d) => d.device === 'disk' && !mapped.has(d.target))) {
    logger.warn(`Disk ${disk.target} of ${info.name} has no data files among those mapped: the instant VM runs without it (add its files with -f)`);
  }

  const overlays = new Map<string, string>();
  for (const d of o.disks) {
    const overlay = join(o.workDir, `${d.disk}.overlay.qcow2`);
    await createImage(overlay, {
      format: 'qcow2',
      size: d.size,
      options: [
        ['backing_file', backingUri(d.exportName, o.socketPath)],
        ['backing_fmt', 'raw'],
      ],
    });
    overlays.set(d.disk, overlay);
  }
  const bootFiles = await resolveBootFiles(info.bootFiles, o.setDir, ident, o.workDir);
  let config;
  try {
    config = instantDomainConfig(configText, { name: o.name, disks: o.disks.map((d) => ({ target: d.disk, overlay: overlays.get(d.disk)! })), bootFiles }, vmconfig);
  } catch (err) {
    throw new BootError(`${vmconfig}: ${(err as Error).message}`, { cause: err });
  }
  for (const change of config.changes) logger.debug(`Instant domain config: ${change}`);

  const hypervisor = new Hypervisor(o.uri ?? 'qemu:///system');
  let domain: Domain | undefined;
  try {
    await hypervisor.connect();
    const existing = await hypervisor.lookupDomainByName(config.name).then(
      () => true,
      (err: unknown) => (isNoDomain(err) ? false : Promise.reject(err)),
    );
    if (existing) throw new BootError(`A domain named ${config.name} exists already; choose another name with --name`);
    const owner = qemuOwner(await hypervisor.getCapabilities(), info.hypervisor ?? 'kvm');
    if (owner) {
      for (const path of [o.workDir, o.socketPath, ...overlays.values(), ...(bootFiles.nvram ? [bootFiles.nvram] : [])]) {
        await chown(path, owner.uid, owner.gid);
      }
    }
    logger.info(`Starting transient domain ${config.name} from ${basename(vmconfig)}, disks: ${o.disks.map((d) => `${d.disk} -> ${overlays.get(d.disk)}`).join(', ')}`);
    domain = await hypervisor.createXML(config.xml, VIR_DOMAIN_START_AUTODESTROY);
  } catch (err) {
    await hypervisor.close().catch(() => undefined);
    if (err instanceof BootError) throw err;
    throw new BootError(`libvirt could not start the instant domain ${config.name}: ${(err as Error).message}`, { cause: err });
  }

  const started = domain;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const ended = new Promise<string>((resolve) => {
    const poll = async (): Promise<void> => {
      if (stopped) return;
      let reason: string | undefined;
      try {
        if (!(await started.isActive())) reason = `domain ${config.name} is no longer running`;
      } catch (err) {
        reason = isNoDomain(err) ? `domain ${config.name} is gone` : `lost track of domain ${config.name}: ${(err as Error).message}`;
      }
      if (reason !== undefined) resolve(reason);
      else timer = setTimeout(() => void poll(), WATCH_INTERVAL_MS);
    };
    timer = setTimeout(() => void poll(), WATCH_INTERVAL_MS);
  });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      stopped = true;
      clearTimeout(timer);
      try {
        await started.destroy();
        logger.info(`Destroyed domain ${config.name}`);
      } catch (err) {
        // Already stopped (shut down by the guest, destroyed by someone): nothing to do.
        if (!isNoDomain(err) && !/not running/i.test((err as Error).message)) {
          logger.warn(`Could not destroy domain ${config.name}: ${(err as Error).message}; closing the connection, which does`);
        }
      }
      await hypervisor.close().catch(() => undefined);
    })();
    return stopping;
  };
  return { name: config.name, vmconfig, overlays, ended, stop };
}
