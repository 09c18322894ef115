/**
 * The libvirt pull-mode backup job of one run: QEMU serves each disk as an
 * NBD export (named after its target dev) on a unix socket or a TCP port
 * (nbdEndpoint.ts) and keeps copy-before-write data in a scratch file per
 * disk. begin() starts it (creating the checkpoint atomically, when there
 * is one); a port in use or a TLS set-up QEMU cannot load is reported as
 * such. end() always stops it (abortJob is how a pull-mode job ends) and
 * makes sure the socket and the scratch files are gone: libvirt removes
 * them once QEMU has let go, a moment after abortJob returns, so end()
 * waits for that (bounded) and removes what is left. end() is idempotent
 * and never throws.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Domain } from '../libvirt/domain.js';
import { LibvirtError, VIR_ERR_CHECKPOINT_INCONSISTENT, VIR_ERR_OPERATION_INVALID, VIR_ERR_RPC } from '../libvirt/errors.js';
import { VIR_DOMAIN_JOB_NONE } from '../libvirt/flags.js';
import { buildBackupXml, scratchFilePath } from '../xml/backupXml.js';
import { backupServerOf, describeEndpoint, type NbdEndpoint } from './nbdEndpoint.js';
import { buildCheckpointXml } from '../xml/checkpointXml.js';
import { BackupError, messageOf } from './errors.js';
import type { BackupLogger } from './log.js';
import type { BackupPlan } from './level.js';
import type { Quiesce } from './guestAgent.js';
import type { HostFiles } from '../remote/hostFiles.js';

/** What the job needs of the files of the domain's host, where the scratch files live. */
export type JobHostFiles = Pick<HostFiles, 'exists' | 'mkdirp' | 'remove' | 'remote'>;

/** This host's files, for a local domain. */
const LOCAL_FILES: JobHostFiles = {
  remote: false,
  exists: async (path) => existsSync(path),
  mkdirp: async (path) => {
    await mkdir(path, { recursive: true });
  },
  remove: (path) => rm(path, { force: true }),
};

/** The domain on a connection of its own, closed once used. */
export interface ReopenedDomain {
  domain: Domain;
  close(): Promise<void>;
}

/** How long end() waits for libvirt to remove the socket and scratch files. */
const JOB_END_WAIT_MS = 30_000;

export interface JobSpec {
  /** Where QEMU's NBD server listens (a unix socket path must be absolute). */
  endpoint: NbdEndpoint;
  /** Directory for the scratch files (absolute), on the domain's host. */
  scratchDir: string;
  /** The domain's host's files (a remote domain's over ssh); default: this host's. */
  files?: JobHostFiles;
  /** Frozen right before the job starts, thawed right after (also when it fails to start). */
  quiesce?: Quiesce;
  /** A new connection to the domain, for stopping the job when the first one broke (libvirtd restarted). */
  reopen?: () => Promise<ReopenedDomain>;
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

/**
 * Why QEMU could not start the job's NBD server, in a sysadmin's words, or
 * undefined when the failure is something else. QEMU says "Failed to find
 * an available port: Address already in use" (nbd-server-start) and
 * "Unable to access credentials DIR/ca-cert.pem" (object-add of the TLS
 * credentials).
 */
function serverProblem(e: unknown, endpoint: NbdEndpoint, domain: string): string | undefined {
  if (endpoint.kind !== 'tcp') return undefined;
  const text = messageOf(e);
  if (/address already in use|available port/i.test(text)) {
    return (
      `NBD port ${endpoint.port} on ${endpoint.host} is already in use (${text}): ` +
      `is another backup running there? Give each concurrent backup its own port with -P/--nbd-port.`
    );
  }
  if (endpoint.tls && /credentials|x509|tls/i.test(text)) {
    return (
      `QEMU cannot set up TLS for the NBD server of domain ${domain} (${text}): on the domain's host, ` +
      'qemu.conf backup_tls_x509_cert_dir (default: default_tls_x509_cert_dir, /etc/pki/qemu) must hold ca-cert.pem, server-cert.pem and server-key.pem.'
    );
  }
  return undefined;
}

function isBitmapProblem(e: unknown): boolean {
  return e instanceof LibvirtError && (e.code === VIR_ERR_CHECKPOINT_INCONSISTENT || /bitmap/i.test(e.message));
}

export class BackupJob {
  /** end()'s work, shared by every caller. */
  private ending: Promise<void> | undefined;

  private constructor(
    readonly domain: Domain,
    readonly endpoint: NbdEndpoint,
    /** Scratch file per disk target. */
    readonly scratchFiles: ReadonlyMap<string, string>,
    private readonly log: BackupLogger,
    private readonly host: JobHostFiles,
    private readonly reopen?: () => Promise<ReopenedDomain>,
  ) {}

