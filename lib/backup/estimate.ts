/**
 * How much the next incremental or differential backup would save: libvirt
 * reports, per disk, the bytes its dirty bitmap marks since a checkpoint
 * (checkpoint XML with VIR_DOMAIN_CHECKPOINT_XML_SIZE). `-p` prints it,
 * `-T` skips a backup below a threshold. It is an estimate in the sense
 * that zeroed dirty ranges are not saved as data (sparse detection).
 */
import type { Domain } from '../libvirt/domain.js';
import { VIR_DOMAIN_CHECKPOINT_XML_SIZE } from '../libvirt/flags.js';
import { parseCheckpointXml } from '../xml/checkpointXml.js';
import { BackupError, messageOf } from './errors.js';

/** Bytes marked dirty since checkpoint `name`, summed over `disks` (target devs). */
export async function changedBytesSince(domain: Domain, name: string, disks: readonly string[]): Promise<number> {
  let xml: string;
  try {
    xml = await (await domain.checkpointLookupByName(name)).getXMLDesc(VIR_DOMAIN_CHECKPOINT_XML_SIZE);
  } catch (e) {
    throw new BackupError('libvirt', `Cannot read the size of checkpoint ${name} of domain ${domain.name}: ${messageOf(e)}`, { cause: e });
  }
  const checkpoint = parseCheckpointXml(xml, `checkpoint ${name} of domain ${domain.name}`);
  let total = 0;
  for (const disk of disks) {
    const entry = checkpoint.disks.find((d) => d.name === disk);
    if (entry === undefined || entry.checkpoint !== 'bitmap') continue;
    if (entry.size === undefined) {
      throw new BackupError('libvirt', `libvirt reports no changed size for disk ${disk} in checkpoint ${name} of domain ${domain.name}.`);
    }
    total += entry.size;
  }
  return total;
}
