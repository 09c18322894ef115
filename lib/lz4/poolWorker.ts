/**
 * PoolWorker: one LZ4 worker thread (worker.ts) as the main thread sees it:
 * its input slots (who may fill which), its jobs in flight (settled by the
 * worker's replies) and its life: ref'd while it has jobs, unref'd and
 * retired after `idleMs` without any, failing every job if it dies.
 */
import { Worker } from 'node:worker_threads';
import { Lz4ChecksumError, Lz4DecodeError } from './errors.js';
import type { FromWorker, ToWorker, WorkerFailure, WorkerSetup } from './protocol.js';

/** A worker failed or exited while it had jobs. */
export class Lz4WorkerError extends Error {
  override readonly name = 'Lz4WorkerError';
}

/**
 * The worker's heap: it holds a block encoder's hash table and a few
 * message objects; its data lives in shared buffers. A small young
 * generation and a small old one keep the isolate from growing a
 * main-thread-sized heap (its live heap is node's worker bootstrap, a few MB).
 */
const WORKER_LIMITS = { maxYoungGenerationSizeMb: 2, maxOldGenerationSizeMb: 16 };

/**
 * Start worker.js next to this file. Run from the TypeScript sources (tsx,
 * as the tests and scripts do), the sibling is worker.ts and worker threads
 * do not inherit tsx's loader: a two-line bootstrap registers it first.
 */
function startWorker(setup: WorkerSetup): Worker {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./worker.js', import.meta.url), { workerData: setup, resourceLimits: WORKER_LIMITS });
  const tsx = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./worker.ts', import.meta.url).href;
  const bootstrap = `import(${JSON.stringify(tsx)}).then((api) => { api.register(); return import(${JSON.stringify(entry)}); });`;
  return new Worker(bootstrap, { eval: true, workerData: setup, resourceLimits: WORKER_LIMITS });
}

function errorFrom(failure: WorkerFailure): Error {
  if (failure.checksumKind) return new Lz4ChecksumError(failure.checksumKind, failure.message, failure.offsetInFrame ?? 0);
  if (failure.name === 'Lz4DecodeError') return new Lz4DecodeError(failure.message, failure.offsetInFrame);
  const err = new Error(failure.message);
  err.name = failure.name;
  return err;
}

interface PendingJob {
  resolve(bytes: Buffer): void;
  reject(err: Error): void;
  /** The recycled buffer the worker writes into, if any. */
  output: SharedArrayBuffer | undefined;
  /** Compression in parts: each part's bytes (its own buffer, or undefined when written into the one the job sent). */
  part?: (buffer: ArrayBuffer | undefined, length: number) => void;
}

/** One worker thread, its slots and its jobs, as the main thread sees them. */
export class PoolWorker {
  readonly worker: Worker;
  readonly slots: Uint8Array[];
  private readonly free: number[];
  private readonly slotWaiters: Array<(slot: number) => void> = [];
  private readonly jobs = new Map<number, PendingJob>();
  private idleTimer: NodeJS.Timeout | undefined;
  dead: Error | undefined;

  /** `gone` is told when the worker exits, dies or retires, so its pool stops picking it. */
  constructor(
    setup: WorkerSetup,
    private readonly idleMs: number,
    private readonly gone: (worker: PoolWorker) => void,
  ) {
    this.slots = Array.from({ length: setup.slotCount }, (_, i) => new Uint8Array(setup.slots, i * setup.slotSize, setup.slotSize));
    this.free = this.slots.map((_, i) => i);
    this.worker = startWorker(setup);
    this.worker.on('message', (m: FromWorker) => this.onMessage(m));
    this.worker.on('error', (err) => this.die(new Lz4WorkerError(`LZ4 worker failed: ${err.message}`, { cause: err })));
    this.worker.on('exit', (code) => this.die(new Lz4WorkerError(`LZ4 worker exited (code ${code})`)));
    this.idle();
  }

  get load(): number {
    return this.jobs.size;
  }

  post(message: ToWorker): void {
    this.worker.postMessage(message);
  }

  /** Register job `id` (writing into `output`, if given); its promise settles when the worker is done with it. */
  track(id: number, output?: SharedArrayBuffer): Promise<Buffer> {
    if (this.dead) return Promise.reject(this.dead);
    if (this.jobs.size === 0) this.busy();
    return new Promise((resolve, reject) => this.jobs.set(id, { resolve, reject, output }));
  }

  /**
   * Register job `id` compressed in parts: `part` is given each part as the
   * worker sends it, in order; the promise settles after the last one.
   */
  trackParts(id: number, part: (buffer: ArrayBuffer | undefined, length: number) => void): Promise<void> {
    if (this.dead) return Promise.reject(this.dead);
    if (this.jobs.size === 0) this.busy();
    return new Promise((resolve, reject) => this.jobs.set(id, { resolve: () => resolve(), reject, output: undefined, part }));
  }

  /** Forget job `id` (the worker is told to drop it too). */
  drop(id: number): void {
    if (!this.jobs.delete(id)) return;
    if (!this.dead) this.post({ op: 'drop', id });
    if (this.jobs.size === 0) this.idle();
  }

  /** A free slot now, or -1. */
  trySlot(): number {
    return this.free.pop() ?? -1;
  }

  /** A slot, once one is free (first come, first served). */
  slot(): Promise<number> {
    if (this.dead) return Promise.reject(this.dead);
    const now = this.trySlot();
    if (now >= 0) return Promise.resolve(now);
    return new Promise((resolve) => this.slotWaiters.push(resolve));
  }

  giveBack(slot: number): void {
    const waiter = this.slotWaiters.shift();
    if (waiter) waiter(slot);
    else this.free.push(slot);
  }

  private onMessage(message: FromWorker): void {
    if (message.op === 'slot') {
      this.giveBack(message.slot);
      return;
    }
    const job = this.jobs.get(message.id);
    if (!job) return;
    if (message.op === 'part') {
      if (message.last) this.jobs.delete(message.id);
      if (message.last && this.jobs.size === 0) this.idle();
      job.part?.(message.buffer, message.length);
      if (message.last) job.resolve(Buffer.alloc(0));
      return;
    }
    this.jobs.delete(message.id);
    if (this.jobs.size === 0) this.idle();
    if (message.op === 'done') job.resolve(Buffer.from(message.buffer ?? job.output!, 0, message.length));
    else job.reject(errorFrom(message.error));
  }

  private busy(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    this.worker.ref();
  }

  private idle(): void {
    // Idle workers must not keep the process alive, and exit after a while to give their memory back.
    this.worker.unref();
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.retire(), this.idleMs);
    this.idleTimer.unref();
  }

  private retire(): void {
    if (this.jobs.size > 0) return;
    this.gone(this);
    this.dead = new Lz4WorkerError('LZ4 worker retired');
    void this.worker.terminate();
  }

  private die(err: Error): void {
    if (this.dead) return;
    this.dead = err;
    clearTimeout(this.idleTimer);
    this.gone(this);
    for (const job of this.jobs.values()) job.reject(err);
    this.jobs.clear();
    // Waiters for a slot fail on their next step: hand them a slot that is never posted.
    for (const waiter of this.slotWaiters.splice(0)) waiter(-1);
  }

  terminate(): Promise<number> {
    this.dead ??= new Lz4WorkerError('LZ4 worker pool closed');
    clearTimeout(this.idleTimer);
    for (const job of this.jobs.values()) job.reject(this.dead);
    this.jobs.clear();
    return this.worker.terminate();
  }
}
