import { PassThrough, Readable, Writable, pipeline } from 'node:stream';
import { ZipArchive } from 'archiver';

/**
 * ZipSink: named entries in, one zip archive out, streamed to any Writable
 * (process.stdout, a FileSink...). Each entry is stored (uncompressed), as
 * virtnbdbackup's `--output -` does; entries of unknown size carry a data
 * descriptor, and past 4 GiB archiver switches that entry (data descriptor
 * and central directory) and the archive end to zip64. Entries are written
 * in the order they are opened: `entry(name)` gives a Writable for one
 * entry's bytes (the end of a pipeline); it finishes once archiver has
 * taken all of them, and an entry opened while another is still being
 * written waits for it under backpressure. Buffers: per entry one
 * high-water mark (default 1 MiB) plus archiver's own stream buffers.
 * Any failure (an entry's producer failing or aborting, archiver, the
 * output) fails the whole sink: a zip cannot rewind, so the output is
 * destroyed with the error (a FileSink output then removes its partial
 * file), every open entry errors, and finalize() rejects.
 */

export interface ZipSinkOptions {
  /** Modification time of the entries (default: when each entry is opened). */
  date?: Date;
  /** Bytes an entry buffers before its producer must wait (default 1 MiB). */
  highWaterMark?: number;
}

export interface ZipEntryOptions {
  /** Modification time of this entry. */
  date?: Date;
  /** Unix permission bits (default 0o644). */
  mode?: number;
}

/** A ZipSink that cannot accept or complete an entry. */
export class ZipSinkError extends Error {
  override readonly name = 'ZipSinkError';
}

interface PendingEntry {
  name: string;
  /** Absent for entries appended whole from a Buffer. */
  writer?: ZipEntryWriter;
  resolve: () => void;
  reject: (error: Error) => void;
}

export class ZipSink {
  private readonly archive: ZipArchive;
  private readonly options: ZipSinkOptions;
  /** Entries handed to archiver and not yet completely written, oldest first. */
  private readonly pending: PendingEntry[] = [];
  private failure: Error | undefined;
  private finalizing = false;
  private readonly outputDone: Promise<void>;

  constructor(output: Writable, options: ZipSinkOptions = {}) {
    this.options = options;
    // Local time in the DOS timestamps, as Python's zipfile writes them.
    this.archive = new ZipArchive({ store: true, forceLocalTime: true });
    // archiver processes its queue one entry at a time, so 'entry' events
    // arrive in the order the entries were appended.
    this.archive.on('entry', () => this.pending.shift()?.resolve());
    this.archive.on('warning', (error: Error) => this.abort(error));
    // Stays attached: archiver may emit more errors after the first.
    this.archive.on('error', (error: Error) => this.abort(error));
    this.outputDone = new Promise<void>((resolve, reject) => {
      pipeline(this.archive, output, (error) => {
        if (error) {
          this.abort(error);
          reject(this.failure ?? error);
        } else {
          resolve();
        }
      });
    });
    // Rejections surface through entries and finalize(); never unhandled.
    this.outputDone.catch(() => undefined);
  }

  /** Bytes of archive produced so far. */
  get bytesWritten(): number {
    return this.archive.pointer();
  }

  /**
   * Opens the next entry and returns the Writable its bytes go to. It
   * finishes when the entry is completely in the archive stream, and
   * errors if the sink fails.
   */
  entry(name: string, options: ZipEntryOptions = {}): Writable {
    this.checkOpen(name);
    const source = new PassThrough({ highWaterMark: this.options.highWaterMark ?? 1024 * 1024 });
    // Errors of `source` are handled by abort(); archiver never sees them
    // (it pipes sources on, and pipe() does not forward errors).
    source.on('error', () => undefined);
    let resolve!: () => void;
    let reject!: (error: Error) => void;
    const appended = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    appended.catch(() => undefined);
    const writer = new ZipEntryWriter(this, name, source, appended, this.options.highWaterMark);
    this.pending.push({ name, writer, resolve, reject });
    this.archive.append(source, { name, store: true, date: this.entryDate(options), mode: options.mode });
    return writer;
  }

