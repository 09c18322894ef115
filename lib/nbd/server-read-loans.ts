/**
 * Exports whose reads are lent: the bytes read() returns live in buffers
 * the export reuses, so the server must say when it is done with them
 * (the reply written to the socket, or dropped). Optional: an export
 * without releaseRead owns nothing the server must hand back.
 */
import type { Chunk } from '../chunk.js';
import type { Export } from './export.js';

export interface LendingExport extends Export {
  /** The server no longer reads `result` (what read() returned); called once per read. */
  releaseRead(result: Buffer | Chunk[]): void;
}

export function isLending(exp: Export): exp is LendingExport {
  return typeof (exp as Partial<LendingExport>).releaseRead === 'function';
}
