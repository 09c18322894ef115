/**
 * The worker thread of Lz4WorkerPool: compresses and decompresses LZ4
 * frames fed to it through shared slots (protocol.ts). Jobs of several
 * streams may interleave; each job's messages arrive in order, so one frame
 * encoder or decoder per job carries it from the first bytes to the end.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Lz4BlockEncoder } from './blockEncoder.js';
import { Lz4ChecksumError, Lz4DecodeError } from './errors.js';
import { Lz4FrameDecoder } from './frameDecoder.js';
import { isLz4BlockSize, lz4FrameBound, lz4PartBound, Lz4FrameEncoder, type Lz4BlockSize } from './frameEncoder.js';
import type { FromWorker, ToWorker, WorkerFailure, WorkerSetup } from './protocol.js';

const port = parentPort;
if (!port) throw new Error('lib/lz4/worker.ts runs as a worker thread only');
const setup = workerData as WorkerSetup;
if (!isLz4BlockSize(setup.blockSize)) throw new Error(`bad LZ4 block size ${setup.blockSize}`);
const blockSize: Lz4BlockSize = setup.blockSize;
const slots = Array.from({ length: setup.slotCount }, (_, i) => new Uint8Array(setup.slots, i * setup.slotSize, setup.slotSize));
/** One hash table for every compression: jobs run one at a time here. */
const blockEncoder = new Lz4BlockEncoder();

interface Job {
  /** Transferred back when done; undefined when writing into the caller's shared buffer. */
  buffer: ArrayBuffer | undefined;
  bytes: Uint8Array;
  encoder?: Lz4FrameEncoder;
  decoder?: Lz4FrameDecoder;
  /** Compression in parts: the frame's content size, and whether its first part was written. */
  parts?: { contentSize: number; begun: boolean };
}

const jobs = new Map<number, Job>();

function send(message: FromWorker, transfer?: ArrayBuffer[]): void {
  port!.postMessage(message, transfer);
}

function failure(err: unknown): WorkerFailure {
  const error = err instanceof Error ? err : new Error(String(err));
  const out: WorkerFailure = { name: error.name, message: error.message };
  if (error instanceof Lz4DecodeError && error.offsetInFrame !== undefined) out.offsetInFrame = error.offsetInFrame;
  if (error instanceof Lz4ChecksumError) out.checksumKind = error.kind;
  return out;
}

function handle(message: ToWorker): void {
  switch (message.op) {
    case 'compress': {
      if (message.parts) {
        const encoder = new Lz4FrameEncoder(blockSize, blockEncoder);
        jobs.set(message.id, { buffer: undefined, bytes: new Uint8Array(0), encoder, parts: { contentSize: message.contentSize, begun: false } });
        return;
      }
      const bound = lz4FrameBound(message.contentSize, blockSize);
      const buffer = message.output ? undefined : new ArrayBuffer(bound);
      const bytes = message.output ? new Uint8Array(message.output, 0, bound) : new Uint8Array(buffer!);
      const encoder = new Lz4FrameEncoder(blockSize, blockEncoder);
      // The main thread hashes the content as it copies it in: that work then runs beside ours.
      encoder.begin(bytes, message.contentSize, false);
      jobs.set(message.id, { buffer, bytes, encoder });
      return;
    }
    case 'decompress': {
      const buffer = message.output ? undefined : new ArrayBuffer(message.capacity);
      const bytes = message.output ? new Uint8Array(message.output, 0, message.capacity) : new Uint8Array(buffer!);
      const decoder = new Lz4FrameDecoder();
      decoder.begin(message.descriptor, bytes);
      jobs.set(message.id, { buffer, bytes, decoder });
      return;
    }
    case 'data': {
      const job = jobs.get(message.id);
      try {
        // A job that failed or was dropped ignores the rest of its data.
        if (job) {
          const src = message.slot >= 0 ? slots[message.slot]! : new Uint8Array(0);
          if (job.parts) {
            part(message, job.parts, job.encoder!, src);
          } else if (job.encoder) {
            job.encoder.write(src, 0, message.length);
            if (message.last) finish(message.id, job, job.encoder.end(message.contentChecksum));
          } else if (job.decoder) {
            job.decoder.blocks(src, 0, message.length, message.frameOffset);
            if (message.last) finish(message.id, job, job.decoder.end(message.contentChecksum, message.frameOffset + message.length + 4));
          }
        }
      } catch (err) {
        jobs.delete(message.id);
        send({ op: 'failed', id: message.id, error: failure(err) });
      } finally {
        if (message.slot >= 0) send({ op: 'slot', slot: message.slot });
      }
      return;
    }
    case 'drop':
      jobs.delete(message.id);
      return;
  }
}

/** Write one part of a frame compressed in parts into the message's buffer (or a new one) and send it. */
function part(message: Extract<ToWorker, { op: 'data' }>, parts: { contentSize: number; begun: boolean }, encoder: Lz4FrameEncoder, src: Uint8Array): void {
  const bound = lz4PartBound(message.length, !parts.begun, message.last, blockSize);
  const buffer = message.output ? undefined : new ArrayBuffer(bound);
  const dst = message.output ? new Uint8Array(message.output, 0, bound) : new Uint8Array(buffer!);
  if (parts.begun) encoder.resume(dst);
  else encoder.begin(dst, parts.contentSize, false, false);
  parts.begun = true;
  encoder.write(src, 0, message.length);
  const length = message.last ? encoder.end(message.contentChecksum) : encoder.cut();
  if (message.last) jobs.delete(message.id);
  if (buffer) send({ op: 'part', id: message.id, buffer, length, last: message.last }, [buffer]);
  else send({ op: 'part', id: message.id, length, last: message.last });
}

function finish(id: number, job: Job, length: number): void {
  jobs.delete(id);
  if (job.buffer) send({ op: 'done', id, buffer: job.buffer, length }, [job.buffer]);
  else send({ op: 'done', id, length });
}

port.on('message', handle);