  private entryDate(options: ZipEntryOptions): Date {
    return options.date ?? this.options.date ?? new Date();
  }

  /**
   * Adds a whole entry from bytes, a string (UTF-8) or a Readable; resolves
   * once it is in the archive stream. Bytes and strings get their size and
   * CRC-32 in the local header (no data descriptor).
   */
  async add(name: string, data: Buffer | string | Readable, options: ZipEntryOptions = {}): Promise<void> {
    if (data instanceof Readable) {
      const writer = this.entry(name, options);
      await new Promise<void>((resolve, reject) => {
        pipeline(data, writer, (error) => (error ? reject(error) : resolve()));
      });
      return;
    }
    this.checkOpen(name);
    const appended = new Promise<void>((resolve, reject) => this.pending.push({ name, resolve, reject }));
    this.archive.append(typeof data === 'string' ? Buffer.from(data) : data, { name, store: true, date: this.entryDate(options), mode: options.mode });
    await appended;
  }

  /**
   * Ends the archive after the entries opened so far (writes the central
   * directory) and resolves when the output has finished.
   */
  async finalize(): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.finalizing) throw new ZipSinkError('ZipSink.finalize() called twice');
    this.finalizing = true;
    this.archive.finalize().catch((error: Error) => this.abort(error));
    await this.outputDone;
    if (this.failure) throw this.failure;
  }

  /** The first error that failed the sink, if any. */
  get error(): Error | undefined {
    return this.failure;
  }

  /**
   * Gives up (also what an entry does when its producer fails or goes
   * away): the output is destroyed with `error`, open entries error,
   * finalize() rejects. Only the first error counts.
   */
  abort(error: Error = new ZipSinkError('zip archive aborted')): void {
    if (this.failure) return;
    this.failure = error;
    const entries = this.pending.splice(0);
    for (const entry of entries) entry.reject(error);
    for (const entry of entries) entry.writer?.destroy(error);
    this.archive.abort();
    // Destroying archiver makes pipeline() destroy the output with `error`.
    this.archive.destroy(error);
  }

  private checkOpen(name: string): void {
    if (this.failure) throw new ZipSinkError(`Cannot add ${name} to the zip archive: it already failed: ${this.failure.message}`, { cause: this.failure });
    if (this.finalizing) throw new ZipSinkError(`Cannot add ${name} to the zip archive: it is finalized`);
    // archiver silently rewrites such names (drops a leading "/", "../" or "C:", turns "\" into "/").
    if (name === '' || name.startsWith('/') || name.endsWith('/') || name.includes('\\') || /^\w+:/.test(name) || name.split('/').some((part) => part === '' || part === '.' || part === '..')) {
      throw new ZipSinkError(`Invalid zip entry name ${JSON.stringify(name)}`);
    }
  }
}

/**
 * The Writable side of one entry: forwards bytes to the PassThrough that
 * archiver reads, with backpressure, and finishes only once archiver has
 * written the whole entry.
 */
class ZipEntryWriter extends Writable {
  private ended = false;

  constructor(
    private readonly sink: ZipSink,
    readonly entryName: string,
    private readonly source: PassThrough,
    private readonly appended: Promise<void>,
    highWaterMark: number | undefined,
  ) {
    super({ highWaterMark: highWaterMark ?? 1024 * 1024 });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.source.write(chunk)) {
      callback();
      return;
    }
    // Wait for archiver to take the buffered bytes, or for the sink to fail.
    const onDrain = (): void => {
      this.source.off('close', onClose);
      callback();
    };
    const onClose = (): void => {
      this.source.off('drain', onDrain);
      callback(this.sink.error ?? new ZipSinkError(`zip entry ${this.entryName} was closed`));
    };
    this.source.once('drain', onDrain);
    this.source.once('close', onClose);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.ended = true;
    this.source.end();
    this.appended.then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (!this.source.destroyed && !(this.ended && this.source.writableFinished)) {
      // Leaving an entry unfinished leaves the archive unfinishable.
      const reason = error ?? new ZipSinkError(`zip entry ${this.entryName} was aborted before its end`);
      this.source.destroy(reason);
      this.sink.abort(reason);
    }
    callback(error);
  }
}
