/**
 * Messages between Lz4WorkerPool (main thread) and its workers (worker.ts).
 *
 * Input travels through slots: fixed regions of a SharedArrayBuffer each
 * worker gets at start. The main thread copies bytes into a free slot and
 * posts its number; the worker hands the slot back once it has used the
 * bytes. Output (compressed frames, decompressed data) is built in a
 * recycled SharedArrayBuffer the job brings, or in a buffer the worker
 * allocates and transfers back; never copied.
 */
import type { Lz4FrameDescriptor } from '../format/lz4Frame.js';

export interface WorkerSetup {
  slots: SharedArrayBuffer;
  slotSize: number;
  slotCount: number;
  blockSize: number;
}

export type ToWorker =
  /**
   * Start compressing a frame of contentSize bytes, into `output` when given
   * (a recycled buffer), else a new one. With `parts`, the frame is written
   * in parts instead, one per data message, each into that message's
   * `output` (or a new buffer), and each answered by a 'part'.
   */
  | { op: 'compress'; id: number; contentSize: number; output?: SharedArrayBuffer; parts?: boolean }
  /** Start decoding a frame into `capacity` bytes at most, into `output` when given (a recycled buffer). */
  | { op: 'decompress'; id: number; descriptor: Lz4FrameDescriptor; capacity: number; output?: SharedArrayBuffer }
  /**
   * Bytes for job `id` in `slot` (slot -1: none). Compression: content
   * (whole blocks but for the last), with `contentChecksum` when `last`.
   * Decompression: whole block records starting at byte `frameOffset` of
   * the frame. `output`: where the part this message makes goes (compression in parts).
   */
  | { op: 'data'; id: number; slot: number; length: number; frameOffset: number; last: boolean; contentChecksum?: number; output?: SharedArrayBuffer }
  /** Forget job `id` (its stream gave up). */
  | { op: 'drop'; id: number };

export interface WorkerFailure {
  name: string;
  message: string;
  offsetInFrame?: number;
  checksumKind?: 'block' | 'content';
}

export type FromWorker =
  | { op: 'slot'; slot: number }
  /** Finished: `buffer` is the output (transferred), absent when it was written into the job's `output`. */
  | { op: 'done'; id: number; buffer?: ArrayBuffer; length: number }
  /** The next part of a frame compressed in parts, as 'done' gives a whole one; `last` ends the job. */
  | { op: 'part'; id: number; buffer?: ArrayBuffer; length: number; last: boolean }
  | { op: 'failed'; id: number; error: WorkerFailure };
