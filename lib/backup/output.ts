/**
 * Where a backup run's files go: a target directory, or one zip archive
 * streamed to stdout (`-o -`, entries stored uncompressed as virtnbdbackup
 * writes them; zipOutput.ts, loaded only then, as archiver costs ~25 MB). Both take data files as streams and small files whole,
 * remember what they wrote, and on failure discard it: the directory
 * removes this run's files (so the set looks as before the run, and a
 * retry does not collide with them), the zip is aborted (a broken archive
 * cannot be mended). Nothing half-written ever carries a final name.
 */
import { copyFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { partialFileName } from '../format/naming.js';
import { FileSink } from '../../streams/FileSink.js';
import { RawImageSink } from '../../streams/RawImageSink.js';
import { writeFileAtomic } from './atomicFile.js';
import { BackupError, messageOf } from './errors.js';

export interface SetOutput {
  /** For messages: the directory, or "zip archive on stdout". */
  readonly description: string;
  /**
   * The Writable a data file's bytes go to; the file counts once it finished.
   * `onWritten` is told of each buffer the output is done with (directories only).
   */
  dataFile(name: string, onWritten?: (buffer: Buffer) => void): Writable;
  /** A sparse raw image (object mode, Chunks); directories only. */
  rawImage(name: string, virtualSize: number): Writable;
  /** A small file, written whole. */
  writeFile(name: string, data: string | Buffer): Promise<void>;
  /** A copy of a file of this host. */
  copyFile(name: string, source: string): Promise<void>;
  /** Names written so far, relative to the set. */
  readonly written: readonly string[];
  /** Completes the output (the zip's central directory). */
  finish(): Promise<void>;
  /** Gives up: removes this run's files, or aborts the archive. */
  discard(error: Error): Promise<void>;
}

export function onFinish(stream: Writable, done: () => void): Writable {
  stream.once('finish', done);
  return stream;
}

export class DirectoryOutput implements SetOutput {
  private readonly names: string[] = [];

  constructor(readonly dir: string) {}

  get description(): string {
    return this.dir;
  }

  get written(): readonly string[] {
    return this.names;
  }

  dataFile(name: string, onWritten?: (buffer: Buffer) => void): Writable {
    return onFinish(new FileSink(join(this.dir, name), { onWritten }), () => this.names.push(name));
  }

  rawImage(name: string, virtualSize: number): Writable {
    return onFinish(new RawImageSink(join(this.dir, name), { virtualSize }), () => this.names.push(name));
  }

  async writeFile(name: string, data: string | Buffer): Promise<void> {
    await writeFileAtomic(join(this.dir, name), data);
    this.names.push(name);
  }

  async copyFile(name: string, source: string): Promise<void> {
    const target = join(this.dir, name);
    const partial = partialFileName(target);
    try {
      await copyFile(source, partial);
      await rename(partial, target);
    } catch (e) {
      await unlink(partial).catch(() => undefined);
      throw e;
    }
    this.names.push(name);
  }

  async finish(): Promise<void> {}

  async discard(): Promise<void> {
    for (const name of this.names.splice(0).reverse()) {
      await unlink(join(this.dir, name)).catch((e: unknown) => {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new BackupError('output', `Cannot remove ${join(this.dir, name)}: ${messageOf(e)}`);
      });
    }
  }
}
