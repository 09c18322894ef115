/**
 * Reading a backup set with random access: a directory, or a zip archive
 * that is a regular file (its central directory lists the entries, and
 * each entry can be read on its own, straight from the archive, without
 * unpacking it). Every zip entry name is checked to stay inside the set
 * before anything is read. A zip arriving on a pipe cannot be listed
 * first; see fromStream.ts for that case.
 *
 * Also: the head of a data file (its meta frame) tells a sparse stream
 * from a raw image, and gives the stream's metadata without reading on.
 */
import { open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { FRAME_HEADER_LENGTH, parseFrameHeader } from '../format/frameHeader.js';
import { decodeMetadataJson, normalizeMetadata, type StreamMetadata } from '../format/metadata.js';
import { CHECKPOINT_DIR } from '../format/naming.js';
import { FileSource } from '../../streams/FileSource.js';
import { ZipSource } from '../../streams/ZipSource.js';
import { BackupSetError, RestoreError } from './errors.js';
import { safeEntryName } from './setFiles.js';

/** A backup set that can be listed and whose files can be opened in any order. */
export interface BackupSetReader {
  /** The input as the user named it, for messages. */
  readonly label: string;
  readonly kind: 'directory' | 'zip';
  /** Every file of the set, relative to its root (`vda.full.data`, `checkpoints/virtnbdbackup.0.xml`). */
  readonly names: readonly string[];
  /** The bytes of one file. */
  open(name: string): Promise<Readable>;
  /** The whole of a small file; a BackupSetError if it is larger than `maxBytes`. */
  readFile(name: string, maxBytes: number): Promise<Buffer>;
}

/** What the input is: a directory, a zip file, or a byte stream (pipe, `-`) to be read sequentially. */
export type InputKind = 'directory' | 'zip' | 'stream';

const ZIP_MAGIC = [Buffer.from('PK\x03\x04', 'latin1'), Buffer.from('PK\x05\x06', 'latin1')];

export async function inputKind(input: string): Promise<InputKind> {
  if (input === '-') return 'stream';
  let info;
  try {
    info = await stat(input);
  } catch (error) {
    throw new BackupSetError(`Backup source ${input} does not exist or cannot be read: ${(error as Error).message}`);
  }
  if (info.isDirectory()) return 'directory';
  if (!info.isFile()) return 'stream';
  const handle = await open(input, 'r');
  try {
    const magic = Buffer.alloc(4);
    await handle.read(magic, 0, 4, 0);
    if (ZIP_MAGIC.some((m) => m.equals(magic))) return 'zip';
  } finally {
    await handle.close();
  }
  throw new BackupSetError(`Backup source ${input} is neither a directory nor a zip archive`);
}

export async function openSetReader(input: string, kind: 'directory' | 'zip'): Promise<BackupSetReader> {
  return kind === 'directory' ? DirectorySet.open(input) : ZipFileSet.open(input);
}

async function readAll(stream: Readable, name: string, maxBytes: number, label: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    size += (chunk as Buffer).length;
    if (size > maxBytes) {
      stream.destroy();
      throw new BackupSetError(`${label}: ${name} is larger than ${maxBytes} bytes; it is not the small file expected`);
    }
    parts.push(chunk as Buffer);
  }
  return Buffer.concat(parts);
}

class DirectorySet implements BackupSetReader {
  readonly kind = 'directory';

  private constructor(
    readonly label: string,
    readonly names: readonly string[],
  ) {}

  static async open(dir: string): Promise<DirectorySet> {
    // A set is flat, but for checkpoints/: no deeper walk (a mistyped -i / must not scan the disk).
    const list = async (sub: string): Promise<string[]> => {
      const entries = await readdir(join(dir, sub), { withFileTypes: true });
      return entries.filter((e) => e.isFile()).map((e) => (sub ? `${sub}/${e.name}` : e.name));
    };
    let names: string[];
    try {
      names = await list('');
    } catch (error) {
      throw new BackupSetError(`Cannot list backup directory ${dir}: ${(error as Error).message}`);
    }
    names.push(...(await list(CHECKPOINT_DIR).catch(() => [] as string[])));
    return new DirectorySet(dir, names.sort());
  }

  async open(name: string): Promise<Readable> {
    if (!this.names.includes(name)) throw new BackupSetError(`${this.label}: no file ${name} in the backup set`);
    try {
      // Lends its buffers: a restore hands them back once written, so reading allocates a fixed set.
      return await FileSource.open(join(this.label, name));
    } catch (error) {
      throw new BackupSetError(`Cannot read ${join(this.label, name)}: ${(error as Error).message}`);
    }
  }

  async readFile(name: string, maxBytes: number): Promise<Buffer> {
    return readAll(await this.open(name), name, maxBytes, this.label);
  }
}

class ZipFileSet implements BackupSetReader {
  readonly kind = 'zip';