  /** Start the job the plan describes; a failure leaves no file behind. */
  static async begin(domain: Domain, plan: BackupPlan, spec: JobSpec, log: BackupLogger): Promise<BackupJob> {
    if (spec.endpoint.kind === 'unix' && existsSync(spec.endpoint.socket)) {
      throw new BackupError('job', `NBD socket file ${spec.endpoint.socket} already exists: is another backup running? If not, remove it (or pick another with -f).`);
    }
    const host = spec.files ?? LOCAL_FILES;
    try {
      await host.mkdirp(spec.scratchDir);
    } catch (e) {
      throw new BackupError('output', `Cannot create scratch directory ${spec.scratchDir}: ${messageOf(e)}`, { cause: e });
    }
    const id = randomBytes(4).toString('hex');
    const scratch = new Map(plan.targets.map((t) => [t.disk.target, scratchFilePath(spec.scratchDir, t.disk.target, id)]));
    const backupXml = buildBackupXml({
      server: backupServerOf(spec.endpoint),
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
    const job = new BackupJob(domain, spec.endpoint, scratch, log, host, spec.reopen);
    log.info(`Starting backup job, NBD server on ${describeEndpoint(spec.endpoint)}.`);
    try {
      await spec.quiesce?.freeze();
      try {
        await domain.backupBegin(backupXml, checkpointXml);
      } finally {
        await spec.quiesce?.thaw();
      }
    } catch (e) {
      // No job to stop: end() only has leftovers to remove.
      job.ending = job.removeLeftovers();
      await job.ending;
      const server = serverProblem(e, spec.endpoint, domain.name);
      if (server !== undefined) throw new BackupError('job', `Cannot start the backup job of domain ${domain.name}: ${server}`, { cause: e });
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
  end(): Promise<void> {
    this.ending ??= this.stop();
    return this.ending;
  }

  private async stop(): Promise<void> {
    this.log.info('Stopping backup job.');
    await this.abort();
    const deadline = Date.now() + JOB_END_WAIT_MS;
    // Each look at a remote host is an ssh round trip: look less often there.
    // (A local backup's files are LocalHostFiles, not LOCAL_FILES: asking by identity made it wait 0.5 s.)
    const pollMs = this.host.remote ? 500 : 25;
    while ((await this.remaining()).length > 0 && Date.now() < deadline) await sleep(pollMs);
    await this.removeLeftovers();
  }

  /**
   * abortJob; when the connection to libvirtd broke (it was restarted), a
   * new connection retries for a while, since QEMU keeps the job running
   * and its NBD server open until someone ends it.
   */
  private async abort(): Promise<void> {
    let domain = this.domain;
    const reopened: ReopenedDomain[] = [];
    const deadline = Date.now() + JOB_END_WAIT_MS;
    try {
      for (;;) {
        try {
          await domain.abortJob();
          return;
        } catch (e) {
          // The job may be gone already (the domain stopped, or someone aborted it).
          if (e instanceof LibvirtError && e.code === VIR_ERR_OPERATION_INVALID) return;
          const broken = e instanceof LibvirtError && e.code === VIR_ERR_RPC;
          if (!broken || !this.reopen || Date.now() > deadline) {
            this.log.warn(`Cannot stop the backup job of domain ${this.domain.name}: ${messageOf(e)}`);
            return;
          }
          this.log.warn(`Connection to libvirt lost while stopping the backup job (${messageOf(e)}): reconnecting.`);
          await sleep(1000);
          const again = await this.reopen().catch(() => undefined);
          if (again) {
            reopened.push(again);
            domain = again.domain;
          }
        }
      }
    } finally {
      for (const r of reopened) await r.close().catch(() => undefined);
    }
  }

  /** The job's files on the domain's host: its unix socket (none on TCP) and scratch files. */
  private files(): string[] {
    return [...(this.endpoint.kind === 'unix' ? [this.endpoint.socket] : []), ...this.scratchFiles.values()];
  }

  /** The files still there (a file that cannot be looked at counts as gone: removal would fail the same way). */
  private async remaining(): Promise<string[]> {
    const there: string[] = [];
    for (const file of this.files()) if (await this.host.exists(file).catch(() => false)) there.push(file);
    return there;
  }

  private async removeLeftovers(): Promise<void> {
    for (const file of await this.remaining()) {
      this.log.warn(`Removing ${file}, left behind by the backup job.`);
      await this.host.remove(file).catch((e: unknown) => this.log.warn(`Cannot remove ${file}: ${messageOf(e)}`));
    }
  }
}
