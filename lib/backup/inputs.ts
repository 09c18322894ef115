/**
 * Gathering what the backup plan is decided from (I/O only, no rules):
 * the target directory's file names, `<domain>.cpt`, the saved checkpoint
 * XML files, the names in saved vmconfig files, and the domain's
 * checkpoints as libvirt has them. Unreadable or corrupt files are
 * BackupErrors naming the file.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Domain } from '../libvirt/domain.js';
import { VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN } from '../libvirt/flags.js';
import { checkpointListFileName, parseVmConfigFileName } from '../format/naming.js';
import { parseCheckpointXml, type SavedCheckpoint } from '../xml/checkpointXml.js';
import { parseDomainXml, type DomainInfo } from '../xml/domain.js';
import { CheckpointChainError, parseCheckpointList, type CheckpointLink } from './checkpointChain.js';
import { BackupError, messageOf } from './errors.js';
import type { BackupPlanInput, Level, OutputType } from './level.js';

function errnoCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | null)?.code;
}

/** Base names in `dir`; [] when it does not exist yet. */
export async function listDirectory(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return [];
    throw new BackupError('output', `Cannot read directory ${dir}: ${messageOf(e)}`, { cause: e });
  }
}

/** `<domain>.cpt` in `dir`, parsed; undefined when there is none. */
export async function readCheckpointList(dir: string, domain: string): Promise<string[] | undefined> {
  const file = join(dir, checkpointListFileName(domain));
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return undefined;
    throw new BackupError('checkpoint', `Cannot read checkpoint list ${file}: ${messageOf(e)}`, { cause: e });
  }
  try {
    return parseCheckpointList(text, file);
  } catch (e) {
    if (e instanceof CheckpointChainError) throw new BackupError('checkpoint', `${e.message}. Run a full backup to start a new chain.`, { cause: e });
    throw e;
  }
}

/** The `*.xml` files of the checkpoint directory, parsed. */
export async function readSavedCheckpoints(dir: string): Promise<SavedCheckpoint[]> {
  const names = (await listDirectory(dir)).filter((f) => f.endsWith('.xml')).sort();
  const saved: SavedCheckpoint[] = [];
  for (const name of names) {
    const file = join(dir, name);
    let xml: string;
    try {
      xml = await readFile(file, 'utf8');
    } catch (e) {
      throw new BackupError('checkpoint', `Cannot read saved checkpoint ${file}: ${messageOf(e)}`, { cause: e });
    }
    try {
      saved.push(parseCheckpointXml(xml, file));
    } catch (e) {
      throw new BackupError('checkpoint', `Saved checkpoint ${file} is not a valid checkpoint XML: ${messageOf(e)}`, { cause: e });
    }
  }
  return saved;
}

/** `<name>` of each `vmconfig.*.xml` among `files` (files that do not parse are left out). */
export async function readVmConfigNames(dir: string, files: readonly string[]): Promise<string[]> {
  const names: string[] = [];
  for (const f of files.filter((n) => parseVmConfigFileName(n) !== undefined)) {
    try {
      names.push(parseDomainXml(await readFile(join(dir, f), 'utf8'), f).name);
    } catch {
      // Not ours to judge here; the ownership check works from what parses.
    }
  }
  return names;
}

/** The domain's checkpoints as libvirt has them, with parents and creation times. */
export async function readLibvirtCheckpoints(domain: Domain): Promise<CheckpointLink[]> {
  try {
    const checkpoints = await domain.listAllCheckpoints();
    const links: CheckpointLink[] = [];
    for (const c of checkpoints) {
      const parsed = parseCheckpointXml(await c.getXMLDesc(VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN), `checkpoint ${c.name}`);
      const link: CheckpointLink = { name: parsed.name };
      if (parsed.parent !== undefined) link.parent = parsed.parent;
      if (parsed.creationTime !== undefined) link.creationTime = parsed.creationTime;
      links.push(link);
    }
    return links;
  } catch (e) {
    throw new BackupError('libvirt', `Cannot list the checkpoints of domain ${domain.name}: ${messageOf(e)}`, { cause: e });
  }
}

export interface PlanRequest {
  level: Level;
  type: OutputType;
  raw: boolean;
  include?: readonly string[];
  exclude?: readonly string[];
  stdout: boolean;
  compress: number | false;
  worker?: number;
  startOnly?: boolean;
  killOnly?: boolean;
}

/** Everything planBackup() needs, read from the domain, libvirt and the disk. */
export async function gatherPlanInput(
  request: PlanRequest,
  domain: Domain,
  domainXml: string,
  dirs: { targetDir: string; checkpointDir: string },
  now: Date,
  running = true,
): Promise<{ input: BackupPlanInput; info: DomainInfo }> {
  let info: DomainInfo;
  try {
    info = parseDomainXml(domainXml, `domain XML of ${domain.name}`);
  } catch (e) {
    throw new BackupError('libvirt', messageOf(e), { cause: e });
  }
  const targetFiles = await listDirectory(dirs.targetDir);
  const input: BackupPlanInput = {
    domain: info,
    running,
    level: request.level,
    type: request.type,
    raw: request.raw,
    stdout: request.stdout,
    compress: request.compress,
    targetDir: dirs.targetDir,
    targetFiles,
    checkpointDir: dirs.checkpointDir,
    savedCheckpoints: await readSavedCheckpoints(dirs.checkpointDir),
    libvirtCheckpoints: await readLibvirtCheckpoints(domain),
    vmConfigNames: request.stdout ? [] : await readVmConfigNames(dirs.targetDir, targetFiles),
    now,
  };
  const list = await readCheckpointList(dirs.targetDir, info.name);
  if (list !== undefined) input.checkpointList = list;
  if (request.include) input.include = request.include;
  if (request.exclude) input.exclude = request.exclude;
  if (request.worker !== undefined) input.worker = request.worker;
  if (request.startOnly) input.startOnly = true;
  if (request.killOnly) input.killOnly = true;
  return { input, info };
}
