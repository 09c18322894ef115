/**
 * Reaching the domain to back up: open the libvirt connection, find out
 * whether the domain lives on another host (then its disks are read over
 * TCP and its files over ssh), look the domain up and see whether it runs.
 * Each refusal is a BackupError naming the domain and the URI.
 */
import type { ReopenedDomain } from './job.js';
import { Hypervisor, type HypervisorOptions } from '../libvirt/hypervisor.js';
import type { Domain } from '../libvirt/domain.js';
import { LibvirtError, VIR_ERR_NO_DOMAIN } from '../libvirt/errors.js';
import { BackupError, messageOf } from './errors.js';
import type { BackupLogger } from './log.js';
import { remoteHostOf } from '../remote/remoteHost.js';

export interface DomainSession {
  hypervisor: Hypervisor;
  domain: Domain;
  /** false: the domain is shut off (an offline backup reads its images through qemu-nbd). */
  running: boolean;
  /** true: the domain runs on another host (its NBD server is reached over TCP). */
  remote?: boolean;
}

/**
 * Connect to `uri`, logging in with `credentials` where the daemon demands
 * SASL; throws BackupError('libvirt') naming the URI.
 */
export async function connectHypervisor(uri: string, log: BackupLogger, credentials?: HypervisorOptions['credentials']): Promise<Hypervisor> {
  let hypervisor: Hypervisor;
  try {
    hypervisor = new Hypervisor(uri, credentials ? { credentials } : {});
  } catch (e) {
    throw new BackupError('libvirt', `Invalid libvirt URI ${uri}: ${messageOf(e)}`, { cause: e });
  }
  try {
    await hypervisor.connect();
  } catch (e) {
    throw new BackupError('libvirt', `Cannot connect to libvirt at ${uri}: ${messageOf(e)}`, { cause: e });
  }
  try {
    log.info(`Libvirt library version: [${await hypervisor.getLibVersion()}]`);
  } catch (e) {
    await hypervisor.close();
    throw new BackupError('libvirt', `libvirt at ${uri} does not answer: ${messageOf(e)}`, { cause: e });
  }
  return hypervisor;
}

/**
 * A URI with a host may still name this machine (qemu+ssh://root@localhost);
 * as virtnbdbackup does, the domain is remote when the daemon's host name
 * differs from ours (lib/remote/remoteHost.ts).
 */
async function isRemote(hypervisor: Hypervisor): Promise<boolean> {
  try {
    return (await remoteHostOf(hypervisor)) !== undefined;
  } catch (e) {
    throw new BackupError('libvirt', `Cannot read the host name of libvirt at ${hypervisor.uri.uri}: ${messageOf(e)}`, { cause: e });
  }
}

/** Look up `name` and whether it runs; closes the connection when it fails. */
export async function openDomainSession(
  uri: string,
  name: string,
  log: BackupLogger,
  credentials?: HypervisorOptions['credentials'],
): Promise<DomainSession> {
  const hypervisor = await connectHypervisor(uri, log, credentials);
  try {
    const remote = await isRemote(hypervisor);
    let domain: Domain;
    try {
      domain = await hypervisor.lookupDomainByName(name);
    } catch (e) {
      if (e instanceof LibvirtError && e.code === VIR_ERR_NO_DOMAIN) {
        throw new BackupError('domain-not-found', `Domain ${name} not found at ${uri}: ${e.message}`, { cause: e });
      }
      throw new BackupError('libvirt', `Cannot look up domain ${name} at ${uri}: ${messageOf(e)}`, { cause: e });
    }
    let running: boolean;
    try {
      running = await domain.isActive();
    } catch (e) {
      throw new BackupError('libvirt', `Cannot read the state of domain ${name} at ${uri}: ${messageOf(e)}`, { cause: e });
    }
    return { hypervisor, domain, running, ...(remote ? { remote } : {}) };
  } catch (e) {
    await hypervisor.close();
    throw e;
  }
}

/** The domain `name` on a new connection of its own (to stop a job when the first connection broke). */
export async function reopenDomain(uri: string, name: string, log: BackupLogger, credentials?: HypervisorOptions['credentials']): Promise<ReopenedDomain> {
  const hypervisor = await connectHypervisor(uri, log, credentials);
  try {
    return { domain: await hypervisor.lookupDomainByName(name), close: () => hypervisor.close() };
  } catch (e) {
    await hypervisor.close();
    throw e;
  }
}
