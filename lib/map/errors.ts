/**
 * Typed errors of virtnbdmap. Each is an expected failure with a message
 * a sysadmin can act on (which file, which disk, which checkpoint), printed
 * as is by the CLI, which then exits non-zero. Failures while serving (a
 * corrupt frame met by a read) are not errors of the mapping: the export
 * answers that read with EIO and keeps serving (see chainExport.ts).
 */

/** Base class: the backup cannot be mapped as asked. */
export class MapError extends Error {
  override readonly name: string = 'MapError';
}

/** A data file cannot be used: missing, unreadable, not a sparse stream, or malformed. */
export class MapInputError extends MapError {
  override readonly name: string = 'MapInputError';

  constructor(
    /** The data file, as given. */
    readonly file: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${detail}`, options);
  }
}

/** The files given do not form one chain of one disk (different disks, a hole, no full backup). */
export class MapChainError extends MapError {
  override readonly name: string = 'MapChainError';
}

/** Instant recovery (--boot) cannot start the domain: no vmconfig, a disk without data files, libvirt refused. */
export class BootError extends MapError {
  override readonly name: string = 'BootError';
}
