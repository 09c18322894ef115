/**
 * backup(): one run of virtnbdbackup, as a library call. It reaches the
 * domain (connect.ts; -S starts a shut-off one paused and stops it after),
 * gathers what the plan needs (inputs.ts), plans (level.ts), cares for the
 * checkpoint chain (checkpoints.ts), asks the guest agent for OS info and
 * freezes the guest around the job start (guestAgent.ts, with --pause:
 * pause.ts), runs the libvirt backup job (job.ts) or, for a shut-off
 * domain, serves each image with qemu-nbd (offlineExport.ts), saves the
 * disks `workers` at a time (diskBackup.ts; -q: extents by nbdinfo,
 * nbdinfoStatus.ts) and the set's other files (setFiles.ts), and commits
 * the new checkpoint to the set last. -p/-T (estimate.ts), -s and -k
 * (killJob.ts) end the run early. Whatever happens, the job is ended and
 * its socket and scratch files are gone when it returns or throws (except
 * -s, whose job is left running on purpose); a failed (or interrupted) run
 * removes the files it wrote and deletes the checkpoint its job created,
 * so the set and the domain's chain are as before and the next backup
 * still covers every change. A domain on another host (its libvirtd
 * reports another host name) has its files (image info, boot files) read
 * and its offline images served by qemu-nbd over ssh (lib/remote/).
 */
