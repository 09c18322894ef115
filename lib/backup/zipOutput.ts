/**
 * The zip archive on stdout of `virtnbdbackup -o -` (see output.ts). Its own
 * module, imported only for `-o -`: archiver and its dependencies add ~25 MB
 * of memory to every process that loads them.
 */
import { createReadStream } from 'node:fs';
import type { Writable } from 'node:stream';
import { ZipSink } from '../../streams/ZipSink.js';
import { BackupError } from './errors.js';
import { onFinish, type SetOutput } from './output.js';

export class ZipOutput implements SetOutput {
  private readonly sink: ZipSink;
  private readonly names: string[] = [];

  constructor(stream: Writable) {
    this.sink = new ZipSink(stream);
  }

  get description(): string {
    return 'zip archive on stdout';
  }

  get written(): readonly string[] {
    return this.names;
  }

  dataFile(name: string): Writable {
    return onFinish(this.sink.entry(name), () => this.names.push(name));
  }

  rawImage(name: string): Writable {
    throw new BackupError('output', `Raw image ${name} cannot be written into a zip archive`);
  }

  async writeFile(name: string, data: string | Buffer): Promise<void> {
    await this.sink.add(name, data);
    this.names.push(name);
  }

  async copyFile(name: string, source: string): Promise<void> {
    await this.sink.add(name, createReadStream(source));
    this.names.push(name);
  }

  async finish(): Promise<void> {
    await this.sink.finalize();
  }

  async discard(error: Error): Promise<void> {
    this.sink.abort(error);
  }
}
