/**
 * Is the hypervisor another machine, and how do we reach it by ssh? As
 * virtnbdbackup decides it: remote when the host name libvirtd reports
 * differs from ours (a qemu+ssh://root@localhost URI is still local). The
 * ssh login comes from --ssh-user/--ssh-port/--ssh-private-key, else from
 * the URI (its user, port, ?keyfile=, ?known_hosts=, ?no_verify=).
 */
import { hostname } from 'node:os';
import type { Hypervisor } from '../libvirt/hypervisor.js';
import { parseLibvirtUri, type LibvirtUri } from '../libvirt/uri.js';
import { SshHost, type SshTarget } from './ssh.js';

/** The ssh options of virtnbdbackup's and virtnbdrestore's command lines. */
export interface SshOptions {
  sshUser?: string;
  sshPort?: number;
  sshPrivateKey?: string;
}

/** The URI's host when libvirtd runs on another machine, else undefined. */
export async function remoteHostOf(hypervisor: Hypervisor): Promise<string | undefined> {
  const uri = hypervisor.uri;
  if (uri.transport === 'unix' || uri.host === undefined) return undefined;
  const theirs = await hypervisor.getHostname();
  return theirs === hostname() ? undefined : uri.host;
}

/** The ssh login for the hypervisor of `uri`. */
export function sshTargetFor(uri: LibvirtUri, options: SshOptions): SshTarget {
  if (uri.host === undefined) throw new Error(`libvirt URI ${uri.uri} names no host to reach by ssh`);
  const target: SshTarget = { host: uri.host };
  const user = options.sshUser ?? uri.user;
  if (user !== undefined) target.user = user;
  const port = options.sshPort ?? (uri.transport === 'ssh' ? uri.port : undefined);
  if (port !== undefined) target.port = port;
  const key = options.sshPrivateKey ?? uri.params.keyfile;
  if (key !== undefined && key !== '') target.privateKey = key;
  if (uri.params.known_hosts) target.knownHosts = uri.params.known_hosts;
  const noVerify = uri.params.no_verify !== undefined && Number(uri.params.no_verify) !== 0;
  const verify = noVerify ? 'ignore' : uri.params.known_hosts_verify;
  if (verify === 'ignore' || verify === 'auto') target.hostKeyCheck = verify;
  return target;
}

/** The hypervisor could not be reached by ssh. */
export class RemoteHostError extends Error {
  override readonly name = 'RemoteHostError';
}

/**
 * Log in once, so a wrong key or host key fails before any work, with a
 * RemoteHostError naming the host, the login and what ssh said.
 */
export async function openSsh(uri: LibvirtUri, options: SshOptions): Promise<SshHost> {
  const ssh = new SshHost(sshTargetFor(uri, options));
  try {
    await ssh.run(['true']);
  } catch (e) {
    throw new RemoteHostError(
      `The domain's host ${uri.host} is remote and its files are reached by ssh, but ${(e as Error).message}. ` +
        'Check --ssh-user, --ssh-port and --ssh-private-key (the key must be accepted without a passphrase prompt, and the host key known).',
      { cause: e },
    );
  }
  return ssh;
}

/** openSsh() with a log line, for a run that found its domain on another host. */
export async function hypervisorSsh(uri: LibvirtUri, options: SshOptions, log: { info(message: string): void }): Promise<SshHost> {
  const ssh = await openSsh(uri, options);
  log.info(`Domain host ${uri.host} is remote: its files are read over ssh as ${ssh.description}.`);
  return ssh;
}

/**
 * The ssh login a libvirt URI names (qemu+ssh://user@host:port/...), for
 * the --ssh-user and --ssh-port defaults; nothing for other URIs, or
 * one that does not parse (the connection reports that).
 */
export function sshLoginOfUri(uri: string): { user?: string; port?: number } {
  try {
    const u = parseLibvirtUri(uri);
    if (u.transport !== 'ssh') return {};
    return { ...(u.user !== undefined ? { user: u.user } : {}), ...(u.port !== undefined ? { port: u.port } : {}) };
  } catch {
    return {};
  }
}
