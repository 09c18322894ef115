/**
 * Where a restore writes: this host, or (virtnbdrestore -U qemu+ssh://...
 * to a hypervisor whose libvirtd reports another host name than ours) the
 * hypervisor, reached by ssh. There the images are created by qemu-img,
 * filled through a qemu-nbd listening on TCP (-P/--nbd-port, bound to
 * -I/--nbd-ip or the host name libvirtd reports), committed, boot files
 * and the config written; `-o` is a path on the hypervisor.
 */
import { isAbsolute } from 'node:path';
import type { Logger } from '../cli/logger.js';
import { Hypervisor } from '../libvirt/hypervisor.js';
import { LocalHostFiles, type HostFiles } from '../remote/hostFiles.js';
import { SshHostFiles } from '../remote/sshHostFiles.js';
import { openSsh, remoteHostOf } from '../remote/remoteHost.js';
import type { SshHost } from '../remote/ssh.js';
import { DEFAULT_NBD_PORT, DEFAULT_TLS_CERT_DIR } from '../backup/nbdEndpoint.js';
import { RestoreError } from './errors.js';
import type { RestoreOptions } from './options.js';

/** The hypervisor's qemu-nbd: started by ssh, listening on `bind`:`port`. */
export interface RemoteImageServer {
  ssh: SshHost;
  bind: string;
  port: number;
  /** qemu-nbd there serves TLS with the certificates of this directory (there); we verify with its CA (here). */
  tlsCertDir?: string;
}

export interface RestoreTarget {
  files: HostFiles;
  /** Remote restores only. */
  server?: RemoteImageServer;
}

export function localTarget(): RestoreTarget {
  return { files: new LocalHostFiles() };
}

/**
 * Decide where a restore writes. Only a restore to a URI with a host asks
 * libvirtd its name; a local URI (or dump, verify) never connects.
 */
export async function openRestoreTarget(options: RestoreOptions, logger: Logger): Promise<RestoreTarget> {
  const uri = options.uri;
  if (options.action !== 'restore' || uri === undefined || /^[a-z0-9-]+(\+unix)?:\/\/\//i.test(uri)) return localTarget();
  const hypervisor = new Hypervisor(uri, { keepaliveInterval: 0, ...(options.credentials ? { credentials: options.credentials } : {}) });
  let remote: string | undefined;
  let daemonHost: string;
  try {
    await hypervisor.connect();
    remote = await remoteHostOf(hypervisor);
    daemonHost = await hypervisor.getHostname();
  } catch (error) {
    throw new RestoreError(`Cannot reach libvirt at ${uri} to find out where to restore: ${(error as Error).message}`, { cause: error });
  } finally {
    await hypervisor.close().catch(() => undefined);
  }
  if (remote === undefined) return localTarget();
  if (!isAbsolute(options.output)) {
    throw new RestoreError(`-o ${options.output}: a restore to remote host ${remote} needs an absolute path on that host`);
  }
  let ssh: SshHost;
  try {
    ssh = await openSsh(hypervisor.uri, options);
  } catch (error) {
    throw new RestoreError((error as Error).message, { cause: error });
  }
  const server: RemoteImageServer = { ssh, bind: options.nbdIp ?? daemonHost, port: options.nbdPort ?? DEFAULT_NBD_PORT };
  if (options.tls) server.tlsCertDir = (options.tlsCert ?? DEFAULT_TLS_CERT_DIR).replace(/(.)\/+$/, '$1');
  logger.info(
    `Restoring to remote host ${remote} (${ssh.description} by ssh): images in ${options.output} there, written through qemu-nbd on ${server.bind}:${server.port}${server.tlsCertDir ? ` with TLS (certificates in ${server.tlsCertDir})` : ''}`,
  );
  return { files: new SshHostFiles(ssh), server };
}
