/**
 * Restore from a backup set that can be listed first (a directory or a zip
 * file): everything is planned before anything is written. The metadata
 * of every data file is read (meta frames only), each disk's chain is
 * planned (holes, a wrong --until, inconsistent --sequence are refused
 * here), the domain config and qcow2 options are picked, and the final
 * image names are checked to be free. Then each disk is rebuilt under a
 * temporary name; only when all of them are complete are they moved to
 * their final names. On any failure every image written so far is removed.
 * The output side is the restore target's (target.ts): this host, or a
 * remote hypervisor reached by ssh.
 */
import { mkdir, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Logger } from '../cli/logger.js';
import { parseChecksumFile } from '../format/adler32.js';
import { parseDomainXml, type DomainInfo } from '../xml/domain.js';
import { planDiskChain, planSequence, diskOf, type ChainFile, type DiskChain } from './chain.js';
import { DiskImage } from './diskRestore.js';
import { BackupSetError, RestoreError } from './errors.js';
import type { RestoreContext, RestoreOptions, RestoreResult } from './options.js';
import { noProgress } from './options.js';
import { checkTargetsFree, clearStalePartial, commitImages, createWorkDir, finalImagePaths, temporaryPath, type PendingImage } from './outputs.js';
import { finishConfig } from './finish.js';
import { copyRawImage, copyRawImageRemote } from './rawCopy.js';
import { SshHostFiles } from '../remote/sshHostFiles.js';
import { readDataHead, type BackupSetReader } from './set.js';
import { localTarget, type RestoreTarget } from './target.js';
import { classifySetFile, pickQcowInfo, pickVmConfig, qcowCreateOptions, type ChainEnd } from './setFiles.js';
import { FileSource } from '../../streams/FileSource.js';

const SMALL_FILE_MAX = 16 * 1024 * 1024;

interface DiskPlan {
  disk: string;
  /** A raw image copied as it is. */
  raw?: string;
  chain?: DiskChain;
}

function endOf(plan: DiskPlan | undefined): ChainEnd {
  const last = plan?.chain?.steps[plan.chain.steps.length - 1];
  if (!last) return {};
  return { ident: last.name.ident ?? (last.name.level === 'copy' ? 'copy' : last.metadata.checkpointName), checkpoint: plan!.chain!.checkpoint };
}

/** Read the head of every data file: stream metadata, or a raw image. */
async function scanDataFiles(reader: BackupSetReader, names: readonly string[], logger: Logger): Promise<{ streams: ChainFile[]; raws: Map<string, string> }> {
  const streams: ChainFile[] = [];
  const raws = new Map<string, string>();
  for (const file of names) {
    const kind = classifySetFile(file);
    if (kind.kind !== 'data') throw new BackupSetError(`${file} is not a data file name (<disk>.full.data, <disk>.inc.<ident>.data, ...)`);
    const head = await readDataHead(await reader.open(file), file);
    if (head.format === 'raw') {
      const other = raws.get(kind.data!.disk);
      if (other !== undefined) throw new BackupSetError(`Disk ${kind.data!.disk} has two raw images in the set: ${other} and ${file}`);
      raws.set(kind.data!.disk, file);
      logger.debug(`${file}: raw image`);
    } else {
      streams.push({ file, name: kind.data!, metadata: head.metadata });
      logger.debug(`${file}: disk ${head.metadata.diskName}, checkpoint ${head.metadata.checkpointName}, parent ${String(head.metadata.parentCheckpoint)}, date ${head.metadata.date}`);
    }
  }
  return { streams, raws };
}

