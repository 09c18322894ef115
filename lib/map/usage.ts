/**
 * What virtnbdmap tells a user when it serves a backup without a kernel
 * NBD device: the export's address, and the commands that use it (look at
 * it, read files from it without mounting, copy it out, put a VM on it,
 * attach it where the nbd module exists). Pure.
 */
import type { ServerAddress } from '../nbd/server.js';

/** The export's URI as qemu and libnbd take it. */
export function exportUri(address: ServerAddress, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if ('socketPath' in address) return `nbd+unix:///${name}?socket=${address.socketPath}`;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `nbd://${host}:${address.port}/${name}`;
}

/** The same export as libguestfs spells it (`-a URI`). */
function guestfsUri(address: ServerAddress, exportName: string): string {
  if ('socketPath' in address) return `nbd:///${encodeURIComponent(exportName)}?socket=${address.socketPath}`;
  return exportUri(address, exportName);
}

function quote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

export interface UsageSubject {
  disk: string;
  exportName: string;
  /** How many data files and up to which checkpoint. */
  files: number;
  checkpoint: string;
  writable: boolean;
}

/** Lines explaining how to use a served export. */
export function usageHints(address: ServerAddress, subject: UsageSubject): string[] {
  const uri = quote(exportUri(address, subject.exportName));
  const mode = subject.writable ? 'read-write (writes go to a temporary overlay, discarded when mapping ends)' : 'read-only';
  const attach =
    'socketPath' in address
      ? `nbd-client -unix ${quote(address.socketPath)} /dev/nbd1 -N ${quote(subject.exportName)}`
      : `nbd-client ${address.host} ${address.port} /dev/nbd1 -N ${quote(subject.exportName)}`;
  return [
    `Disk ${subject.disk} (${subject.files} data file${subject.files === 1 ? '' : 's'}, up to checkpoint ${subject.checkpoint || '-'}) is served ${mode} at ${exportUri(address, subject.exportName)}`,
    'Use it for example with:',
    `  look at it:             nbdinfo --map ${uri}    or    qemu-img info ${uri}`,
    `  read files, no mount:   guestfish --ro --format=raw -a ${quote(guestfsUri(address, subject.exportName))} -i`,
    `  copy it out:            qemu-img convert -f raw -O qcow2 ${uri} ${subject.disk}.qcow2`,
    `  as a VM disk:           qemu-img create -f qcow2 -b ${uri} -F raw ${subject.disk}.overlay.qcow2   (or virtnbdmap --boot)`,
    `  as a block device:      ${attach}   (needs the nbd kernel module: modprobe nbd)`,
  ];
}
