/**
 * Checks and shapes what an Export hands back before it goes on the wire:
 * read results become a list of data/hole Chunks exactly covering the
 * request (adjacent holes merged), and block status becomes descriptors
 * clipped to the request. A backend that returns something inconsistent
 * gets an EIO ExportError naming the problem, never a malformed reply.
 */
import type { Chunk } from '../chunk.js';
import { ExportError, type AllocationExtent } from './export.js';
import type { BlockStatusDescriptor } from './protocol.js';

/** The spec's advice: no more than 2^20 descriptors per block status chunk. */
export const MAX_DESCRIPTORS = 1 << 20;

export function readPieces(result: Buffer | Chunk[], offset: number, length: number): Chunk[] {
  if (Buffer.isBuffer(result)) {
    if (result.length !== length) {
      throw new ExportError('EIO', `export returned ${result.length} bytes for a ${length}-byte read at ${offset}`);
    }
    return length === 0 ? [] : [{ offset, length, data: result }];
  }
  const pieces: Chunk[] = [];
  let at = offset;
  for (const c of result) {
    if (c.offset !== at || !(c.length > 0)) {
      throw new ExportError('EIO', `export read at ${offset}: piece at ${c.offset} length ${c.length} does not continue at ${at}`);
    }
    if (c.zero) {
      const last = pieces[pieces.length - 1];
      if (last?.zero) last.length += c.length;
      else pieces.push({ offset: c.offset, length: c.length, zero: true });
    } else if (c.data && c.data.length === c.length) {
      pieces.push({ offset: c.offset, length: c.length, data: c.data });
    } else {
      throw new ExportError('EIO', `export read at ${offset}: piece at ${c.offset} has neither zero nor ${c.length} bytes of data`);
    }
    at += c.length;
  }
  if (at !== offset + length) {
    throw new ExportError('EIO', `export read at ${offset}: pieces cover ${at - offset} of ${length} bytes`);
  }
  return pieces;
}

/**
 * Descriptors for [offset, offset+length): consecutive, clipped to the
 * request, equal neighbours merged, at most `limit` of them.
 */
export function allocationDescriptors(
  extents: AllocationExtent[],
  offset: number,
  length: number,
  limit: number,
): BlockStatusDescriptor[] {
  const end = offset + length;
  const out: BlockStatusDescriptor[] = [];
  let at = offset;
  for (const e of extents) {
    if (at >= end) break;
    if (e.offset !== at || !(e.length > 0)) {
      throw new ExportError('EIO', `block status at ${offset}: extent at ${e.offset} length ${e.length} does not continue at ${at}`);
    }
    const len = Math.min(e.length, end - at);
    const flags = e.flags >>> 0;
    const last = out[out.length - 1];
    if (last && last.flags === flags) {
      last.length += len;
    } else {
      if (out.length === limit) break;
      out.push({ length: len, flags });
    }
    at += len;
  }
  if (out.length === 0) throw new ExportError('EIO', `block status at ${offset}: export returned no extents`);
  return out;
}