import { constants, existsSync } from 'node:fs';
import { access, mkdir, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import type { Domain } from '../libvirt/domain.js';
import type { HypervisorOptions } from '../libvirt/hypervisor.js';
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
import { openDomainSession, reopenDomain } from './connect.js';
import { backupDisk, type DiskBackupResult, type DiskProgress } from './diskBackup.js';
import { BackupError, messageOf } from './errors.js';
import { GuestAgent, osInfoFileName } from './guestAgent.js';
import { gatherPlanInput, listDirectory } from './inputs.js';
import { changedBytesSince } from './estimate.js';
import { killBackupJob } from './killJob.js';
import { checkOfflineBitmap, startOfflineExport } from './offlineExport.js';
import { LocalHostFiles, type HostFiles } from '../remote/hostFiles.js';
import { SshHostFiles } from '../remote/sshHostFiles.js';
import { hypervisorSsh } from '../remote/remoteHost.js';
import type { SshHost } from '../remote/ssh.js';
import { DomainPause, quiesceInOrder } from './pause.js';
import type { Quiesce } from './guestAgent.js';
import { VIR_DOMAIN_DESTROY_GRACEFUL, VIR_DOMAIN_START_PAUSED } from '../libvirt/flags.js';
import { BackupJob, refuseActiveJob } from './job.js';
import { chooseEndpoint, exportUriString, type NbdEndpoint, type NbdEndpointRequest } from './nbdEndpoint.js';
import { planBackup, type BackupPlan, type DiskTarget, type Level, type OutputType } from './level.js';
import { RecordingLogger, type BackupLogger } from './log.js';
import { DirectoryOutput, type SetOutput } from './output.js';
import { runPool } from './pool.js';
import { prefetchImageInfo, saveSetFiles } from './setFiles.js';

/**
 * What to back up and how: the fields of virtnbdbackup's command line the
 * run uses; the job's NBD endpoint fields (-f, -P, -I, --tls, --tls-cert)
 * are NbdEndpointRequest's.
 */
export interface BackupRequest extends NbdEndpointRequest {
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
  /** A remote domain's host, for its files and offline qemu-nbd: ssh login (default: the URI's user and port, its ?keyfile=). */
  sshUser?: string;
  sshPort?: number;
  sshPrivateKey?: string;
  /** false, or the LZ4 level recorded in the stream metadata. */
  compress: number | false;
  /** Disks saved at once (default all). */
  worker?: number;
  noSparseDetection: boolean;
  /** libvirt URI. */
  uri: string;
  /** Login for daemons that demand SASL (--user, --password / --password-file / VIRTNBD_PASSWORD). */
  credentials?: HypervisorOptions['credentials'];
  /** -F: freeze only the filesystems on these mountpoints (default all, when the guest agent answers). */
  freezeMountpoints?: readonly string[];
  /** -p: print the bytes the next inc/diff would save, and stop. */
  printOnly?: boolean;
  /** -T: skip an inc/diff that would save fewer bytes. */
  threshold?: number;
  /** -s: start the backup job, leave its NBD endpoint on the socket, save nothing. */
  startOnly?: boolean;
  /** -k: end the domain's running backup job, save nothing. */
  killOnly?: boolean;
  /** -S: start a shut-off domain paused for the backup, and stop it after. */
  startDomain?: boolean;
  /** --pause: suspend the running domain while the job starts. */
  pause?: boolean;
  /** -q: query extents with nbdinfo instead of our NBD client. */
  qemu?: boolean;
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

/** What a run did besides a backup: -p estimated, -T skipped, -s started a job, -k killed one. */
export type BackupOutcome = 'backup' | 'estimated' | 'skipped' | 'started' | 'killed';

export interface BackupResult {
  outcome: BackupOutcome;
  /** -p and -T: bytes marked changed since the parent checkpoint. */
  estimate?: number;
  /** -s: the NBD URIs of the job's exports. */
  endpoints?: string[];
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

  const session = await openDomainSession(request.uri, request.domain, log, request.credentials);
  /** -S started the domain: stop it whatever happens. */
  let startedHere = false;
  try {
    signal?.throwIfAborted();
    const { domain } = session;
    // A remote domain's files (image info, boot files, offline images) are reached over ssh.
    const ssh = session.remote
      ? await hypervisorSsh(session.hypervisor.uri, request, log).catch((e: unknown) => {
          throw new BackupError('remote', messageOf(e), { cause: e });
        })
      : undefined;
    const files: HostFiles = ssh ? new SshHostFiles(ssh) : new LocalHostFiles();
    if (!session.running && request.startDomain && !request.killOnly) {
      if (request.startOnly) {
        throw new BackupError(
          'domain-not-running',
          `Domain ${domain.name} is shut off: -s/--startonly leaves a job running, but -S/--start-domain stops the domain after the run. Start the domain first.`,
        );
      }
      log.info(`Domain ${domain.name} is shut off: starting it paused for the backup (-S); it is stopped again afterwards.`);
      await libvirtCall(`start domain ${domain.name} paused`, () => domain.create(VIR_DOMAIN_START_PAUSED));
      startedHere = true;
      session.running = true;
    }
    if (request.killOnly) {
      const killed = await killBackupJob(domain, log);
      log.debug(killed ? 'A job was stopped.' : 'No job was running.');
      return { outcome: 'killed', level: 'copy', ident: '', targetDir: paths.targetDir, disks: [], files: [] };
    }
    const domainXml = await libvirtCall(`read the configuration of domain ${domain.name}`, () => domain.getXMLDesc(0));
    const { input, info } = await gatherPlanInput(request, domain, domainXml, paths, now, session.running);
    const plan = planBackup(input);
    logPlan(plan, log);
    if (!request.stdout && !request.startOnly) await makeDirectory(paths.checkpointDir, 'checkpoint directory');
    if (plan.offline) {
      await checkOffline(plan, request, log, files);
      warnUnresolvedFirmware(domainXml, info, log);
    } else {
      await refuseActiveJob(domain);
    }
    // -s with full must not delete the chain: it starts a job only.
    if (!(request.startOnly && plan.level === 'full')) await careForChain(domain, plan, paths, log);
    const early = await estimateFirst(domain, plan, request, context, log);
    if (early !== undefined) return { ...early, targetDir: paths.targetDir };
    // A domain -S started paused runs no guest code: nothing to freeze, and its agent cannot answer.
    const agent = plan.offline || startedHere ? undefined : await GuestAgent.probe(domain, request.freezeMountpoints ?? [], log);
    signal?.throwIfAborted();
    const endpoint = await chooseEndpoint({ ...request, socketFile: paths.socket }, session.remote === true, () =>
      libvirtCall('read the host name of the hypervisor (the NBD server address; or give -I/--nbd-ip)', () => session.hypervisor.getHostname()),
    );
    // The job's scratch files are written by QEMU on the domain's host: the directory must exist there.
    if (ssh && !plan.offline) {
      await files.mkdirp(paths.scratchDir).catch((e: unknown) => {
        throw new BackupError('remote', `Cannot create scratch directory ${paths.scratchDir} on ${files.description}: ${messageOf(e)}`, { cause: e });
      });
    }
    if (request.startOnly && !plan.offline) {
      const started = await startOnly(domain, plan, { endpoint, scratchDir: paths.scratchDir, files }, quiesceFor(domain, agent, request, log), context, log);
      return { ...started, targetDir: paths.targetDir };
    }
    const result = await runJob(domain, plan, {
      agent,
      request,
      context,
      paths,
      log,
      recorder,
      domainXml,
      info,
      endpoint,
      autostart: await libvirtCall(`read the autostart flag of domain ${domain.name}`, () => domain.getAutostart()),
      ...(ssh ? { ssh } : {}),
      files,
    });
    if (logFile !== undefined) result.logFile = logFile;
    log.info('Finished successfully');
    return result;
  } finally {
    if (startedHere) {
      log.info(`Stopping domain ${session.domain.name}, started for the backup (-S).`);
      // Graceful: QEMU then writes its persistent bitmaps, so the chain continues offline or online.
      await session.domain.destroy(VIR_DOMAIN_DESTROY_GRACEFUL).catch((e: unknown) => log.error(`Cannot stop domain ${session.domain.name}: ${messageOf(e)}`));
    }
    await session.hypervisor.close();
  }
}

/**
 * Offline: what needs a running domain is refused, and every bitmap an
 * inc/diff reads is checked in its image before anything is written.
 */
async function checkOffline(plan: BackupPlan, request: BackupRequest, log: BackupLogger, files: HostFiles): Promise<void> {
  if (request.startOnly) throw new BackupError('domain-not-running', `-s/--startonly needs a running domain: start the domain (or use -S/--start-domain).`);
  if (request.printOnly) throw new BackupError('domain-not-running', `-p/--printonly needs a running domain (libvirt sizes bitmaps of running domains only).`);
  log.info(`Domain is shut off: reading its disk images through qemu-nbd${files.remote ? ` on ${files.description}` : ''} (offline backup).`);
  const bitmap = plan.checkpoint.bitmap;
  for (const t of plan.targets) {
    if (t.disk.path === undefined) throw new BackupError('not-yet', `Disk ${t.disk.target} has no local image path: offline backups of volume disks are not implemented yet.`);
    if (bitmap !== undefined && t.metaContext === `qemu:dirty-bitmap:${bitmap}`) await checkOfflineBitmap(t.disk.path, t.disk.target, bitmap, files);
  }
}

/**
 * libvirt (9.0) resolves `<os firmware='efi'>` to a loader and an nvram
 * file only when the domain starts: a shut-off domain's XML names neither,
 * so they cannot be saved. Say so (and how to get them).
 */
function warnUnresolvedFirmware(domainXml: string, info: DomainInfo, log: BackupLogger): void {
  if (!/<os\b[^>]*\bfirmware=['"]efi['"]/.test(domainXml)) return;
  if (info.bootFiles.loader !== undefined && info.bootFiles.nvram !== undefined) return;
  log.warn(
    `Domain ${info.name} is shut off and its UEFI firmware is chosen by libvirt at start: its XML names no loader or nvram file, ` +
      'so they are not saved. Back it up running, or with -S/--start-domain, to save them.',
  );
}

/**
 * Run `fn` with the endpoint serving `target`: the job's online, a qemu-nbd
 * of its own offline (on a remote domain's host: on TCP there, one port per
 * disk from the job's port on, as disks may be saved at once).
 */
async function withExport<T>(
  job: BackupJob | undefined,
  target: DiskTarget,
  plan: BackupPlan,
  paths: Paths,
  remote: { ssh: SshHost; endpoint: NbdEndpoint } | undefined,
  fn: (endpoint: NbdEndpoint) => Promise<T>,
): Promise<T> {
  if (job) return fn(job.endpoint);
  const bitmap = plan.checkpoint.bitmap;
  const tcp = remote?.endpoint.kind === 'tcp' ? { ...remote.endpoint, port: remote.endpoint.port + plan.targets.indexOf(target) } : undefined;
  const server = await startOfflineExport({
    image: target.disk.path as string,
    format: target.disk.format ?? 'raw',
    exportName: target.disk.target,
    socket: `${paths.socket}.${target.disk.target}`,
    ...(bitmap !== undefined && target.metaContext === `qemu:dirty-bitmap:${bitmap}` ? { bitmap } : {}),
    ...(remote && tcp ? { remote: { ssh: remote.ssh, endpoint: tcp } } : {}),
  });
  try {
    return await fn(server.endpoint);
  } finally {
    await server.stop();
  }
}

type EarlyResult = Omit<BackupResult, 'targetDir'>;

/**
 * -p and -T: the bytes changed since the parent checkpoint, from libvirt.
 * -p prints them (stdout) and ends the run; -T ends it when they are below
 * the threshold. Both only mean something for inc and diff.
 */
async function estimateFirst(domain: Domain, plan: BackupPlan, request: BackupRequest, context: BackupContext, log: BackupLogger): Promise<EarlyResult | undefined> {
  if (!request.printOnly && request.threshold === undefined) return undefined;
  if (plan.offline) {
    log.info('-T/--threshold: libvirt sizes bitmaps of running domains only: running the offline backup.');
    return undefined;
  }
  const base = { level: plan.level, ident: plan.ident, disks: [], files: [] };
  const since = plan.checkpoint.incremental;
  if (plan.level !== 'inc' && plan.level !== 'diff' || since === undefined) {
    if (request.printOnly) {
      throw new BackupError('not-yet', `-p/--printonly estimates incremental and differential backups only, not a ${plan.level} backup: use -l inc or -l diff.`);
    }
    log.info(`-T/--threshold applies to incremental and differential backups only: running the ${plan.level} backup.`);
    return undefined;
  }
  const disks = plan.targets.map((t) => t.disk.target);
  const estimate = await changedBytesSince(domain, since, disks);
  log.info(`Estimated size of the next ${plan.level} backup: [${estimate}] bytes changed since checkpoint [${since}] on disks [${disks.join(', ')}].`);
  if (request.printOnly) {
    (context.stdout ?? process.stdout).write(`${estimate}\n`);
    return { ...base, outcome: 'estimated', estimate };
  }
  if (request.threshold !== undefined && estimate < request.threshold) {
    log.info(`Backup size [${estimate}] is below the threshold [${request.threshold}] (-T): skipping this backup.`);
    return { ...base, outcome: 'skipped', estimate };
  }
  return undefined;
}

/**
 * -s: start the job as planned, but create no checkpoint (the set would
 * not list it), and leave it running with its exports on the socket for
 * other tools; -k ends it.
 */
async function startOnly(
  domain: Domain,
  plan: BackupPlan,
  where: { endpoint: NbdEndpoint; scratchDir: string; files: HostFiles },
  quiesce: Quiesce,
  context: BackupContext,
  log: BackupLogger,
): Promise<EarlyResult> {
  const jobPlan: BackupPlan = { ...plan, checkpoint: { ...plan.checkpoint, create: false } };
  await BackupJob.begin(domain, jobPlan, { ...where, quiesce }, log);
  const endpoints = plan.targets.map((t) => exportUriString(where.endpoint, t.disk.target));
  for (const [i, uri] of endpoints.entries()) log.info(`Backup job started: disk ${plan.targets[i]?.disk.target} is exported as [${uri}], meta context [${plan.targets[i]?.metaContext}].`);
  log.info(`The job keeps running: end it with virtnbdbackup -d ${domain.name} -k -o <dir>.`);
  (context.stdout ?? process.stdout).write(endpoints.map((e) => `${e}\n`).join(''));
  return { outcome: 'started', endpoints, level: plan.level, ident: plan.ident, disks: [], files: [] };
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
  /** undefined offline. */
  agent: GuestAgent | undefined;
  request: BackupRequest;
  context: BackupContext;
  paths: Paths;
  log: BackupLogger;
  recorder: RecordingLogger | undefined;
  domainXml: string;
  info: DomainInfo;
  /** Where the job serves the disks (offline: where a remote host's qemu-nbd listens). */
  endpoint: NbdEndpoint;
  autostart: boolean;
  /** A remote domain's host; the hypervisor's files (this host's for a local domain). */
  ssh?: SshHost;
  files: HostFiles;
}

/** Job, disks, set files, checkpoint commit; undone on failure. */
async function runJob(domain: Domain, plan: BackupPlan, s: RunState): Promise<BackupResult> {
  const { request, context, paths, log } = s;
  // Started first: qemu-img runs while libvirt starts the job (we only wait there), not while we list extents and copy.
  const imageInfo = prefetchImageInfo(plan.targets, s.files);
  const job = plan.offline
    ? undefined
    : await BackupJob.begin(
        domain,
        plan,
        {
          endpoint: s.endpoint,
          scratchDir: paths.scratchDir,
          files: s.files,
          quiesce: quiesceFor(domain, s.agent, request, log),
          reopen: () => reopenDomain(request.uri, request.domain, log, request.credentials),
        },
        log,
      );
  let output: SetOutput | undefined;
  const savedFiles: string[] = [];
  /** `<domain>.cpt` before this run changed it (null: not changed). */
  let listBefore: string[] | undefined | null = null;
  try {
    const checkpointXml = plan.checkpoint.create ? await checkpointXmlOf(domain, plan.checkpoint.name, log) : undefined;
    output = request.stdout ? new (await import('./zipOutput.js')).ZipOutput(context.stdout ?? process.stdout) : new DirectoryOutput(paths.targetDir);
    const out = output;
    const disks = await runPool(
      plan.targets,
      plan.workers,
      (target, signal) =>
        withExport(job, target, plan, paths, s.ssh ? { ssh: s.ssh, endpoint: s.endpoint } : undefined, (endpoint) => backupDisk({
          target,
          endpoint,
          checkpointName: plan.checkpoint.name,
          parentCheckpoint: plan.checkpoint.parent ?? '',
          compress: request.compress,
          sparseDetection: !request.noSparseDetection,
          nbdinfoExtents: request.qemu === true,
          output: out,
          ...(context.progress ? { progress: context.progress } : {}),
          signal,
          log,
        })),
      context.signal,
    );
    // libvirt takes a moment to let go of the job's socket and scratch files: save the set's files meanwhile.
    const jobEnded = job?.end();
    await saveSetFiles({
      level: plan.level,
      ident: plan.ident,
      domainXml: s.domainXml,
      domain: s.info,
      targets: plan.targets,
      autostart: s.autostart,
      output: out,
      log,
      files: s.files,
      imageInfo,
    });
    if (s.agent) await saveOsInfo(s.agent, plan.ident, out, log);
    await jobEnded;
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
      outcome: 'backup',
      level: plan.level,
      ident: plan.ident,
      targetDir: paths.targetDir,
      ...(plan.checkpoint.create ? { checkpoint: plan.checkpoint.name } : {}),
      disks,
      files: [...out.written],
    };
  } catch (e) {
    log.debug(`Backup failed (${messageOf(e)}): undoing this run.`);
    await job?.end();
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

/** The agent's freeze, and --pause's suspend inside it. */
function quiesceFor(domain: Domain, agent: GuestAgent | undefined, request: BackupRequest, log: BackupLogger): Quiesce {
  const parts: Quiesce[] = [];
  if (agent) parts.push(agent);
  if (request.pause) parts.push(new DomainPause(domain, log));
  return quiesceInOrder(parts);
}

/** `osinfo.<ident>` when the agent answered; a side file, so failing is a warning. */
async function saveOsInfo(agent: GuestAgent, ident: string, out: SetOutput, log: BackupLogger): Promise<void> {
  const text = agent.osInfoText();
  if (text === undefined) return;
  const name = osInfoFileName(ident);
  try {
    await out.writeFile(name, text);
    log.info(`Saved guest OS information to: [${name}]`);
  } catch (e) {
    log.warn(`Cannot save guest OS information ${name}: ${messageOf(e)}`);
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
