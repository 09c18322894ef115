/**
 * The domain config of a restored VM (`-c/--adjust-config`), made from the
 * backed-up `vmconfig.<ident>.xml` so it can be defined next to the
 * original: its uuid removed (libvirt makes a new one), its name
 * `restore_<name>` (or --name), each restored disk pointing at its new
 * image (a plain file; backing chains removed, the image is whole), and
 * every disk that was not restored removed, cdrom, floppy and lun devices
 * included; raw-format disks stay only with --raw. Everything else is kept
 * as it was, in order (fast-xml-parser's order-preserving tree). Pure.
 */
import { attr, attributes, buildOrdered, child, children, parseOrdered, removeNode, tagOf, text, type XmlNode } from '../xml/orderedXml.js';
import { RestoreError } from './errors.js';

export interface RestoredDiskImage {
  /** Guest device name, `<target dev>`. */
  target: string;
  /** Absolute path of the restored image. */
  path: string;
  /** Image format of the restored file (qcow2, or raw for images copied as they are). */
  format: string;
}

export interface AdjustConfigOptions {
  /** --name; default `restore_<original name>` (kept if it already starts with `restore`). */
  name?: string;
  /** The disks restored, by target. */
  disks: readonly RestoredDiskImage[];
}

export interface AdjustedConfig {
  xml: string;
  /** The domain's new name. */
  name: string;
  /** One line per change, for the log. */
  changes: string[];
}

/** The domain XML cannot be adjusted (not XML, no <domain>, no <name>). */
export class DomainConfigError extends RestoreError {
  override readonly name: string = 'DomainConfigError';
}

type Node = XmlNode;

/** The new name, as virtnbdrestore picks it. */
export function restoredDomainName(original: string, name?: string): string {
  if (name !== undefined) return name;
  return original.startsWith('restore') ? original : `restore_${original}`;
}

/** Adjust a backed-up domain XML for the restored disks. Throws DomainConfigError for a document that is not a domain. */
export function adjustDomainConfig(xml: string, options: AdjustConfigOptions, source = 'domain config'): AdjustedConfig {
  const parsed = parseOrdered(xml);
  if ('error' in parsed) throw new DomainConfigError(`${source} is not well-formed XML (${parsed.error})`);
  const tree = parsed.tree;
  const domain = tree.find((n) => tagOf(n) === 'domain');
  if (!domain) throw new DomainConfigError(`${source} has no <domain> root element`);
  const top = children(domain);
  const changes: string[] = [];

  const uuid = top.find((n) => tagOf(n) === 'uuid');
  if (uuid) {
    removeNode(top, uuid);
    changes.push('removed the uuid (libvirt assigns a new one)');
  }
  const nameNode = top.find((n) => tagOf(n) === 'name');
  if (!nameNode) throw new DomainConfigError(`${source} has no <name>`);
  const original = text(nameNode);
  const newName = restoredDomainName(original, options.name);
  nameNode[tagOf(nameNode)!] = [{ '#text': newName }];
  if (newName !== original) changes.push(`name ${original} -> ${newName}`);

  const restored = new Map(options.disks.map((d) => [d.target, d]));
  const devices = top.find((n) => tagOf(n) === 'devices');
  const list = devices ? children(devices) : [];
  for (const disk of list.filter((n) => tagOf(n) === 'disk')) {
    const target = attr(child(disk, 'target') ?? {}, 'dev') ?? '?';
    const device = attr(disk, 'device') ?? 'disk';
    const image = restored.get(target);
    if (device === 'cdrom' || device === 'floppy' || device === 'lun') {
      removeNode(list, disk);
      changes.push(`removed ${device} ${target}`);
      continue;
    }
    if (!image) {
      removeNode(list, disk);
      changes.push(`removed disk ${target}: not restored`);
      continue;
    }
    pointAt(disk, image);
    changes.push(`disk ${target} -> ${image.path}`);
  }
  return { xml: buildOrdered(tree), name: newName, changes };
}

/** Makes `disk` a plain file disk on `image`: no pool/volume, no block device, no backing chain. */
function pointAt(disk: Node, image: RestoredDiskImage): void {
  attributes(disk)['@_type'] = 'file';
  const list = children(disk);
  let source = child(disk, 'source');
  if (!source) {
    source = { source: [], ':@': {} };
    const target = list.findIndex((c) => tagOf(c) === 'target');
    list.splice(target < 0 ? list.length : target, 0, source);
  }
  // Only the file stays: dev, pool, volume, protocol, name, index belong to the old storage.
  const sourceAttrs: Record<string, string> = { '@_file': image.path };
  source[':@'] = sourceAttrs;
  // Children of <source> (seclabel, reservations, dataStore...) describe the old storage too.
  source['source'] = [];
  for (const store of list.filter((c) => tagOf(c) === 'backingStore')) removeNode(list, store);
  const driver = child(disk, 'driver');
  if (driver) attributes(driver)['@_type'] = image.format;
  else list.unshift({ driver: [], ':@': { '@_name': 'qemu', '@_type': image.format } });
}
