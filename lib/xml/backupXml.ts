/**
 * The pull-mode `<domainbackup>` document for virDomainBackupBegin
 * (https://libvirt.org/formatbackup.html): QEMU serves each backed-up disk
 * as an NBD export named after its target dev, on a unix socket (local
 * backups) or TCP (remote ones), keeping copy-before-write data in a scratch
 * file per disk. Pure, no I/O.
 */

import { buildXmlDocument } from './xmlTree.js';

/** Where QEMU's NBD server listens. */
export type BackupServer =
  | { transport: 'unix'; socket: string }
  | { transport: 'tcp'; name: string; port: number; tls?: boolean };

export interface BackupXmlSpec {
  server: BackupServer;
  /** Checkpoint to export changes since (inc/diff); each disk then also exports bitmap `backup-<dev>`. */
  incremental?: string;
  /** Disks to export, with the scratch file for each (absolute paths). */
  disks: readonly { target: string; scratch: string }[];
  /** The domain's other disks, listed with backup='no'. */
  skip?: readonly string[];
}

/** A backup XML libvirt would refuse (relative paths, bad port, no disks...). */
export class BackupXmlError extends Error {
  override readonly name = 'BackupXmlError';
}


function absolute(path: string, what: string): string {
  // libvirt's schema (absFilePath) takes absolute paths only; say so before it does.
  if (!path.startsWith('/')) throw new BackupXmlError(`The ${what} must be an absolute path, got ${JSON.stringify(path)}`);
  return path;
}

function serverElement(server: BackupServer): Record<string, string> {
  if (server.transport === 'unix') {
    return { '@_transport': 'unix', '@_socket': absolute(server.socket, 'NBD socket file') };
  }
  if (server.name === '') throw new BackupXmlError('The NBD server needs a host name or IP address to listen on');
  if (!Number.isInteger(server.port) || server.port < 1 || server.port > 65535) {
    throw new BackupXmlError(`Invalid NBD port ${server.port}: expected 1 to 65535`);
  }
  return {
    '@_transport': 'tcp',
    '@_name': server.name,
    '@_port': String(server.port),
    '@_tls': server.tls ? 'yes' : 'no',
  };
}

/** The scratch file path virtnbdbackup uses: `<dir>/backup.<id>.<dev>`, id unique per run. */
export function scratchFilePath(dir: string, target: string, id: string): string {
  return `${dir.replace(/\/+$/, '')}/backup.${id}.${target}`;
}

export function buildBackupXml(spec: BackupXmlSpec): string {
  if (spec.disks.length === 0) throw new BackupXmlError('A backup job needs at least one disk to export');
  const skip = spec.skip ?? [];
  const both = spec.disks.find((d) => skip.includes(d.target));
  if (both !== undefined) throw new BackupXmlError(`Disk ${both.target} is listed both as backed up and as skipped`);
  const doc: Record<string, unknown> = { '@_mode': 'pull' };
  if (spec.incremental !== undefined && spec.incremental !== '') doc.incremental = spec.incremental;
  doc.server = serverElement(spec.server);
  doc.disks = {
    disk: [
      ...spec.disks.map((d) => ({
        '@_name': d.target,
        '@_backup': 'yes',
        '@_type': 'file',
        scratch: { '@_file': absolute(d.scratch, `scratch file of disk ${d.target}`) },
      })),
      ...skip.map((target) => ({ '@_name': target, '@_backup': 'no' })),
    ],
  };
  return buildXmlDocument('domainbackup', doc);
}
