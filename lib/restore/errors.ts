/**
 * Typed errors of a restore, dump or verify. Each one is an expected
 * failure with a message that says what is wrong and where (which file,
 * which checkpoint, which entry), meant to be printed as is, without a
 * stack trace. The CLI exits non-zero on every one of them.
 */

/** Base class: a restore, dump or verify cannot be done as asked. */
export class RestoreError extends Error {
  override readonly name: string = 'RestoreError';
}

/** The input is not a usable backup set: missing, empty, unreadable, or a zip with unsafe entry names. */
export class BackupSetError extends RestoreError {
  override readonly name: string = 'BackupSetError';
}

export type ChainProblem =
  /** No full or copy backup to start from. */
  | 'no-base'
  /** A checkpoint the chain needs was created by no file in the set. */
  | 'hole'
  /** Two files claim the same place in the chain. */
  | 'conflict'
  /** --until names a checkpoint no file in the set created. */
  | 'unknown-until'
  /** --sequence lists files that do not form a chain. */
  | 'sequence'
  /** A file's metadata contradicts its name or itself. */
  | 'inconsistent';

/** The data files of a disk do not form a chain that can be restored as asked. */
export class ChainError extends RestoreError {
  override readonly name: string = 'ChainError';

  constructor(
    readonly problem: ChainProblem,
    readonly disk: string,
    message: string,
    /** The checkpoint the problem is about (the missing one, for a hole). */
    readonly checkpoint?: string,
  ) {
    super(message);
  }
}

/** An image to be written exists already (and --overwrite was not given). */
export class TargetExistsError extends RestoreError {
  override readonly name: string = 'TargetExistsError';
}

/** A data file's bytes do not match its `.chksum`. */
export class ChecksumMismatchError extends RestoreError {
  override readonly name: string = 'ChecksumMismatchError';

  constructor(
    readonly file: string,
    readonly expected: number,
    readonly actual: number,
  ) {
    super(`${file}: adler32 checksum ${actual} does not match ${expected} stored in ${file}.chksum: the file is damaged`);
  }
}

/** The restore was interrupted (signal or AbortSignal). */
export class RestoreAbortedError extends RestoreError {
  override readonly name: string = 'RestoreAbortedError';
}
