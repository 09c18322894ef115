/**
 * backup(): one run of virtnbdbackup, as a library call. It reaches the
 * domain (connect.ts), gathers what the plan needs (inputs.ts), plans
 * (level.ts), cares for the checkpoint chain (checkpoints.ts), runs the
 * libvirt backup job (job.ts), saves the disks `workers` at a time
 * (diskBackup.ts) and the set's other files (setFiles.ts), and commits the
 * new checkpoint to the set last. Whatever happens, the job is ended and
 * its socket and scratch files are gone when it returns or throws; a
 * failed (or interrupted) run removes the files it wrote and deletes the
 * checkpoint its job created, so the set and the domain's chain are as
 * before and the next backup still covers every change.
 */
import { constants, existsSync } from 'node:fs';
import { access, mkdir, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import type { Domain } from '../libvirt/domain.js';
import type { DomainInfo } from '../xml/domain.js';
import { backupLogFileName, CHECKPOINT_DIR, checkpointFileName, checkpointListFileName, type DataLevel } from '../format/naming.js';
import {
  appendCheckpointList,
  checkpointXmlOf,
  redefineCheckpoints,
  removeCheckpoints,
  resetCheckpointFiles,
  rollBackCheckpoint,
  saveCheckpointFile,
  writeCheckpointList,
} from './checkpoints.js';
import { openDomainSession } from './connect.js';
import { backupDisk, type DiskBackupResult, type DiskProgress } from './diskBackup.js';
import { BackupError, messageOf } from './errors.js';
import { gatherPlanInput, listDirectory } from './inputs.js';
import { BackupJob, refuseActiveJob } from './job.js';
import { planBackup, type BackupPlan, type Level, type OutputType } from './level.js';
import { RecordingLogger, type BackupLogger } from './log.js';
import { DirectoryOutput, ZipOutput, type SetOutput } from './output.js';
import { runPool } from './pool.js';
import { saveSetFiles } from './setFiles.js';

/** What to back up and how: the fields of virtnbdbackup's command line the run uses. */
export interface BackupRequest {
  domain: string;
  level: Level;
  type: OutputType;
  /** --raw: also save raw disks, whole (full and copy). */
  raw: boolean;
  /** Target directory; with `stdout` the zip goes to stdout and the checkpoint files stay in the current directory. */
  output: string;
  stdout: boolean;
  /** Default `<output>/checkpoints`. */
  checkpointDir?: string;
  scratchDir: string;
  include?: readonly string[];
  exclude?: readonly string[];
  /** The job's NBD unix socket. */
  socketFile: string;
  /** false, or the LZ4 level recorded in the stream metadata. */
  compress: number | false;
  /** Disks saved at once (default all). */
  worker?: number;
  noSparseDetection: boolean;
  /** libvirt URI. */
  uri: string;
}

export interface BackupContext {
  logger: BackupLogger;
  /** Aborting it stops the run (Ctrl-C); the run cleans up and rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Where `-o -` writes the zip (default process.stdout). */
  stdout?: Writable;
  /** A progress display per disk. */
  progress?: (label: string, total: number) => DiskProgress;
  /** The run's start (log file name, diff ident, metadata); default now. */
  now?: Date;
}

export interface BackupResult {
  /** The level that ran (auto resolved). */
  level: DataLevel;
  /** `<ident>` of the run's files. */
  ident: string;
  /** The set's directory (the current directory for `-o -`). */
  targetDir: string;
  /** The checkpoint the run created, if any. */
  checkpoint?: string;
  disks: DiskBackupResult[];
  /** Files written, relative to the set (zip entries for `-o -`). */
  files: string[];
  /** The log file, when it is a file of the target directory. */
  logFile?: string;
}

interface Paths {
  targetDir: string;
  checkpointDir: string;
  scratchDir: string;
  socket: string;
  logName: string;
}

function pathsOf(request: BackupRequest, now: Date): Paths {
  const targetDir = request.stdout ? process.cwd() : resolve(request.output);
  return {
    targetDir,
    checkpointDir: resolve(request.checkpointDir ?? join(targetDir, CHECKPOINT_DIR)),
    scratchDir: resolve(request.scratchDir),
    socket: resolve(request.socketFile),
    logName: backupLogFileName(request.level, now),
  };
}

/**
 * Why a directory cannot be made under its nearest existing ancestor:
 * recursive mkdir reports ENOENT even on a read-only file system.
 */
async function whyNotWritable(dir: string): Promise<string | undefined> {
  let at = dirname(dir);
  while (!existsSync(at) && at !== dirname(at)) at = dirname(at);
  try {
    await access(at, constants.W_OK);
    return undefined;
  } catch (e) {
    return `${at}: ${messageOf(e)}`;
  }
}

async function makeDirectory(dir: string, what: string): Promise<void> {
  const existing = await stat(dir).catch(() => undefined);
  if (existing?.isDirectory()) return;
  if (existing) throw new BackupError('output', `The ${what} ${dir} exists and is not a directory`);
  try {
    await mkdir(dir, { recursive: true });
  } catch (e) {
    const why = (await whyNotWritable(dir)) ?? messageOf(e);
    throw new BackupError('output', `Cannot create ${what} ${dir}: ${why}`, { cause: e });
  }
}

function logPlan(plan: BackupPlan, log: BackupLogger): void {
  for (const m of plan.messages) (m.level === 'warning' ? log.warn : log.info).call(log, m.text);
  log.info(`Running ${plan.level === 'inc' ? 'an' : 'a'} ${plan.level} backup, its files named after [${plan.ident}].`);
  if (plan.checkpoint.create) log.info(`Using checkpoint name: [${plan.checkpoint.name}].`);
  if (plan.checkpoint.incremental !== undefined) log.info(`Saving changes since checkpoint: [${plan.checkpoint.incremental}].`);
  log.info(`Backup will save [${plan.targets.length}] attached disks, [${plan.workers}] at once.`);
}

/** A libvirt call whose failure ends the run with a message saying what was being done. */
async function libvirtCall<T>(what: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (e) {
    throw new BackupError('libvirt', `Cannot ${what}: ${messageOf(e)}`, { cause: e });
  }
}

/** Runs one backup; see the module comment. */
export async function backup(request: BackupRequest, context: BackupContext): Promise<BackupResult> {
  const now = context.now ?? new Date();
  const paths = pathsOf(request, now);
  const recorder = request.stdout ? new RecordingLogger(context.logger) : undefined;
  const log: BackupLogger = recorder ?? context.logger;
  const signal = context.signal;
  const zipStream = context.stdout ?? process.stdout;
  if (request.stdout && (zipStream as NodeJS.WriteStream).isTTY) {
    throw new BackupError('output', 'Refusing to write a zip archive to a terminal: redirect stdout (-o - > backup.zip).');
  }

  let logFile: string | undefined;
  if (!request.stdout) {
    await makeDirectory(paths.targetDir, 'target directory');
    logFile = join(paths.targetDir, paths.logName);
    try {
      await context.logger.attachFile?.(logFile);
    } catch (e) {
      throw new BackupError('output', `Cannot write to target directory ${paths.targetDir}: cannot create log file ${logFile}: ${messageOf(e)}`, {
        cause: e,
      });
    }
  }
  log.info(`Backup level: [${request.level}]`);
  if (request.compress !== false) log.info(`Compression enabled, level [${request.compress}]`);

  const session = await openDomainSession(request.uri, request.domain, log);
  try {
    signal?.throwIfAborted();
    const { domain } = session;
    const domainXml = await libvirtCall(`read the configuration of domain ${domain.name}`, () => domain.getXMLDesc(0));
    const { input, info } = await gatherPlanInput(request, domain, domainXml, paths, now);
    const plan = planBackup(input);
    logPlan(plan, log);
    if (!request.stdout) await makeDirectory(paths.checkpointDir, 'checkpoint directory');
    await refuseActiveJob(domain);
    await careForChain(domain, plan, paths, log);
    signal?.throwIfAborted();
    const result = await runJob(domain, plan, {
      request,
      context,
      paths,
      log,
      recorder,
      domainXml,
      info,
      autostart: await libvirtCall(`read the autostart flag of domain ${domain.name}`, () => domain.getAutostart()),
    });
    if (logFile !== undefined) result.logFile = logFile;
    log.info('Finished successfully');
    return result;
  } finally {
    await session.hypervisor.close();
  }
}

/** Redefine lost checkpoints; for full, delete the old chain and its files. */
async function careForChain(domain: Domain, plan: BackupPlan, paths: Paths, log: BackupLogger): Promise<void> {
  if (plan.redefine.length > 0) {
    await redefineCheckpoints(domain, plan.redefine, { validate: plan.level === 'inc' || plan.level === 'diff', checkpointDir: paths.checkpointDir }, log);
  }
  if (plan.level === 'full') {
    if (plan.remove.length > 0) log.info('Removing all existing checkpoints before the full backup.');
    await removeCheckpoints(domain, plan.remove, log);
    if (plan.resetCheckpointFiles) await resetCheckpointFiles(paths.checkpointDir, paths.targetDir, domain.name, log);
  }
}

interface RunState {
  request: BackupRequest;
  context: BackupContext;
  paths: Paths;
  log: BackupLogger;
  recorder: RecordingLogger | undefined;
  domainXml: string;
  info: DomainInfo;
  autostart: boolean;
}

/** Job, disks, set files, checkpoint commit; undone on failure. */
async function runJob(domain: Domain, plan: BackupPlan, s: RunState): Promise<BackupResult> {
  const { request, context, paths, log } = s;
  const job = await BackupJob.begin(domain, plan, { socket: paths.socket, scratchDir: paths.scratchDir }, log);
  let output: SetOutput | undefined;
  const savedFiles: string[] = [];
  /** `<domain>.cpt` before this run changed it (null: not changed). */
  let listBefore: string[] | undefined | null = null;
  try {
    const checkpointXml = plan.checkpoint.create ? await checkpointXmlOf(domain, plan.checkpoint.name, log) : undefined;
    output = request.stdout ? new ZipOutput(context.stdout ?? process.stdout) : new DirectoryOutput(paths.targetDir);
    const out = output;
    const disks = await runPool(
      plan.targets,
      plan.workers,
      (target, signal) =>
        backupDisk({
          target,
          socket: job.socket,
          checkpointName: plan.checkpoint.name,
          parentCheckpoint: plan.checkpoint.parent ?? '',
          compress: request.compress,
          sparseDetection: !request.noSparseDetection,
          output: out,
          ...(context.progress ? { progress: context.progress } : {}),
          signal,
          log,
        }),
      context.signal,
    );
    await job.end();
    await saveSetFiles({
      level: plan.level,
      ident: plan.ident,
      domainXml: s.domainXml,
      domain: s.info,
      targets: plan.targets,
      autostart: s.autostart,
      output: out,
      log,
    });
    context.signal?.throwIfAborted();
    // The commit point: only now does the set name the new checkpoint.
    if (checkpointXml !== undefined) {
      if (request.stdout) await mkdir(paths.checkpointDir, { recursive: true });
      savedFiles.push(await saveCheckpointFile(paths.checkpointDir, plan.checkpoint.name, checkpointXml, log));
      listBefore = await appendCheckpointList(paths.targetDir, domain.name, plan.checkpoint.name);
      log.info(`Checkpoint [${plan.checkpoint.name}] added to ${checkpointListFileName(domain.name)}.`);
    }
    if (request.stdout) await finishZip(out, checkpointXml, s);
    return {
      level: plan.level,
      ident: plan.ident,
      targetDir: paths.targetDir,
      ...(plan.checkpoint.create ? { checkpoint: plan.checkpoint.name } : {}),
      disks,
      files: [...out.written],
    };
  } catch (e) {
    log.debug(`Backup failed (${messageOf(e)}): undoing this run.`);
    await job.end();
    if (output) {
      const written = output.written.length;
      await output.discard(e instanceof Error ? e : new Error(String(e))).catch((d: unknown) => log.warn(messageOf(d)));
      if (written > 0 && output instanceof DirectoryOutput) log.info(`Removed the ${written} files this run wrote to ${output.description}.`);
    }
    for (const file of savedFiles) await unlink(file).catch(() => undefined);
    if (listBefore !== null) await writeCheckpointList(paths.targetDir, domain.name, listBefore).catch((d: unknown) => log.error(messageOf(d)));
    if (plan.checkpoint.create) await rollBackCheckpoint(domain, plan.checkpoint.name, log);
    throw e;
  }
}

/** The zip gets the checkpoint list and XML (which also stay in the current directory) and the run's log. */
async function finishZip(out: SetOutput, checkpointXml: string | undefined, s: RunState): Promise<void> {
  const { paths } = s;
  if (checkpointXml !== undefined) {
    // As virtnbdbackup: the list and every saved checkpoint of the chain.
    await out.copyFile(checkpointListFileName(s.info.name), join(paths.targetDir, checkpointListFileName(s.info.name)));
    for (const name of await listDirectory(paths.checkpointDir)) {
      if (name.endsWith('.xml')) await out.copyFile(checkpointFileName(name.slice(0, -'.xml'.length)), join(paths.checkpointDir, name));
    }
  }
  s.log.info(`Adding backup log [${paths.logName}] to the zip archive.`);
  await out.writeFile(paths.logName, s.recorder?.text() ?? '');
  await out.finish();
}
