/**
 * The domain config of an instant recovery (`virtnbdmap --boot`), made from
 * the backed-up `vmconfig.<ident>.xml`: what a restore does to it
 * (lib/restore/config.ts: uuid removed, renamed, each disk pointing at its
 * new image, disks without data removed), with the images being qcow2
 * overlays whose backing file is our NBD export of the disk's chain; plus
 * what a domain living next to (or instead of) the original needs: boot
 * files (kernel, initrd, firmware, a private copy of the NVRAM) where they
 * can be found, and no leftovers of the original's run (guest agent
 * socket paths in libvirt's per-domain directory, `vnet` tap names), which
 * libvirt then picks anew. Everything else stays as it was. Pure.
 */
import { attr, buildOrdered, children, parseOrdered, removeNode, tagOf, type XmlNode } from '../xml/orderedXml.js';
import { adjustDomainConfig } from '../restore/config.js';
import { parseDomainXml } from '../xml/domain.js';

export interface InstantDisk {
  /** Guest device name (vda). */
  target: string;
  /** The qcow2 overlay backed by the export. */
  overlay: string;
}

/** Boot files to use instead of those the config names (absent: keep the config's). */
export interface BootFilePaths {
  kernel?: string;
  initrd?: string;
  loader?: string;
  nvram?: string;
}

export interface InstantConfigOptions {
  /** Domain name (default `instant_<original name>`). */
  name?: string;
  disks: readonly InstantDisk[];
  bootFiles?: BootFilePaths;
}

export interface InstantConfig {
  xml: string;
  name: string;
  /** The original domain's name. */
  original: string;
  /** One line per change, for the log. */
  changes: string[];
}

type Node = XmlNode;

/** libvirt's own per-domain directories: a path there belongs to the original domain's run. */
const RUN_PATH = /\/libvirt\/qemu\/(channel|domain-)/;

/** The instant-recovery config. Throws DomainConfigError (a RestoreError) for a document that is not a domain. */
export function instantDomainConfig(xml: string, options: InstantConfigOptions, source = 'vmconfig'): InstantConfig {
  const original = parseDomainXml(xml, source).name;
  const name = options.name ?? `instant_${original}`;
  const adjusted = adjustDomainConfig(xml, { name, disks: options.disks.map((d) => ({ target: d.target, path: d.overlay, format: 'qcow2' })) }, source);
  const changes = [...adjusted.changes];
  const tree = (parseOrdered(adjusted.xml) as { tree: Node[] }).tree;
  const domain = tree.find((n) => tagOf(n) === 'domain')!;
  const top = children(domain);

  const os = top.find((n) => tagOf(n) === 'os');
  for (const [kind, path] of Object.entries(options.bootFiles ?? {})) {
    const element = os && children(os).find((n) => tagOf(n) === kind);
    if (!element || path === undefined) continue;
    element[kind] = [{ '#text': path }];
    changes.push(`${kind} -> ${path}`);
  }

  const devices = top.find((n) => tagOf(n) === 'devices');
  for (const device of devices ? children(devices) : []) {
    const tag = tagOf(device);
    if (tag === 'channel' && attr(device, 'type') === 'unix') {
      const list = children(device);
      const src = list.find((n) => tagOf(n) === 'source');
      const path = src && attr(src, 'path');
      if (src && path && RUN_PATH.test(path)) {
        removeNode(list, src);
        changes.push(`channel ${path}: left for libvirt to choose`);
      }
    }
    if (tag === 'interface') {
      const list = children(device);
      const target = list.find((n) => tagOf(n) === 'target');
      const dev = target && attr(target, 'dev');
      if (target && dev && /^(vnet|macvtap)\d+$/.test(dev)) {
        removeNode(list, target);
        changes.push(`interface ${dev}: tap name left for libvirt to choose`);
      }
    }
  }
  return { xml: buildOrdered(tree), name, original, changes };
}
