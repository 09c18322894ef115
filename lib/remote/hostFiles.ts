/**
 * The hypervisor's files, as backup and restore need them: image info
 * (qemu-img), boot files to copy out or put back, restored images to
 * create, commit under their final names, or remove. LocalHostFiles works
 * on this machine; SshHostFiles (sshHostFiles.ts) does the same on a
 * remote hypervisor over ssh, so a backup host needs nothing but ssh.
 * Paths are the hypervisor's, absolute.
 */
import { execFile } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { link, mkdir, open, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { convertImage, createImage, type ConvertImageOptions, type CreateImageOptions } from '../qemu/qemuImg.js';

const run = promisify(execFile);

/** A final name is taken and overwriting was not asked for. */
export class FileExistsError extends Error {
  override readonly name = 'FileExistsError';
}

export interface HostFiles {
  /** "this host", or "root@hv" for messages. */
  readonly description: string;
  readonly remote: boolean;
  exists(path: string): Promise<boolean>;
  /** A small file, whole; refused above `maxBytes`. */
  readFile(path: string, maxBytes: number): Promise<Buffer>;
  /** A file's bytes as a stream. */
  openRead(path: string): Promise<Readable>;
  /** `source` into a new file `path` (it must not exist), flushed to disk. */
  writeNew(path: string, source: Readable | Buffer | string): Promise<void>;
  mkdirp(path: string): Promise<void>;
  remove(path: string): Promise<void>;
  /** Move `temp` to `final` (refused with FileExistsError when it exists, unless `overwrite`), and sync the directory. */
  commit(temp: string, final: string, overwrite: boolean): Promise<void>;
  /** fsync a file (or directory). */
  sync(path: string): Promise<void>;
  /** `qemu-img info --output json --force-share`, as printed. */
  qemuImageInfo(path: string): Promise<string>;
  /** `qemu-img create` (overwrites `path`: the caller checks first). */
  createImage(path: string, opts: CreateImageOptions): Promise<void>;
  /** `qemu-img convert`, sparse. */
  convertImage(source: string, target: string, opts: ConvertImageOptions): Promise<void>;
}

export class LocalHostFiles implements HostFiles {
  readonly description = 'this host';
  readonly remote = false;

  async exists(path: string): Promise<boolean> {
    return stat(path).then(
      () => true,
      () => false,
    );
  }

  async readFile(path: string, maxBytes: number): Promise<Buffer> {
    const size = (await stat(path)).size;
    if (size > maxBytes) throw new Error(`${path} holds ${size} bytes, more than the ${maxBytes} expected`);
    return readFile(path);
  }

  async openRead(path: string): Promise<Readable> {
    const stream = createReadStream(path);
    await new Promise<void>((resolve, reject) => {
      stream.once('open', () => resolve());
      stream.once('error', reject);
    });
    return stream;
  }

  async writeNew(path: string, source: Readable | Buffer | string): Promise<void> {
    if (typeof source === 'string' || Buffer.isBuffer(source)) await writeFile(path, source, { flag: 'wx', flush: true });
    else await pipeline(source, createWriteStream(path, { flags: 'wx', flush: true }));
  }

  async mkdirp(path: string): Promise<void> {
    await mkdir(path, { recursive: true });
  }

  async remove(path: string): Promise<void> {
    await rm(path, { force: true });
  }

  async commit(temp: string, final: string, overwrite: boolean): Promise<void> {
    if (overwrite) await rename(temp, final);
    else {
      try {
        await link(temp, final);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new FileExistsError(`${final} exists already`);
        throw e;
      }
      await unlink(temp);
    }
    await this.sync(dirname(final));
  }

  async sync(path: string): Promise<void> {
    const handle = await open(path, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  async qemuImageInfo(path: string): Promise<string> {
    const { stdout } = await run('qemu-img', ['info', path, '--output', 'json', '--force-share'], { maxBuffer: 16 * 1024 * 1024 });
    return stdout.trim();
  }

  async createImage(path: string, opts: CreateImageOptions): Promise<void> {
    await createImage(path, opts);
  }

  async convertImage(source: string, target: string, opts: ConvertImageOptions): Promise<void> {
    await convertImage(source, target, opts);
  }
}

/** Copy a hypervisor file to a new local file (for the backup set's side files). */
export async function copyToLocal(files: HostFiles, path: string, localPath: string): Promise<void> {
  await pipeline(await files.openRead(path), createWriteStream(localPath, { flags: 'wx' }));
}
