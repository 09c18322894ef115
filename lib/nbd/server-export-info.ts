/**
 * What the server tells a client about one export, derived from the Export
 * object: transmission flags (which commands it may send) and size
 * constraints. Used by the handshake (NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE,
 * NBD_OPT_EXPORT_NAME reply) and by the session that enforces them.
 */
import type { BlockSizeConstraints, Export } from './export.js';
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
} from './protocol.js';

export function isReadOnly(exp: Export): boolean {
  return exp.readOnly === true || exp.write === undefined;
}

export function transmissionFlags(exp: Export, structuredReplies: boolean): number {
  let flags = NBD_FLAG_HAS_FLAGS;
  if (isReadOnly(exp)) {
    flags |= NBD_FLAG_READ_ONLY;
  } else {
    // Zeroing is always possible: without writeZeroes we write zero buffers.
    flags |= NBD_FLAG_SEND_WRITE_ZEROES;
    if (exp.trim) flags |= NBD_FLAG_SEND_TRIM;
    if (exp.flush) flags |= NBD_FLAG_SEND_FUA;
  }
  if (exp.flush) flags |= NBD_FLAG_SEND_FLUSH;
  if (exp.canMultiConn) flags |= NBD_FLAG_CAN_MULTI_CONN;
  // DF is only meaningful (and only allowed) with structured replies.
  if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
  return flags;
}

export function blockSizeOf(exp: Export, maxPayload: number): BlockSizeConstraints {
  return exp.blockSize ?? { minimum: 1, preferred: 4096, maximum: maxPayload };
}
