/**
 * Why a backup run failed, in words a sysadmin acts on. Refusals decided
 * from the inputs alone are BackupPlanErrors (lib/backup/level.ts); what
 * goes wrong while gathering the inputs or carrying the plan out is a
 * BackupError, whose `problem` says which kind of thing failed.
 */

export type BackupProblem =
  /** The target directory, log file or a set file cannot be written. */
  | 'output'
  /** libvirt cannot be reached or refused a call. */
  | 'libvirt'
  | 'domain-not-found'
  /** The domain is shut off and what was asked needs it running (-s, -p). */
  | 'domain-not-running'
  /** A feature of virtnbdbackup that virtnbd does not have yet. */
  | 'not-yet'
  /** Another job (a backup, a migration) runs on the domain. */
  | 'job-active'
  /** The backup job could not be started. */
  | 'job'
  /** A checkpoint's dirty bitmap is missing or broken: only a full backup helps. */
  | 'bitmap'
  /** Saved checkpoint files cannot be read, or libvirt refused to redefine or delete a checkpoint. */
  | 'checkpoint'
  /** Reading a disk over NBD or writing its file failed. */
  | 'disk'
  /** A remote domain's host cannot be reached by ssh. */
  | 'remote'
  /** SIGINT or SIGTERM. */
  | 'interrupted';

export class BackupError extends Error {
  override readonly name: string = 'BackupError';

  constructor(
    readonly problem: BackupProblem,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The run was stopped by a signal; the CLI exits 128 + its number. */
export class BackupInterruptedError extends BackupError {
  override readonly name = 'BackupInterruptedError';

  constructor(readonly signal: 'SIGINT' | 'SIGTERM') {
    super('interrupted', `Backup interrupted by ${signal}`);
  }

  /** 130 for SIGINT, 143 for SIGTERM, as shells report them. */
  get exitCode(): number {
    return this.signal === 'SIGINT' ? 130 : 143;
  }
}

/** The message of any thrown value. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
