/**
 * How a failure inside an Export becomes an NBD error number: an
 * ExportError names its errno; fs-style errors map by their POSIX `code`
 * (ENOSPC, EDQUOT and EFBIG to ENOSPC, EROFS and EACCES to EPERM, as the
 * spec asks); anything else is EIO.
 */
import { ExportError } from './export.js';
import { NBD_EIO, NBD_ENOMEM, NBD_EOVERFLOW, NBD_EPERM, NBD_EINVAL, NBD_ENOSPC, NBD_ENOTSUP, NBD_ESHUTDOWN, errnoFromCode } from './protocol.js';

const BY_NAME: Readonly<Record<ExportError['code'], number>> = {
  EPERM: NBD_EPERM,
  EIO: NBD_EIO,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  ENOSPC: NBD_ENOSPC,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  ESHUTDOWN: NBD_ESHUTDOWN,
};

export function errnoOf(err: unknown): number {
  if (err instanceof ExportError) return BY_NAME[err.code];
  const code = (err as { code?: unknown } | null)?.code;
  return errnoFromCode(typeof code === 'string' ? code : undefined);
}

/** Message for a structured error chunk: bounded to the spec's 4096-byte string limit. */
export function messageOf(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  const bytes = Buffer.from(text, 'utf8');
  return bytes.length <= 4096 ? text : bytes.subarray(0, 4000).toString('utf8');
}

/** A request the server refuses before touching the export. */
export class RequestRefused extends Error {
  override name = 'RequestRefused';
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}
