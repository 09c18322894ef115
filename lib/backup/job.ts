/**
 * The libvirt pull-mode backup job of one run: QEMU serves each disk as an
 * NBD export (named after its target dev) on a unix socket and keeps
 * copy-before-write data in a scratch file per disk. begin() starts it
 * (creating the checkpoint atomically, when there is one); end() always
 * stops it (abortJob is how a pull-mode job ends) and makes sure the socket
 * and the scratch files are gone: libvirt removes them once QEMU has let
 * go, a moment after abortJob returns, so end() waits for that (bounded)
 * and removes what is left. end() is idempotent and never throws.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Domain } from '../libvirt/domain.js';
import { LibvirtError, VIR_ERR_CHECKPOINT_INCONSISTENT, VIR_ERR_OPERATION_INVALID } from '../libvirt/errors.js';
import { VIR_DOMAIN_JOB_NONE } from '../libvirt/flags.js';
import { buildBackupXml, scratchFilePath } from '../xml/backupXml.js';
import { buildCheckpointXml } from '../xml/checkpointXml.js';
import { BackupError, messageOf } from './errors.js';
import type { BackupLogger } from './log.js';
import type { BackupPlan } from './level.js';
import type { Quiesce } from './guestAgent.js';

/** How long end() waits for libvirt to remove the socket and scratch files. */
const JOB_END_WAIT_MS = 30_000;

export interface JobSpec {
  /** NBD unix socket (absolute). */
  socket: string;
  /** Directory for the scratch files (absolute). */
  scratchDir: string;
  /** Frozen right before the job starts, thawed right after (also when it fails to start). */
  quiesce?: Quiesce;
}

/** "the backup job (NBD socket /x)" for the job running on the domain, as far as libvirt says. */
export async function describeRunningJob(domain: Domain): Promise<string> {
  try {
    const xml = await domain.backupGetXMLDesc();
    const socket = /<server\b[^>]*\bsocket=(['"])([^'"]+)\1/.exec(xml)?.[2];
    const port = /<server\b[^>]*\bport=(['"])([^'"]+)\1/.exec(xml)?.[2];
    const where = socket !== undefined ? ` (NBD socket ${socket})` : port !== undefined ? ` (NBD port ${port})` : '';
    return `the backup job${where}`;
  } catch {
    // Not a backup job (a migration, a dump): libvirt has no backup XML for it.
    return 'a job that is not a backup';
  }
}

/** Refuse to start while another job runs on the domain (virtnbdbackup does the same), naming that job. */
export async function refuseActiveJob(domain: Domain): Promise<void> {
  let type: number;
  try {
    type = (await domain.getJobInfo()).type;
  } catch (e) {
    throw new BackupError('libvirt', `Cannot query the jobs of domain ${domain.name}: ${messageOf(e)}`, { cause: e });
  }
  if (type !== VIR_DOMAIN_JOB_NONE) {
    const what = await describeRunningJob(domain);
    throw new BackupError(
      'job-active',
      `Domain ${domain.name} is busy with ${what}: only one backup at a time. ` +
        `Wait for it to finish, or end a left-over job with: virtnbdbackup -d ${domain.name} -k -o <dir> (check with: virsh domjobinfo ${domain.name})`,
    );
  }
}

function isBitmapProblem(e: unknown): boolean {
  return e instanceof LibvirtError && (e.code === VIR_ERR_CHECKPOINT_INCONSISTENT || /bitmap/i.test(e.message));
}

export class BackupJob {
  private ended = false;

  private constructor(
    readonly domain: Domain,
    readonly socket: string,
    /** Scratch file per disk target. */
    readonly scratchFiles: ReadonlyMap<string, string>,
    private readonly log: BackupLogger,
  ) {}

  /** Start the job the plan describes; a failure leaves no file behind. */
  static async begin(domain: Domain, plan: BackupPlan, spec: JobSpec, log: BackupLogger): Promise<BackupJob> {
    if (existsSync(spec.socket)) {
      throw new BackupError('job', `NBD socket file ${spec.socket} already exists: is another backup running? If not, remove it (or pick another with -f).`);
    }
    try {
      await mkdir(spec.scratchDir, { recursive: true });
    } catch (e) {
      throw new BackupError('output', `Cannot create scratch directory ${spec.scratchDir}: ${messageOf(e)}`, { cause: e });
    }
    const id = randomBytes(4).toString('hex');
    const scratch = new Map(plan.targets.map((t) => [t.disk.target, scratchFilePath(spec.scratchDir, t.disk.target, id)]));
    const backupXml = buildBackupXml({
      server: { transport: 'unix', socket: spec.socket },
      ...(plan.checkpoint.incremental !== undefined ? { incremental: plan.checkpoint.incremental } : {}),
      disks: plan.targets.map((t) => ({ target: t.disk.target, scratch: scratch.get(t.disk.target) as string })),
      skip: plan.jobSkip,
    });
    const checkpointXml = plan.checkpoint.create
      ? buildCheckpointXml({
          name: plan.checkpoint.name,
          ...(plan.checkpoint.parent !== undefined ? { parent: plan.checkpoint.parent } : {}),
          disks: plan.checkpoint.disks,
          skip: plan.checkpoint.skip,
        })
      : null;
    log.debug(`Backup job XML:\n${backupXml}`);
    if (checkpointXml) log.debug(`Checkpoint XML:\n${checkpointXml}`);
    const job = new BackupJob(domain, spec.socket, scratch, log);
    log.info('Starting backup job.');
    try {
      await spec.quiesce?.freeze();
      try {
        await domain.backupBegin(backupXml, checkpointXml);
      } finally {
        await spec.quiesce?.thaw();
      }
    } catch (e) {
      job.ended = true;
      await job.removeLeftovers();
      if (isBitmapProblem(e)) {
        throw new BackupError(
          'bitmap',
          `Cannot start the backup job of domain ${domain.name}: ${messageOf(e)}. ` +
            `The dirty bitmap of checkpoint ${plan.checkpoint.incremental ?? plan.checkpoint.name} is missing or broken, ` +
            'so changes since then are unknown: run a full backup to start a new chain.',
          { cause: e },
        );
      }
      throw new BackupError('job', `Cannot start the backup job of domain ${domain.name}: ${messageOf(e)}`, { cause: e });
    }
    log.debug('Backup job started.');
    return job;
  }

  /** Stop the job and make sure its socket and scratch files are gone. */
  async end(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    this.log.info('Stopping backup job.');
    try {
      await this.domain.abortJob();
    } catch (e) {
      // The job may be gone already (the domain stopped, or someone aborted it).
      if (!(e instanceof LibvirtError && e.code === VIR_ERR_OPERATION_INVALID)) {
        this.log.warn(`Cannot stop the backup job of domain ${this.domain.name}: ${messageOf(e)}`);
      }
    }
    const files = this.files();
    const deadline = Date.now() + JOB_END_WAIT_MS;
    while (files.some((f) => existsSync(f)) && Date.now() < deadline) await sleep(25);
    await this.removeLeftovers();
  }

  private files(): string[] {
    return [this.socket, ...this.scratchFiles.values()];
  }

  private async removeLeftovers(): Promise<void> {
    for (const file of this.files()) {
      if (!existsSync(file)) continue;
      this.log.warn(`Removing ${file}, left behind by the backup job.`);
      await rm(file, { force: true }).catch((e: unknown) => this.log.warn(`Cannot remove ${file}: ${messageOf(e)}`));
    }
  }
}
