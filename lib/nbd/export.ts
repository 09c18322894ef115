/**
 * An Export is what NbdServer serves under a name: a virtual disk of `size`
 * bytes. Only `read` is required; each optional method the backend has
 * turns on the matching NBD command (and transmission flag). A backend
 * without `write` is read-only.
 *
 * Reads may return the bytes as one Buffer, or as a list of Chunks covering
 * the range in order, where a `zero` chunk is a hole: the server then sends
 * NBD_REPLY_TYPE_OFFSET_HOLE instead of zero bytes (structured replies), so
 * sparse backends (a backup chain, a memory map) never materialise zeros.
 *
 * Methods report failure by throwing: an ExportError (or any error whose
 * `code` is a POSIX name such as 'ENOSPC', as fs errors are) becomes that
 * NBD errno; anything else becomes EIO. The message reaches the client in a
 * structured error chunk.
 */
import type { Chunk } from '../chunk.js';

/** One run of block status in the `base:allocation` context. */
export interface AllocationExtent {
  offset: number;
  length: number;
  /** NBD_STATE_HOLE (1) and/or NBD_STATE_ZERO (2); 0 = allocated data. */
  flags: number;
}

/** Size constraints a backend wants (NBD_INFO_BLOCK_SIZE). */
export interface BlockSizeConstraints {
  /** Smallest addressable unit; requests not aligned to it fail with EINVAL. Power of 2, <= 65536. */
  minimum: number;
  /** Size for efficient I/O. Power of 2, >= max(minimum, 512). */
  preferred: number;
  /** Largest payload of one READ or WRITE request. */
  maximum: number;
}

export interface WriteZeroesOptions {
  /** NBD_CMD_FLAG_NO_HOLE: the range must stay allocated (no punching). */
  noHole: boolean;
}

export interface Export {
  /** Size in bytes; fixed for the life of the export. */
  readonly size: number;
  /** Refuse writes (EPERM) even if `write` exists. Default: true when `write` is absent. */
  readonly readOnly?: boolean;
  /** Several connections see each other's writes once flushed (NBD_FLAG_CAN_MULTI_CONN). */
  readonly canMultiConn?: boolean;
  /** Human-readable text for NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  readonly description?: string;
  /** Defaults: minimum 1, preferred 4096, maximum = the server's maxPayload. */
  readonly blockSize?: BlockSizeConstraints;

  /**
   * Read [offset, offset+length): either exactly `length` bytes, or Chunks
   * that cover the range contiguously in offset order, each with `data`
   * (data.length === chunk.length) or `zero: true`.
   */
  read(offset: number, length: number): Promise<Buffer | Chunk[]>;
  write?(offset: number, data: Buffer): Promise<void>;
  /** Make the range read as zeros. Without it the server writes zero buffers. */
  writeZeroes?(offset: number, length: number, options: WriteZeroesOptions): Promise<void>;
  /** Discard the range (a hint; contents afterwards are unspecified). */
  trim?(offset: number, length: number): Promise<void>;
  /** Persist all completed writes. Also used for FUA (flush after the write). */
  flush?(): Promise<void>;
  /**
   * `base:allocation` status from `offset`: contiguous extents starting at
   * `offset`; they may cover less than `length` (the client asks again) but
   * at least one byte. Without it everything is reported as allocated data.
   */
  blockStatus?(offset: number, length: number): Promise<AllocationExtent[]>;
}

/** NBD error names an Export may throw (the spec's error values). */
export type NbdErrorCode = 'EPERM' | 'EIO' | 'ENOMEM' | 'EINVAL' | 'ENOSPC' | 'EOVERFLOW' | 'ENOTSUP' | 'ESHUTDOWN';

/** Error an Export throws to choose the NBD errno the client receives. */
export class ExportError extends Error {
  override name = 'ExportError';
  readonly code: NbdErrorCode;
  constructor(code: NbdErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}