export async function restoreFromSet(
  reader: BackupSetReader,
  options: RestoreOptions,
  context: RestoreContext,
  target: RestoreTarget = localTarget(),
): Promise<RestoreResult> {
  const files = target.files;
  const { logger } = context;
  const names = reader.names;
  const sequence = options.sequence;
  let dataNames: string[];
  if (sequence) {
    const missing = sequence.filter((f) => !names.includes(f));
    if (missing.length > 0) throw new BackupSetError(`--sequence names files that are not in ${reader.label}: ${missing.join(', ')}`);
    dataNames = [...sequence];
  } else {
    dataNames = names.filter((n) => classifySetFile(n).kind === 'data');
    if (options.disk !== undefined) dataNames = dataNames.filter((n) => classifySetFile(n).data!.disk === options.disk);
  }
  if (dataNames.length === 0) {
    throw new BackupSetError(`No data files${options.disk ? ` of disk ${options.disk}` : ''} found in ${reader.label}`);
  }

  // 1. Plan every disk's chain (nothing written yet).
  const { streams, raws } = await scanDataFiles(reader, dataNames, logger);
  const plans = new Map<string, DiskPlan>();
  if (sequence) {
    if (raws.size > 0) throw new BackupSetError(`--sequence cannot hold raw images (${[...raws.values()].join(', ')})`);
    const chain = planSequence(streams, { until: options.until });
    plans.set(chain.disk, { disk: chain.disk, chain });
  } else {
    const byDisk = new Map<string, ChainFile[]>();
    for (const f of streams) {
      const disk = diskOf(f);
      if (disk !== f.name.disk) {
        throw new RestoreError(`${f.file} is named for disk ${f.name.disk} but its metadata says disk ${disk}; rename it back or restore it with --sequence`);
      }
      byDisk.set(disk, [...(byDisk.get(disk) ?? []), f]);
    }
    for (const [disk, file] of raws) {
      if (byDisk.has(disk)) throw new BackupSetError(`Disk ${disk} has both a raw image (${file}) and sparse stream files in the set; restore one of them with --sequence or move it away`);
      plans.set(disk, { disk, raw: file });
    }
    for (const [disk, files] of [...byDisk].sort(([a], [b]) => (a < b ? -1 : 1))) {
      plans.set(disk, { disk, chain: planDiskChain(disk, files, { until: options.until }) });
    }
  }
  for (const plan of plans.values()) {
    for (const note of plan.chain?.notes ?? []) logger.info(`Disk ${plan.disk}: ${note}`);
  }

  // 2. Domain config, disk selection, qcow2 options, checksums.
  const first = [...plans.values()][0];
  const vmConfigName = pickVmConfig(names, endOf(first));
  let vmConfigXml: string | undefined;
  let domain: DomainInfo | undefined;
  if (vmConfigName !== undefined) {
    vmConfigXml = (await reader.readFile(vmConfigName, SMALL_FILE_MAX)).toString('utf8');
    domain = parseDomainXml(vmConfigXml, vmConfigName);
    logger.info(`Using config file: [${vmConfigName}]`);
  } else if (options.adjustConfig || options.define) {
    throw new BackupSetError(`No domain config (vmconfig.<ident>.xml) in ${reader.label}: cannot adjust or define the domain`);
  } else {
    logger.warn(`No domain config (vmconfig.<ident>.xml) in ${reader.label}: images are named after their disks`);
  }
  const leftOut = new Set<string>();
  for (const plan of [...plans.values()]) {
    const configured = domain?.disks.find((d) => d.target === plan.disk);
    if (configured?.format === 'raw' && !options.raw && !sequence) {
      logger.warn(`Disk ${plan.disk} is a raw disk: not restored (use --raw to copy it as it is)`);
      plans.delete(plan.disk);
      leftOut.add(plan.disk);
    } else if (domain && !configured) {
      logger.warn(`Disk ${plan.disk} is not in ${vmConfigName}; restoring it anyway`);
    }
  }
  if (plans.size === 0) throw new RestoreError('Nothing to restore: every disk with data files was left out');
  for (const d of domain?.disks ?? []) {
    if (d.device === 'disk' && !plans.has(d.target) && !leftOut.has(d.target) && !sequence && (options.disk === undefined || options.disk === d.target)) {
      logger.warn(`No backup file for disk [${d.target}] found, assuming it has been excluded.`);
    }
  }
  const checksums = new Map<string, number>();
  for (const plan of plans.values()) {
    for (const step of plan.chain?.steps ?? []) {
      const name = `${step.file}.chksum`;
      if (names.includes(name)) checksums.set(step.file, parseChecksumFile(await reader.readFile(name, 1024), name));
    }
  }

  // 3. Final names, checked free before anything is written.
  const output = resolve(options.output);
  const finals = finalImagePaths([...plans.keys()], output, domain, { byDiskName: !!sequence });
  await checkTargetsFree(finals.values(), !!options.overwrite, files);

  // 4. Rebuild each disk under its temporary name.
  if (files.remote) await files.mkdirp(output);
  else await mkdir(output, { recursive: true });
  const work = await createWorkDir(options.tempDir);
  const pending: PendingImage[] = [];
  let current: DiskImage | undefined;
  try {
    for (const plan of plans.values()) {
      options.signal?.throwIfAborted();
      const temp = temporaryPath(finals.get(plan.disk)!);
      await clearStalePartial(temp, logger, files);
      if (plan.raw !== undefined) {
        logger.info(`Restoring raw image ${plan.raw} to ${finals.get(plan.disk)} as it is`);
        const configured = domain?.disks.find((d) => d.target === plan.disk)?.format;
        if (configured !== undefined && configured !== 'raw' && !options.adjustConfig) {
          logger.warn(`Disk ${plan.disk} is ${configured} in ${vmConfigName}, but its backup is a raw image, restored as such: the config needs <driver type='raw'> (-c does that)`);
        }
        const bar = (context.progress ?? noProgress)(`restoring disk [${plan.disk}]`, 0);
        pending.push({ disk: plan.disk, temp, format: 'raw', files: [plan.raw] });
        const copyOptions = { onData: (n: number) => bar.update(n), signal: options.signal };
        if (files instanceof SshHostFiles) await copyRawImageRemote(await reader.open(plan.raw), temp, plan.raw, files, copyOptions);
        else await copyRawImage(await reader.open(plan.raw), temp, plan.raw, copyOptions);
        bar.done();
        continue;
      }
      const chain = plan.chain!;
      const qcowName = pickQcowInfo(names, plan.disk, endOf(plan));
      let createOptions: Array<[string, string]> = [];
      if (qcowName !== undefined) {
        try {
          const parsed = qcowCreateOptions(JSON.parse((await reader.readFile(qcowName, SMALL_FILE_MAX)).toString('utf8')), qcowName);
          createOptions = parsed.options;
          for (const w of parsed.warnings) logger.warn(w);
          logger.info(`Using QCOW options from backup file: [${qcowName}]`);
        } catch (error) {
          if (!(error instanceof SyntaxError)) throw error;
          logger.warn(`Unable to load original QCOW image config ${qcowName}, using defaults: ${error.message}`);
        }
      } else {
        logger.warn(`No QCOW image config for disk ${plan.disk} in ${reader.label}, will use default options.`);
      }
      const virtualSize = Math.max(...chain.steps.map((s) => s.metadata.virtualSize));
      logger.info(`Create virtual disk [${temp}] format: [qcow2] size: [${virtualSize}] options: [${createOptions.map(([k, v]) => `${k}=${v}`).join(',')}]`);
      pending.push({ disk: plan.disk, temp, format: 'qcow2', files: chain.steps.map((s) => s.file) });
      current = await DiskImage.create({
        disk: plan.disk,
        path: temp,
        virtualSize,
        createOptions,
        preallocate: options.preallocate,
        socket: `${work.path}/${plan.disk}.sock`,
        ...(target.server ? { remote: target.server } : {}),
      });
      const total = chain.steps.reduce((sum, s) => sum + s.metadata.dataSize, 0);
      const bar = (context.progress ?? noProgress)(`restoring disk [${plan.disk}]`, total);
      let fresh = true;
      for (const step of chain.steps) {
        options.signal?.throwIfAborted();
        logger.info(`Applying data from backup file [${step.file}] to target file [${temp}].`);
        const source = await reader.open(step.file);
        const result = await current.apply(source, step.file, {
          fresh,
          ...(source instanceof FileSource ? { loans: source } : {}),
          expectedChecksum: checksums.get(step.file),
          expectedMetadata: step.metadata,
          onData: (n) => bar.update(n),
          signal: options.signal,
        });
        fresh = false;
        logger.info(`End of stream ${step.file}: ${result.dataBytes} bytes of data written${result.zeroedBytes ? `, ${result.zeroedBytes} zeroed` : ''}`);
      }
      bar.done();
      await current.close();
      current = undefined;
    }
    // 5. All complete: final names.
    await commitImages(pending, finals, !!options.overwrite, logger, files);
  } catch (error) {
    await current?.discard();
    for (const p of pending) await (files.remote ? files.remove(p.temp).catch(() => undefined) : rm(p.temp, { force: true }));
    await work.dispose();
    throw error;
  }
  await work.dispose();

  const images = pending.map((p) => ({ disk: p.disk, path: finals.get(p.disk)!, format: p.format, files: p.files }));
  const finish = await finishConfig({
    options,
    logger,
    images,
    vmConfig: vmConfigName !== undefined ? { name: vmConfigName, xml: vmConfigXml!, domain: domain! } : undefined,
    end: endOf(first),
    setNames: names,
    open: (name) => reader.open(name),
    files,
  });
  return { action: 'restore', images, ...finish };
}
