/**
 * Base for Lz4Decompress (Lz4Compress orders its parts itself): an
 * object-mode Transform that runs up to `depth` asynchronous jobs
 * (decompressions on worker threads) at once and delivers their results
 * strictly in input order. It holds the write callback while `depth` jobs
 * are pending, so at most `depth` inputs and outputs are in memory besides
 * the readable buffer (which Node itself bounds by holding the callback
 * while it is full). The first failure destroys the stream; results of
 * jobs still running are then dropped.
 */
import { Transform, type TransformCallback } from 'node:stream';

interface Job<Out> {
  done: boolean;
  value: Out | undefined;
}

export interface OrderedJobOptions {
  /** Jobs in flight at most (default 4). */
  depth?: number;
  /** Objects buffered on the readable side (default 2). */
  highWaterMark?: number;
}

export abstract class OrderedJobTransform<In, Out> extends Transform {
  readonly depth: number;
  private readonly jobs: Job<Out>[] = [];
  private heldCallback: TransformCallback | null = null;
  private flushCallback: TransformCallback | null = null;
  private failed = false;

  constructor(options: OrderedJobOptions = {}) {
    const highWaterMark = options.highWaterMark ?? 2;
    super({ objectMode: true, readableHighWaterMark: highWaterMark, writableHighWaterMark: highWaterMark });
    const depth = options.depth ?? 4;
    if (!Number.isInteger(depth) || depth < 1) throw new RangeError(`depth must be a positive integer, got ${depth}`);
    this.depth = depth;
  }

  /** Start work on one input, in input order. Return the result directly when there is no work. */
  protected abstract start(input: In): Promise<Out> | Out;

  /**
   * True for a result returned directly that has nothing to deliver: it
   * then takes no place in the queue (order is unaffected, as it delivers
   * nothing), so inputs that only feed work in progress do not count
   * against `depth`.
   */
  protected isEmpty(_result: Out): boolean {
    return false;
  }

  /** Called with each result in input order; may throw to fail the stream. */
  protected deliver(result: Out): void {
    this.push(result);
  }

  /** Called once all results are delivered, before the stream ends; may throw. */
  protected finish(): void {}

  override _transform(input: In, _encoding: BufferEncoding, callback: TransformCallback): void {
    let started: Promise<Out> | Out;
    try {
      started = this.start(input);
    } catch (err) {
      callback(err as Error);
      return;
    }
    if (!(started instanceof Promise) && this.isEmpty(started)) {
      callback();
      return;
    }
    const job: Job<Out> = { done: false, value: undefined };
    this.jobs.push(job);
    if (started instanceof Promise) {
      started.then(
        (value) => {
          job.done = true;
          job.value = value;
          this.drain();
        },
        (err: unknown) => this.fail(err),
      );
    } else {
      job.done = true;
      job.value = started;
    }
    this.heldCallback = callback;
    this.drain();
  }

  override _flush(callback: TransformCallback): void {
    this.flushCallback = callback;
    this.drain();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.failed = true;
    this.jobs.length = 0;
    this.heldCallback = null;
    this.flushCallback = null;
    callback(err);
  }

  private fail(err: unknown): void {
    if (this.failed) return;
    this.failed = true;
    this.destroy(err instanceof Error ? err : new Error(String(err)));
  }

  /** Deliver finished jobs at the head, then let more input in if there is room. */
  private drain(): void {
    if (this.failed) return;
    try {
      while (this.jobs.length > 0 && this.jobs[0]!.done) {
        const job = this.jobs.shift()!;
        this.deliver(job.value as Out);
      }
      if (this.flushCallback && this.jobs.length === 0) this.finish();
    } catch (err) {
      this.fail(err);
      return;
    }
    if (this.heldCallback && this.jobs.length < this.depth) {
      const callback = this.heldCallback;
      this.heldCallback = null;
      callback();
    }
    if (this.flushCallback && this.jobs.length === 0) {
      const callback = this.flushCallback;
      this.flushCallback = null;
      callback();
    }
  }
}
