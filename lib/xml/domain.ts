/**
 * What a backup needs to know from a libvirt domain XML (`virsh dumpxml`,
 * virDomainGetXMLDesc): the domain's name and uuid, its disks, and the boot
 * files beside them (loader, nvram, kernel, initrd) that a backup copies.
 * Pure, no I/O; see https://libvirt.org/formatdomain.html.
 */
import { parseXmlDocument, XmlDocumentError, type XmlElement } from './xmlTree.js';

/** `<disk type=...>`: where the disk's data lives. Other values libvirt knows: dir, nvme, vhostuser, vhostvdpa. */
export type DiskType = 'file' | 'block' | 'network' | 'volume' | (string & {});
/** `<disk device=...>`. */
export type DiskDevice = 'disk' | 'cdrom' | 'floppy' | 'lun' | (string & {});

export interface DomainDisk {
  /** Guest device name (`<target dev>`): vda, sda, hdc. Backup files are named by it. */
  target: string;
  /** `<target bus>`: virtio, scsi, sata, ide, fdc... */
  bus?: string;
  device: DiskDevice;
  type: DiskType;
  /** Image format (`<driver type>`): qcow2, raw...; undefined when the XML names none. */
  format?: string;
  /**
   * The host-side source: `<source file>` (file), `<source dev>` (block),
   * `<source name>` (network). Undefined for volume disks (see pool/volume)
   * and for empty drives (a cdrom without medium).
   */
  path?: string;
  /** Volume disks: the storage pool and volume; the path must be looked up in libvirt. */
  pool?: string;
  volume?: string;
  /** Network disks: `<source protocol>` (nbd, rbd, iscsi, ...). */
  protocol?: string;
  /** `<driver discard>`: unmap or ignore. */
  discard?: string;
  readonly: boolean;
  /** Backing chain below the active image, top first (files or block devices). */
  backingStore: string[];
}

/** Host files the domain boots from, as `<os>` names them. */
export interface BootFiles {
  loader?: string;
  nvram?: string;
  kernel?: string;
  initrd?: string;
}

export interface DomainInfo {
  name: string;
  uuid?: string;
  /** Hypervisor type: qemu, kvm. */
  hypervisor?: string;
  disks: DomainDisk[];
  bootFiles: BootFiles;
  /** An emulated (swtpm) TPM: its state lives outside the disks and is not backed up. */
  emulatedTpm: boolean;
}

export const BOOT_FILE_KINDS = ['loader', 'nvram', 'kernel', 'initrd'] as const;

function backingChain(disk: XmlElement): string[] {
  const chain: string[] = [];
  let store = disk.child('backingStore');
  // Each level nests the next; an empty <backingStore/> ends the chain.
  while (store) {
    const source = store.child('source');
    const path = source?.attr('file') ?? source?.attr('dev') ?? source?.attr('name');
    if (path !== undefined) chain.push(path);
    store = store.child('backingStore');
  }
  return chain;
}

function readDisk(disk: XmlElement, index: number, source: string): DomainDisk {
  const target = disk.child('target');
  const dev = target?.attr('dev');
  if (dev === undefined || dev === '') {
    throw new XmlDocumentError(source, `disk #${index + 1} has no <target dev='...'>`);
  }
  const type = disk.attr('type') ?? 'file';
  const src = disk.child('source');
  const driver = disk.child('driver');
  const result: DomainDisk = {
    target: dev,
    device: disk.attr('device') ?? 'disk',
    type,
    readonly: disk.child('readonly') !== undefined,
    backingStore: backingChain(disk),
  };
  const bus = target?.attr('bus');
  if (bus !== undefined) result.bus = bus;
  const format = driver?.attr('type');
  if (format !== undefined && format !== '') result.format = format;
  const discard = driver?.attr('discard');
  if (discard !== undefined) result.discard = discard;
  let path: string | undefined;
  if (type === 'file') path = src?.attr('file');
  else if (type === 'block') path = src?.attr('dev');
  else if (type === 'network') {
    path = src?.attr('name');
    const protocol = src?.attr('protocol');
    if (protocol !== undefined) result.protocol = protocol;
  } else if (type === 'volume') {
    const pool = src?.attr('pool');
    const volume = src?.attr('volume');
    if (pool !== undefined) result.pool = pool;
    if (volume !== undefined) result.volume = volume;
  }
  if (path !== undefined && path !== '') result.path = path;
  return result;
}

function bootFile(os: XmlElement | undefined, kind: (typeof BOOT_FILE_KINDS)[number]): string | undefined {
  const el = os?.child(kind);
  if (!el) return undefined;
  // libvirt >= 8.5 may write <nvram type='file'><source file='...'/></nvram>.
  const path = el.text !== '' ? el.text : el.child('source')?.attr('file');
  return path === undefined || path === '' ? undefined : path;
}

/** Parse a domain XML. Throws XmlDocumentError naming what is wrong. */
export function parseDomainXml(xml: string, source = 'domain XML'): DomainInfo {
  const root = parseXmlDocument(xml, source, 'domain');
  const name = root.childText('name');
  if (name === undefined) throw new XmlDocumentError(source, 'the domain has no <name>');
  const info: DomainInfo = {
    name,
    disks: (root.child('devices')?.all('disk') ?? []).map((d, i) => readDisk(d, i, source)),
    bootFiles: {},
    emulatedTpm: (root.child('devices')?.all('tpm') ?? []).some((t) => t.child('backend')?.attr('type') === 'emulator'),
  };
  const uuid = root.childText('uuid');
  if (uuid !== undefined) info.uuid = uuid;
  const hypervisor = root.attr('type');
  if (hypervisor !== undefined) info.hypervisor = hypervisor;
  const os = root.child('os');
  for (const kind of BOOT_FILE_KINDS) {
    const path = bootFile(os, kind);
    if (path !== undefined) info.bootFiles[kind] = path;
  }
  const seen = new Set<string>();
  for (const d of info.disks) {
    if (seen.has(d.target)) throw new XmlDocumentError(source, `two disks have target dev '${d.target}'`);
    seen.add(d.target);
  }
  return info;
}
