/**
 * Carrying out the checkpoint side of a backup plan (the planning is in
 * level.ts and checkpointChain.ts): redefine in libvirt the saved
 * checkpoints it lost, parent first; delete this tool's checkpoints before
 * a full backup, children first; reset, save and list the checkpoint files
 * of the set; and, when a run fails after its job created a checkpoint,
 * delete that checkpoint again so the next incremental backup still covers
 * its changes (libvirt merges a deleted checkpoint's bitmap into its
 * parent's).
 */
import { readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Domain } from '../libvirt/domain.js';
import { LibvirtError, VIR_ERR_CHECKPOINT_INCONSISTENT, VIR_ERR_NO_DOMAIN_CHECKPOINT } from '../libvirt/errors.js';
import {
  VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE,
  VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE,
  VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY,
  VIR_DOMAIN_CHECKPOINT_XML_SIZE,
} from '../libvirt/flags.js';
import { checkpointListFileName } from '../format/naming.js';
import { pythonJsonDumps } from '../format/pythonJson.js';
import type { SavedCheckpoint } from '../xml/checkpointXml.js';
import { writeFileAtomic } from './atomicFile.js';
import { BackupError, messageOf } from './errors.js';
import { readCheckpointList } from './inputs.js';
import type { BackupLogger } from './log.js';

function isMissingCheckpoint(e: unknown): boolean {
  return e instanceof LibvirtError && e.code === VIR_ERR_NO_DOMAIN_CHECKPOINT;
}

/**
 * Redefine `saved` (parent first) from their saved XML. `validate` (inc and
 * diff) also has libvirt check that each disk still holds the bitmap, so a
 * lost bitmap is reported now, with advice, rather than by the backup job.
 * Without it (full) a failure is only a warning: the checkpoints are about
 * to be deleted anyway.
 */
export async function redefineCheckpoints(
  domain: Domain,
  saved: readonly SavedCheckpoint[],
  options: { validate: boolean; checkpointDir: string },
  log: BackupLogger,
): Promise<void> {
  for (const c of saved) {
    log.info(`Redefining missing checkpoint [${c.name}] from ${join(options.checkpointDir, `${c.name}.xml`)}`);
    const flags = VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE | (options.validate ? VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE : 0);
    try {
      await domain.checkpointCreateXML(c.xml, flags);
    } catch (e) {
      if (!options.validate) {
        log.warn(`Cannot redefine checkpoint ${c.name}: ${messageOf(e)}; its bitmaps may stay in the disk images.`);
        continue;
      }
      const bitmap = e instanceof LibvirtError && (e.code === VIR_ERR_CHECKPOINT_INCONSISTENT || /bitmap/i.test(e.message));
      throw new BackupError(
        bitmap ? 'bitmap' : 'checkpoint',
        `Cannot redefine checkpoint ${c.name} of domain ${domain.name} from its saved XML: ${messageOf(e)}. ` +
          'The backup chain cannot continue: run a full backup to start a new one.',
        { cause: e },
      );
    }
  }
}

/** Delete checkpoints (children first), their bitmaps too where libvirt can. */
export async function removeCheckpoints(domain: Domain, names: readonly string[], log: BackupLogger): Promise<void> {
  for (const name of names) {
    log.info(`Removing checkpoint [${name}]`);
    try {
      await (await domain.checkpointLookupByName(name)).delete();
    } catch (e) {
      if (isMissingCheckpoint(e)) continue;
      // A checkpoint whose bitmap is gone cannot be deleted with it; drop the metadata so the chain can restart.
      log.warn(`Cannot delete checkpoint ${name} with its bitmaps (${messageOf(e)}); removing its metadata only.`);
      try {
        await (await domain.checkpointLookupByName(name)).delete(VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY);
      } catch (e2) {
        throw new BackupError('checkpoint', `Cannot delete checkpoint ${name} of domain ${domain.name}: ${messageOf(e2)}`, { cause: e2 });
      }
    }
  }
}

/** full: remove the saved checkpoint files and `<domain>.cpt`. */
export async function resetCheckpointFiles(checkpointDir: string, targetDir: string, domainName: string, log: BackupLogger): Promise<void> {
  const files = [
    ...(await readdir(checkpointDir).catch(() => [] as string[])).filter((f) => f.endsWith('.xml')).map((f) => join(checkpointDir, f)),
    join(targetDir, checkpointListFileName(domainName)),
  ];
  for (const file of files) {
    try {
      await unlink(file);
      log.debug(`Removed ${file}`);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw new BackupError('checkpoint', `Cannot remove old checkpoint file ${file}: ${messageOf(e)}`, { cause: e });
    }
  }
}

/** The new checkpoint's XML as virtnbdbackup saves it: with sizes where libvirt can say them. */
export async function checkpointXmlOf(domain: Domain, name: string, log: BackupLogger): Promise<string> {
  try {
    const checkpoint = await domain.checkpointLookupByName(name);
    try {
      return await checkpoint.getXMLDesc(VIR_DOMAIN_CHECKPOINT_XML_SIZE);
    } catch (e) {
      log.debug(`Checkpoint XML with sizes unavailable (${messageOf(e)}); saving it without.`);
      return await checkpoint.getXMLDesc();
    }
  } catch (e) {
    throw new BackupError('checkpoint', `Cannot read the new checkpoint ${name} of domain ${domain.name}: ${messageOf(e)}`, { cause: e });
  }
}

/** `checkpoints/<name>.xml`. */
export async function saveCheckpointFile(checkpointDir: string, name: string, xml: string, log: BackupLogger): Promise<string> {
  const file = join(checkpointDir, `${name}.xml`);
  log.info(`Saving checkpoint config to: [${file}]`);
  try {
    await writeFileAtomic(file, xml);
  } catch (e) {
    throw new BackupError('checkpoint', `Cannot save checkpoint ${name} to ${file}: ${messageOf(e)}`, { cause: e });
  }
  return file;
}

/**
 * Write `<domain>.cpt` (Python's json.dumps of the list, no newline), or
 * remove it when `list` is undefined.
 */
export async function writeCheckpointList(targetDir: string, domainName: string, list: readonly string[] | undefined): Promise<void> {
  const file = join(targetDir, checkpointListFileName(domainName));
  try {
    if (list === undefined) await unlink(file).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? undefined : Promise.reject(e)));
    else await writeFileAtomic(file, pythonJsonDumps([...list]));
  } catch (e) {
    throw new BackupError('checkpoint', `Cannot update checkpoint list ${file}: ${messageOf(e)}`, { cause: e });
  }
}

/** Append `name` to `<domain>.cpt`; returns the list as it was (undefined: there was none), to put back on failure. */
export async function appendCheckpointList(targetDir: string, domainName: string, name: string): Promise<string[] | undefined> {
  const before = await readCheckpointList(targetDir, domainName);
  await writeCheckpointList(targetDir, domainName, [...(before ?? []), name]);
  return before;
}

/**
 * After a failed run: delete the checkpoint its job created. Its bitmap is
 * merged into the parent's, so the changes it recorded stay tracked.
 */
export async function rollBackCheckpoint(domain: Domain, name: string, log: BackupLogger): Promise<void> {
  log.info(`Removing checkpoint [${name}] of the failed backup, so the next backup still covers its changes.`);
  try {
    await (await domain.checkpointLookupByName(name)).delete();
  } catch (e) {
    if (isMissingCheckpoint(e)) return;
    log.error(
      `Cannot remove checkpoint ${name} of the failed backup: ${messageOf(e)}. ` +
        `Remove it (virsh checkpoint-delete ${domain.name} ${name}) or run a full backup next.`,
    );
  }
}
