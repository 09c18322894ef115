/**
 * libvirt checkpoint XML (https://libvirt.org/formatcheckpoint.html): the
 * document a backup job creates its checkpoint from, and the saved copies in
 * a backup set's `checkpoints/<name>.xml` (what `virsh checkpoint-dumpxml`
 * prints, with creationTime, bitmap names and the whole domain inside),
 * which are redefined when libvirt has lost them. Pure, no I/O.
 */
import { buildXmlDocument, parseXmlDocument, XmlDocumentError } from './xmlTree.js';

/** What virtnbdbackup writes into every checkpoint it creates. */
export const CHECKPOINT_DESCRIPTION = 'Backup checkpoint';

export interface CheckpointXmlSpec {
  name: string;
  /** The checkpoint before this one in the chain (virtnbdbackup names it; libvirt checks it). */
  parent?: string;
  /** Defaults to "Backup checkpoint". */
  description?: string;
  /** Disks (target dev) that get a persistent dirty bitmap: the qcow2 disks being backed up. */
  disks: readonly string[];
  /** The domain's other disks, listed with checkpoint='no' (raw disks cannot hold bitmaps). */
  skip?: readonly string[];
}

/** A checkpoint XML given a name that libvirt or a file name could not take. */
export class CheckpointXmlError extends Error {
  override readonly name = 'CheckpointXmlError';
}


/** `<domaincheckpoint>` for virDomainBackupBegin / virDomainCheckpointCreateXML. */
export function buildCheckpointXml(spec: CheckpointXmlSpec): string {
  if (spec.name === '' || spec.name.includes('/')) {
    throw new CheckpointXmlError(`Invalid checkpoint name ${JSON.stringify(spec.name)}: it must be non-empty and hold no "/"`);
  }
  if (spec.disks.length === 0) {
    throw new CheckpointXmlError(`Checkpoint ${spec.name} would cover no disk: at least one disk needs a bitmap`);
  }
  const skip = spec.skip ?? [];
  const both = spec.disks.find((d) => skip.includes(d));
  if (both !== undefined) throw new CheckpointXmlError(`Disk ${both} is listed both with and without a bitmap`);
  const doc: Record<string, unknown> = {
    name: spec.name,
    description: spec.description ?? CHECKPOINT_DESCRIPTION,
  };
  if (spec.parent !== undefined && spec.parent !== '') doc.parent = { name: spec.parent };
  doc.disks = {
    disk: [
      ...spec.disks.map((d) => ({ '@_name': d, '@_checkpoint': 'bitmap' })),
      ...skip.map((d) => ({ '@_name': d, '@_checkpoint': 'no' })),
    ],
  };
  return buildXmlDocument('domaincheckpoint', doc);
}

export interface CheckpointDisk {
  name: string;
  /** bitmap or no. */
  checkpoint: string;
  /** The bitmap's name in the image (libvirt: the checkpoint name). */
  bitmap?: string;
  /** Bytes changed since the checkpoint (present with VIR_DOMAIN_CHECKPOINT_XML_SIZE). */
  size?: number;
}

/** A checkpoint as its XML describes it. */
export interface SavedCheckpoint {
  name: string;
  parent?: string;
  description?: string;
  /** Seconds since the epoch, when libvirt made it. */
  creationTime?: number;
  disks: CheckpointDisk[];
  /** `<domain><name>` inside a dumped checkpoint: whose checkpoint this is. */
  domainName?: string;
  domainUuid?: string;
  /** The XML as read, for redefinition (libvirt wants it verbatim). */
  xml: string;
}

function nonNegativeInt(value: string | undefined, what: string, source: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new XmlDocumentError(source, `${what} is not a non-negative integer: ${JSON.stringify(value)}`);
  return Number(value);
}

/** Parse a checkpoint XML. Throws XmlDocumentError naming what is wrong. */
export function parseCheckpointXml(xml: string, source = 'checkpoint XML'): SavedCheckpoint {
  const root = parseXmlDocument(xml, source, 'domaincheckpoint');
  const name = root.childText('name');
  if (name === undefined) throw new XmlDocumentError(source, 'the checkpoint has no <name>');
  const result: SavedCheckpoint = { name, disks: [], xml };
  const parent = root.child('parent')?.childText('name');
  if (parent !== undefined) result.parent = parent;
  const description = root.childText('description');
  if (description !== undefined) result.description = description;
  const creationTime = nonNegativeInt(root.childText('creationTime'), '<creationTime>', source);
  if (creationTime !== undefined) result.creationTime = creationTime;
  for (const d of root.child('disks')?.all('disk') ?? []) {
    const diskName = d.attr('name');
    if (diskName === undefined) throw new XmlDocumentError(source, 'a <disk> has no name attribute');
    const disk: CheckpointDisk = { name: diskName, checkpoint: d.attr('checkpoint') ?? 'bitmap' };
    const bitmap = d.attr('bitmap');
    if (bitmap !== undefined) disk.bitmap = bitmap;
    const size = nonNegativeInt(d.attr('size'), `size of disk ${diskName}`, source);
    if (size !== undefined) disk.size = size;
    result.disks.push(disk);
  }
  const domain = root.child('domain');
  const domainName = domain?.childText('name');
  if (domainName !== undefined) result.domainName = domainName;
  const domainUuid = domain?.childText('uuid');
  if (domainUuid !== undefined) result.domainUuid = domainUuid;
  return result;
}
