/**
 * XML documents for test VMs, backup jobs and checkpoints, as libvirt's
 * formats (domain, domainbackup, domaincheckpoint) describe them. Pure
 * functions, no I/O.
 */
import type { ImageFormat } from './image.js';

export interface DomainDisk {
  /** Guest device name: vda, vdb, ... (virtio bus). */
  target: string;
  path: string;
  format: ImageFormat;
}

export interface DomainSpec {
  name: string;
  disks: readonly DomainDisk[];
  /** Default 64. */
  memoryMiB?: number;
  /** Default 'q35'. */
  machine?: 'q35' | 'pc';
  /** 'bios' (SeaBIOS, default) or 'efi' (OVMF with an nvram file, for boot-file tests). */
  firmware?: 'bios' | 'efi';
  /** Direct kernel boot (for a real Linux guest); replaces the firmware-only boot. */
  kernelBoot?: { kernel: string; initrd?: string; cmdline?: string };
  /** Raw XML put inside <devices> as is (serial console, guest-agent channel, ...). */
  extraDevicesXml?: string;
}

export function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

/**
 * A firmware-only TCG guest (this host has no /dev/kvm): no OS, so nothing
 * in the guest writes its disks. SeaBIOS finds no bootable disk and, with
 * rebootTimeout -1, halts instead of rebooting in a loop, so an idle test
 * VM costs about 1% of a core. No USB, no balloon: fewer devices, faster start.
 */
export function domainXml(spec: DomainSpec): string {
  const machine = spec.machine ?? 'q35';
  const efi = spec.firmware === 'efi';
  const type = `<type arch='x86_64' machine='${machine}'>hvm</type>`;
  const kb = spec.kernelBoot;
  const os = kb
    ? `<os>${type}<kernel>${xmlEscape(kb.kernel)}</kernel>` +
      (kb.initrd ? `<initrd>${xmlEscape(kb.initrd)}</initrd>` : '') +
      (kb.cmdline ? `<cmdline>${xmlEscape(kb.cmdline)}</cmdline>` : '') +
      `</os>\n  <features><acpi/></features>`
    : efi
      ? `<os firmware='efi'>${type}<boot dev='hd'/></os>\n  <features><acpi/></features>`
      : `<os>${type}<boot dev='hd'/><bios rebootTimeout='-1'/></os>`;
  const disks = spec.disks
    .map(
      (d) => `    <disk type='file' device='disk'>
      <driver name='qemu' type='${d.format}'/>
      <source file='${xmlEscape(d.path)}'/>
      <target dev='${xmlEscape(d.target)}' bus='virtio'/>
    </disk>`,
    )
    .join('\n');
  return `<domain type='qemu'>
  <name>${xmlEscape(spec.name)}</name>
  <memory unit='MiB'>${spec.memoryMiB ?? 64}</memory>
  <vcpu>1</vcpu>
  ${os}
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
${disks}
${spec.extraDevicesXml ? `${spec.extraDevicesXml}\n` : ''}    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

export interface BackupXmlSpec {
  /** Unix socket of the pull-mode NBD server. */
  socket: string;
  /** Disks to export, with the scratch file QEMU keeps copy-before-write data in. */
  disks: readonly { target: string; scratch: string }[];
  /** Disks of the VM not to export (listed with backup='no'). */
  skip?: readonly string[];
  /** Checkpoint to back up changes since (incremental or differential job). */
  incremental?: string;
}

export function backupXml(spec: BackupXmlSpec): string {
  const lines = [`<domainbackup mode='pull'>`];
  if (spec.incremental !== undefined) lines.push(`  <incremental>${xmlEscape(spec.incremental)}</incremental>`);
  lines.push(`  <server transport='unix' socket='${xmlEscape(spec.socket)}'/>`, '  <disks>');
  for (const d of spec.disks) {
    lines.push(
      `    <disk name='${xmlEscape(d.target)}' backup='yes' type='file'><scratch file='${xmlEscape(d.scratch)}'/></disk>`,
    );
  }
  for (const target of spec.skip ?? []) lines.push(`    <disk name='${xmlEscape(target)}' backup='no'/>`);
  lines.push('  </disks>', '</domainbackup>', '');
  return lines.join('\n');
}

export interface CheckpointXmlSpec {
  name: string;
  /** Disks that get a dirty bitmap. */
  disks: readonly string[];
  /** Disks of the VM left out of the checkpoint (checkpoint='no'). */
  skip?: readonly string[];
  description?: string;
}

export function checkpointXml(spec: CheckpointXmlSpec): string {
  const lines = [`<domaincheckpoint>`, `  <name>${xmlEscape(spec.name)}</name>`];
  if (spec.description !== undefined) lines.push(`  <description>${xmlEscape(spec.description)}</description>`);
  lines.push('  <disks>');
  for (const d of spec.disks) lines.push(`    <disk name='${xmlEscape(d)}' checkpoint='bitmap'/>`);
  for (const d of spec.skip ?? []) lines.push(`    <disk name='${xmlEscape(d)}' checkpoint='no'/>`);
  lines.push('  </disks>', '</domaincheckpoint>', '');
  return lines.join('\n');
}
