/**
 * Reaching the domain to back up: open the libvirt connection, make sure
 * the domain lives on this host (the NBD socket and the disk images must
 * be local until remote backups land), look the domain up and see whether
 * it runs. Each refusal is a BackupError naming the domain and the URI.
 */
import { hostname } from 'node:os';
import { Hypervisor } from '../libvirt/hypervisor.js';
import type { Domain } from '../libvirt/domain.js';
import { LibvirtError, VIR_ERR_NO_DOMAIN } from '../libvirt/errors.js';
import { BackupError, messageOf } from './errors.js';
import type { BackupLogger } from './log.js';

export interface DomainSession {
  hypervisor: Hypervisor;
  domain: Domain;
  /** false: the domain is shut off (an offline backup reads its images through qemu-nbd). */
  running: boolean;
}

/** Connect to `uri`; throws BackupError('libvirt') naming the URI. */
export async function connectHypervisor(uri: string, log: BackupLogger): Promise<Hypervisor> {
  let hypervisor: Hypervisor;
  try {
    hypervisor = new Hypervisor(uri);
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
 * as virtnbdbackup does, compare the daemon's host name with ours.
 */
async function refuseRemote(hypervisor: Hypervisor): Promise<void> {
  if (hypervisor.uri.transport === 'unix') return;
  const remote = await hypervisor.getHostname();
  if (remote === hostname()) return;
  throw new BackupError(
    'not-yet',
    `Domain host ${remote} (${hypervisor.uri.uri}) is not this machine (${hostname()}): backing up a remote domain ` +
      '(NBD over TCP, copying its files over ssh) is not implemented in this version of virtnbd yet.',
  );
}

/** Look up `name` and whether it runs; closes the connection when it fails. */
export async function openDomainSession(uri: string, name: string, log: BackupLogger): Promise<DomainSession> {
  const hypervisor = await connectHypervisor(uri, log);
  try {
    await refuseRemote(hypervisor);
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
    return { hypervisor, domain, running };
  } catch (e) {
    await hypervisor.close();
    throw e;
  }
}
