/**
 * What a file system error says, for the messages of the file sinks: its
 * errno code, and a sysadmin's reading of the common ones.
 */

export function errnoCode(error: unknown): string | undefined {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

const REASONS: Record<string, string> = {
  ENOSPC: 'no space left on device',
  EDQUOT: 'disk quota exceeded',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOENT: 'no such directory',
  ENOTDIR: 'a path component is not a directory',
  EIO: 'input/output error',
  EFBIG: 'file too large',
};

export function reason(error: unknown): string {
  const code = errnoCode(error);
  if (code !== undefined && REASONS[code] !== undefined) return `${REASONS[code]} (${code})`;
  return error instanceof Error ? error.message : String(error);
}