  private constructor(
    readonly label: string,
    readonly names: readonly string[],
    /** Clean name -> name as stored in the archive. */
    private readonly stored: ReadonlyMap<string, string>,
  ) {}

  static async open(path: string): Promise<ZipFileSet> {
    const stored = new Map<string, string>();
    // Entries nobody reads are never opened: this only walks the central directory.
    for await (const entry of new ZipSource(path)) {
      const clean = safeEntryName(entry.name, path);
      if (stored.has(clean)) throw new BackupSetError(`${path}: entry ${clean} appears twice in the archive`);
      stored.set(clean, entry.name);
    }
    return new ZipFileSet(path, [...stored.keys()].sort(), stored);
  }

  async open(name: string): Promise<Readable> {
    const wanted = this.stored.get(name);
    if (wanted === undefined) throw new BackupSetError(`${this.label}: no entry ${name} in the archive`);
    const entries = new ZipSource(this.label).entries();
    for (;;) {
      const next = await entries.next();
      if (next.done) throw new BackupSetError(`${this.label}: entry ${name} vanished from the archive`);
      if (next.value.name === wanted) {
        const stream = next.value.stream;
        // The iterator stays open while the entry is read; closing it releases the archive.
        stream.once('close', () => void entries.return(undefined));
        return stream;
      }
    }
  }

  async readFile(name: string, maxBytes: number): Promise<Buffer> {
    return readAll(await this.open(name), name, maxBytes, this.label);
  }
}

/** The first bytes of a data file: a sparse stream's metadata, or a raw image. */
export type DataHead =
  | { format: 'stream'; metadata: StreamMetadata; rawMetadata: Record<string, unknown> }
  | { format: 'raw' };

/** Largest metadata JSON accepted in a meta frame (as SparseParser's default). */
const MAX_METADATA = 1024 * 1024;

/** The next chunk of a paused stream, or null at its end. */
async function pull(stream: Readable): Promise<Buffer | null> {
  for (;;) {
    const chunk = stream.read() as Buffer | null;
    if (chunk !== null) return chunk;
    if (stream.errored) throw stream.errored;
    if (stream.readableEnded || stream.destroyed) return null;
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        stream.off('readable', done);
        stream.off('end', done);
        stream.off('error', fail);
        resolve();
      };
      const fail = (error: Error): void => {
        stream.off('readable', done);
        stream.off('end', done);
        stream.off('error', fail);
        reject(error);
      };
      stream.on('readable', done);
      stream.on('end', done);
      stream.on('error', fail);
    });
  }
}

/**
 * Reads a data file's head. With `keep`, the bytes read are put back
 * (`unshift`), so the same stream can then be piped whole; otherwise the
 * stream is destroyed. A file starting with anything but `meta ` is a raw
 * image (virtnbdbackup writes raw-format disks and `-t raw` backups as
 * plain images). A broken meta frame fails with a BackupSetError naming the file.
 */
export async function readDataHead(stream: Readable, file: string, options: { keep?: boolean } = {}): Promise<DataHead> {
  const parts: Buffer[] = [];
  let have = 0;
  let need = 5;
  let head: DataHead | undefined;
  try {
    while (head === undefined) {
      while (have < need) {
        const chunk = await pull(stream);
        if (chunk === null) break;
        parts.push(chunk);
        have += chunk.length;
      }
      const bytes = Buffer.concat(parts, have);
      if (need === 5) {
        if (have < 5 || bytes.subarray(0, 5).toString('latin1') !== 'meta ') {
          head = { format: 'raw' };
          break;
        }
        need = FRAME_HEADER_LENGTH;
        continue;
      }
      if (have < need) throw new BackupSetError(`${file}: the file ends inside its metadata (${have} bytes): it is truncated`);
      if (need === FRAME_HEADER_LENGTH) {
        const header = parseFrameHeader(bytes.subarray(0, FRAME_HEADER_LENGTH), { frameIndex: 0, byteOffset: 0 });
        if (header.length === 0 || header.length > MAX_METADATA) {
          throw new BackupSetError(`${file}: frame 0 at byte 0: metadata length ${header.length} is not within 1..${MAX_METADATA}`);
        }
        need = FRAME_HEADER_LENGTH + header.length;
        continue;
      }
      const json = bytes.subarray(FRAME_HEADER_LENGTH, need);
      const where = { frameIndex: 0, byteOffset: FRAME_HEADER_LENGTH };
      const rawMetadata = decodeMetadataJson(json, where);
      head = { format: 'stream', metadata: normalizeMetadata(rawMetadata, where), rawMetadata };
    }
  } catch (error) {
    stream.destroy();
    if (error instanceof RestoreError) throw error;
    throw new BackupSetError(`${file}: ${(error as Error).message}`, { cause: error });
  }
  if (options.keep) {
    if (have > 0) stream.unshift(Buffer.concat(parts, have));
  } else {
    stream.destroy();
  }
  return head;
}
