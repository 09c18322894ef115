import { Readable } from 'node:stream';
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { crc32, createInflateRaw } from 'node:zlib';
import type unzipper from 'unzipper';

/**
 * ZipSource: a zip archive in (a file path, or any byte stream such as
 * stdin), its entries out, one after another, as `{ name, size, stream }`:
 * `for await (const entry of new ZipSource(input))`. A path to a regular
 * file is read through its central directory (unzipper.Open, zip64
 * included); anything else (a pipe, a Readable) is read sequentially by its
 * local headers, with our own parser: unzipper.Parse ends a stored entry
 * that has a data descriptor at the first "PK\x07\x08" in its data, which
 * disk images do contain. We take a descriptor as the entry's end only
 * where its sizes equal the bytes before it and a zip record follows (then
 * its CRC-32 must match too, else the entry is damaged), in the 32-bit and
 * the zip64 layout (archiver and Python's zipfile both use zip64
 * descriptors past 4 GiB). Every entry's bytes are checked against
 * its CRC-32 and size; a mismatch errors the entry stream. Directory
 * entries are skipped. Asking for the next entry releases the previous
 * one: an entry nobody has started to read is destroyed (from a stream its
 * bytes are read and dropped; from a file it was never opened); one being
 * read must be read to its end or destroyed (from a stream the iterator
 * waits for that; from a file it may go on in parallel). It
 * buffers one stream chunk plus the entry stream's high-water mark.
 * The input is consumed to its end and closed; breaking out of the loop
 * early closes it.
 */

/** One member of the archive. */
export interface ZipEntry {
  /** Name as stored in the archive (e.g. `vda.full.data`, `checkpoints/virtnbdbackup.0.xml`). */
  readonly name: string;
  /** Uncompressed size when the archive states it up front; undefined for streamed entries with a data descriptor. */
  readonly size: number | undefined;
  /** The entry's bytes. Errors with a ZipSourceError if they do not match the stored CRC-32 or size. */
  readonly stream: Readable;
}

export interface ZipSourceOptions {
  /** How to name a stream input in error messages (default `zip stream`). */
  label?: string;
  /** High-water mark of the entry streams, in bytes (default 1 MiB). */
  highWaterMark?: number;
}

/** A zip archive that cannot be read: damaged, truncated, unsupported, or unreadable. */
export class ZipSourceError extends Error {
  override readonly name = 'ZipSourceError';
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_DESCRIPTOR = 0x08074b50;
const SIG_END = 0x06054b50;
const SIG_ZIP64_END = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
/** Records that may follow an entry's data: what proves a descriptor real. */
const NEXT_RECORD = new Set([SIG_LOCAL, SIG_CENTRAL, SIG_END, SIG_ZIP64_END, SIG_ZIP64_LOCATOR]);
const DESCRIPTOR_BYTES = Buffer.from([0x50, 0x4b, 0x07, 0x08]);
/** Longest descriptor (signature, CRC, two 64-bit sizes) plus the next record's signature. */
const DESCRIPTOR_LOOKAHEAD = 4 + 4 + 16 + 4;

const FLAG_ENCRYPTED = 0x0001;
const FLAG_DESCRIPTOR = 0x0008;
const METHOD_STORED = 0;
const METHOD_DEFLATED = 8;
const EMPTY = Buffer.alloc(0);

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function noop(): void {}

interface Expected {
  crc?: number;
  size?: number;
}

/**
 * The Readable handed out for one entry. The producer pushes with feed()
 * (which waits while the consumer's buffer is full) and ends with
 * finish(), which checks CRC-32 and size. `onOpen` runs on the first read,
 * so an entry of a file costs nothing until somebody reads it.
 */
class EntryStream extends Readable {
  private wake: ((wanted: boolean) => void) | undefined;
  private crc = 0;
  private count = 0;
  private opened = false;

  constructor(
    readonly entryName: string,
    private readonly where: string,
    private readonly hashing: boolean,
    highWaterMark: number,
    private readonly onOpen?: (entry: EntryStream) => void,
  ) {
    super({ highWaterMark });
    // Errors reach whoever consumes the entry (pipeline(), 'error'
    // listeners) and, from a stream, the iterator too; an entry nobody
    // listens to must not crash the process.
    this.on('error', noop);
  }

  /** Somebody has started to consume this entry. */
  get touched(): boolean {
    return this.readableFlowing !== null || this.opened;
  }

  /** Passes a chunk on; resolves false once the entry is destroyed (its remaining bytes are unwanted). */
  feed(chunk: Buffer): boolean | Promise<boolean> {
    if (this.destroyed) return false;
    if (this.hashing) this.crc = crc32(chunk, this.crc);
    this.count += chunk.length;
    if (this.push(chunk)) return true;
    return new Promise<boolean>((resolve) => {
      this.wake = resolve;
    });
  }

  /** Ends the entry, or errors it if its bytes do not match `expected`. */
  finish(expected: Expected = {}): void {
    if (this.destroyed) return;
    if (expected.size !== undefined && expected.size !== this.count) {
      this.destroy(new ZipSourceError(`${this.where}: entry ${quote(this.entryName)} holds ${this.count} bytes, the archive says ${expected.size}`));
    } else if (this.hashing && expected.crc !== undefined && expected.crc !== this.crc) {
      this.destroy(new ZipSourceError(`${this.where}: entry ${quote(this.entryName)} is damaged: CRC-32 ${hex(this.crc)}, the archive says ${hex(expected.crc)}`));
    } else {
      this.push(null);
    }
  }

  override _read(): void {
    if (!this.opened && this.onOpen) {
      this.opened = true;
      this.onOpen(this);
    }
    this.resumeProducer(true);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.resumeProducer(false);
    callback(error);
  }

  private resumeProducer(wanted: boolean): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.(wanted);
  }
}

/** An entry name for a message: quoted, control characters escaped, long names cut. */
function quote(name: string): string {
  const quoted = JSON.stringify(name);
  return quoted.length > 120 ? `${quoted.slice(0, 117)}..."` : quoted;
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

/** Pulls bytes from a stream: exact reads for headers, whole chunks for data. */
class ByteReader {
  private pending: Buffer = EMPTY;
  /** Input offset of pending[0], for error messages. */
  private position = 0;
  private ended = false;

  constructor(
    private readonly chunks: AsyncIterator<unknown>,
    private readonly where: string,
  ) {}

  get offset(): number {
    return this.position;
  }

  /** The next piece of input, at most `max` bytes; undefined at the end. */
  async chunk(max = Number.POSITIVE_INFINITY): Promise<Buffer | undefined> {
    if (this.pending.length === 0) {
      const next = await this.pull();
      if (next === undefined) return undefined;
      this.pending = next;
    }
    return this.take(Math.min(max, this.pending.length));
  }

  /** Exactly `n` bytes; a ZipSourceError naming `what` if the input ends first. */
  async read(n: number, what: string): Promise<Buffer> {
    await this.fill(n);
    if (this.pending.length < n) throw this.truncated(what);
    return this.take(n);
  }

  /** Up to `n` bytes without consuming them (fewer only at the end of input). */
  async peek(n: number): Promise<Buffer> {
    await this.fill(n);
    return this.pending.subarray(0, n);
  }

  skip(n: number): void {
    this.take(n);
  }

  /** Puts back the bytes just read. */
  unread(bytes: Buffer): void {
    if (bytes.length === 0) return;
    this.pending = this.pending.length === 0 ? bytes : Buffer.concat([bytes, this.pending]);
    this.position -= bytes.length;
  }

  truncated(what: string): ZipSourceError {
    return new ZipSourceError(`${this.where}: truncated: the input ends inside ${what} (offset ${this.position + this.pending.length})`);
  }

  private take(n: number): Buffer {
    const out = this.pending.subarray(0, n);
    this.pending = this.pending.subarray(n);
    this.position += n;
    return out;
  }

  private async fill(n: number): Promise<void> {
    while (this.pending.length < n) {
      const next = await this.pull();
      if (next === undefined) return;
      this.pending = this.pending.length === 0 ? next : Buffer.concat([this.pending, next]);
    }
  }

  private async pull(): Promise<Buffer | undefined> {
    while (!this.ended) {
      let result: IteratorResult<unknown>;
      try {
        result = await this.chunks.next();
      } catch (error) {
        throw new ZipSourceError(`${this.where}: cannot read: ${message(error)}`, { cause: error });
      }
      if (result.done) {
        this.ended = true;
        return undefined;
      }
      if (!Buffer.isBuffer(result.value)) throw new ZipSourceError(`${this.where}: the input must be a byte stream (got ${typeof result.value} chunks)`);
      if (result.value.length > 0) return result.value;
    }
    return undefined;
  }
}

interface LocalHeader {
  name: string;
  flags: number;
  method: number;
  crc: number;
  compressedSize: number;
  size: number;
  /** Sizes are in the header (else a data descriptor after the data holds them). */
  sizeKnown: boolean;
  offset: number;
}

/** Reads a local file header after its signature. */
async function readLocalHeader(reader: ByteReader): Promise<LocalHeader> {
  const offset = reader.offset - 4;
  const fixed = await reader.read(26, 'a local file header');
  const flags = fixed.readUInt16LE(2);
  const method = fixed.readUInt16LE(4);
  const crc = fixed.readUInt32LE(10);
  let compressedSize = fixed.readUInt32LE(14);
  let size = fixed.readUInt32LE(18);
  const name = (await reader.read(fixed.readUInt16LE(22), 'a file name')).toString('utf8');
  const extra = await reader.read(fixed.readUInt16LE(24), 'an extra field');
  // zip64 extended information: the 64-bit sizes, each present only when
  // its 32-bit field is 0xffffffff, uncompressed first.
  for (let p = 0; p + 4 <= extra.length; p += 4 + extra.readUInt16LE(p + 2)) {
    if (extra.readUInt16LE(p) !== 0x0001) continue;
    let q = p + 4;
    const end = q + extra.readUInt16LE(p + 2);
    if (size === 0xffffffff && q + 8 <= end) {
      size = Number(extra.readBigUInt64LE(q));
      q += 8;
    }
    if (compressedSize === 0xffffffff && q + 8 <= end) {
      compressedSize = Number(extra.readBigUInt64LE(q));
    }
  }
  const sizeKnown = (flags & FLAG_DESCRIPTOR) === 0 || compressedSize > 0;
  return { name, flags, method, crc, compressedSize, size, sizeKnown, offset };
}

interface Descriptor {
  length: number;
  crc: number;
}

/**
 * Whether `bytes` starts with the data descriptor of an entry of the given
 * sizes (and CRC-32, when known), followed by another record: signed or
 * (unless `signedOnly`) unsigned, 32-bit or zip64 sizes.
 */
function matchDescriptor(bytes: Buffer, compressedSize: number, size: number, crc: number | undefined, signedOnly: boolean): Descriptor | undefined {
  for (const signed of signedOnly ? [true] : [true, false]) {
    if (signed && (bytes.length < 4 || bytes.readUInt32LE(0) !== SIG_DESCRIPTOR)) continue;
    const p = signed ? 4 : 0;
    for (const wide of [false, true]) {
      const length = p + 4 + (wide ? 16 : 8);
      if (bytes.length < length + 4) continue;
      const stored = bytes.readUInt32LE(p);
      const csize = wide ? Number(bytes.readBigUInt64LE(p + 4)) : bytes.readUInt32LE(p + 4);
      const usize = wide ? Number(bytes.readBigUInt64LE(p + 12)) : bytes.readUInt32LE(p + 8);
      if (crc !== undefined && stored !== crc) continue;
      if (csize !== compressedSize || usize !== size) continue;
      if (!NEXT_RECORD.has(bytes.readUInt32LE(length))) continue;
      return { length, crc: stored };
    }
  }
  return undefined;
}

/** How many bytes at the end of `window` could begin a descriptor signature. */
function signaturePrefixAtEnd(window: Buffer): number {
  for (let keep = Math.min(3, window.length); keep > 0; keep--) {
    if (window.subarray(window.length - keep).equals(DESCRIPTOR_BYTES.subarray(0, keep))) return keep;
  }
  return 0;
}

async function waitDrain(sink: NodeJS.WritableStream & { destroyed: boolean }): Promise<void> {
  await new Promise<void>((resolve) => {
    const done = (): void => {
      sink.off('drain', done);
      sink.off('close', done);
      resolve();
    };
    sink.on('drain', done);
    sink.on('close', done);
  });
}

export class ZipSource implements AsyncIterable<ZipEntry> {
  private readonly input: string | Readable;
  private readonly label: string;
  private readonly highWaterMark: number;
  private used = false;

  constructor(input: string | Readable, options: ZipSourceOptions = {}) {
    this.input = input;
    this.label = typeof input === 'string' ? input : options.label ?? 'zip stream';
    this.highWaterMark = options.highWaterMark ?? 1024 * 1024;
  }

  [Symbol.asyncIterator](): AsyncGenerator<ZipEntry, void, undefined> {
    return this.entries();
  }

  /** The entries, in archive order. A ZipSource can be iterated once. */
  async *entries(): AsyncGenerator<ZipEntry, void, undefined> {
    if (this.used) throw new ZipSourceError(`${this.label}: a ZipSource can be read only once`);
    this.used = true;
    if (typeof this.input !== 'string') {
      yield* this.fromStream(this.input);
      return;
    }
    let info;
    try {
      info = await stat(this.input);
    } catch (error) {
      throw new ZipSourceError(`Cannot read zip archive ${this.input}: ${message(error)}`, { cause: error });
    }
    if (info.isFile()) {
      yield* this.fromFile(this.input, info.size);
    } else {
      // A FIFO or character device (/dev/stdin on a pipe) cannot seek.
      yield* this.fromStream(createReadStream(this.input, { highWaterMark: this.highWaterMark }));
    }
  }

  /** Random access: the central directory says where each entry is. */
  private async *fromFile(path: string, size: number): AsyncGenerator<ZipEntry, void, undefined> {
    const file = new RangeStreams(path, this.highWaterMark);
    let directory: unzipper.CentralDirectory;
    try {
      // Loaded on first use: unzipper costs ~10 MB in processes that never read a zip.
      const { Open } = (await import('unzipper')).default;
      directory = await Open.custom({ size: async () => size, stream: (offset, length) => file.stream(offset, length) });
    } catch (error) {
      throw new ZipSourceError(`${path} is not a readable zip archive: ${message(error)}`, { cause: error });
    } finally {
      // The directory has been read (or failed); its streams are done.
      file.destroyAll();
    }
    let last: EntryStream | undefined;
    try {
      for (const member of directory.files) {
        if (member.type === 'Directory') continue;
        if (member.flags & FLAG_ENCRYPTED) throw new ZipSourceError(`${path}: entry ${quote(member.path)} is encrypted; not supported`);
        if (member.compressionMethod !== METHOD_STORED && member.compressionMethod !== METHOD_DEFLATED) {
          throw new ZipSourceError(`${path}: entry ${quote(member.path)} uses compression method ${member.compressionMethod}; only stored and deflated entries are supported`);
        }
        const entry = new EntryStream(member.path, path, true, this.highWaterMark, (stream) => this.pumpMember(path, member, stream));
        last = entry;
        yield { name: member.path, size: member.uncompressedSize, stream: entry };
        // Nobody read it: it was never opened, so nothing to drain.
        if (!entry.touched) entry.destroy();
      }
    } finally {
      if (last && !last.touched) last.destroy();
    }
  }

  /**
   * Streams one member's data straight from the file: the central directory
   * gives the local header's offset, the local header the data's. (Not
   * unzipper's entry streams: they copy every chunk, at a third of the speed.)
   */
  private pumpMember(path: string, member: unzipper.File, entry: EntryStream): void {
    let data: Readable | undefined;
    entry.once('close', () => data?.destroy());
    (async () => {
      const start = await dataOffset(path, member);
      if (entry.destroyed) return;
      if (member.compressedSize > 0) {
        data = createReadStream(path, { start, end: start + member.compressedSize - 1, highWaterMark: this.highWaterMark });
        const bytes = member.compressionMethod === METHOD_DEFLATED ? data.pipe(createInflateRaw()) : data;
        if (bytes !== data) data.once('error', (error) => bytes.destroy(error));
        for await (const chunk of bytes) {
          if (!(await entry.feed(chunk as Buffer))) return;
        }
      }
      entry.finish({ crc: member.crc32, size: member.uncompressedSize });
    })().catch((error: unknown) => {
      entry.destroy(new ZipSourceError(`${path}: cannot read entry ${quote(member.path)}: ${message(error)}`, { cause: error }));
    });
  }

  /** Sequential: local header, data, (descriptor), and so on up to the central directory. */
  private async *fromStream(input: Readable): AsyncGenerator<ZipEntry, void, undefined> {
    const reader = new ByteReader(input[Symbol.asyncIterator](), this.label);
    let current: EntryStream | undefined;
    let pump: Promise<void> | undefined;
    let entries = 0;
    try {
      for (;;) {
        const head = await reader.peek(4);
        if (head.length < 4) {
          throw head.length === 0 && entries === 0 && reader.offset === 0
            ? new ZipSourceError(`${this.label}: empty input, not a zip archive`)
            : reader.truncated('the archive (no central directory)');
        }
        const signature = head.readUInt32LE(0);
        if (signature === SIG_CENTRAL || signature === SIG_END || signature === SIG_ZIP64_END) {
          // All entries seen; read the rest so a producer writing to a pipe is not cut off.
          while ((await reader.chunk()) !== undefined);
          return;
        }
        if (signature !== SIG_LOCAL) {
          throw new ZipSourceError(`${this.label}: not a zip archive, or damaged: unexpected bytes ${hex(signature)} at offset ${reader.offset}`);
        }
        reader.skip(4);
        const header = await readLocalHeader(reader);
        const directory = header.name.endsWith('/') && header.size === 0;
        const entry = new EntryStream(header.name, this.label, header.sizeKnown, this.highWaterMark);
        current = entry;
        pump = this.pumpLocal(reader, header, entry);
        pump.catch((error: unknown) => entry.destroy(error as Error));
        if (!directory) {
          entries++;
          yield { name: header.name, size: header.sizeKnown ? header.size : undefined, stream: entry };
        }
        // Skipped: its bytes are read from the input and dropped.
        if (!entry.touched) entry.destroy();
        await pump;
        current = undefined;
        pump = undefined;
      }
    } finally {
      current?.destroy();
      pump?.catch(noop);
      if (!input.destroyed) input.destroy();
    }
  }

  /** Moves one entry's data from the input into `entry`, then checks its descriptor. */
  private async pumpLocal(reader: ByteReader, header: LocalHeader, entry: EntryStream): Promise<void> {
    const what = `entry ${quote(header.name)} (local header at offset ${header.offset})`;
    if (header.flags & FLAG_ENCRYPTED) throw new ZipSourceError(`${this.label}: ${what} is encrypted; not supported`);
    if (header.method === METHOD_STORED && !header.sizeKnown) {
      await this.scanStored(reader, header, entry);
      entry.finish();
      return;
    }
    if (!header.sizeKnown) {
      throw new ZipSourceError(`${this.label}: ${what} is compressed and its size is only given after its data; read it from a file, not a stream`);
    }
    if (header.method === METHOD_STORED) {
      await this.copy(reader, header.compressedSize, what, (chunk) => entry.feed(chunk));
    } else if (header.method === METHOD_DEFLATED) {
      await this.inflate(reader, header, what, entry);
    } else {
      throw new ZipSourceError(`${this.label}: ${what} uses compression method ${header.method}; only stored and deflated entries are supported`);
    }
    let crc = header.crc;
    if (header.flags & FLAG_DESCRIPTOR) {
      const descriptor = matchDescriptor(await reader.peek(DESCRIPTOR_LOOKAHEAD), header.compressedSize, header.size, undefined, false);
      if (!descriptor) throw new ZipSourceError(`${this.label}: ${what}: no valid data descriptor at offset ${reader.offset}`);
      reader.skip(descriptor.length);
      crc = descriptor.crc;
    }
    entry.finish({ crc, size: header.size });
  }

  /** Passes exactly `length` bytes to `feed`, then keeps reading (and dropping) once it returns false. */
  private async copy(reader: ByteReader, length: number, what: string, feed: (chunk: Buffer) => boolean | Promise<boolean>): Promise<void> {
    let left = length;
    let wanted = true;
    while (left > 0) {
      const chunk = await reader.chunk(left);
      if (chunk === undefined) throw reader.truncated(what);
      left -= chunk.length;
      if (wanted) wanted = await feed(chunk);
    }
  }

  private async inflate(reader: ByteReader, header: LocalHeader, what: string, entry: EntryStream): Promise<void> {
    const inflater = createInflateRaw();
    const output = (async () => {
      for await (const chunk of inflater) {
        if (!(await entry.feed(chunk as Buffer))) break;
      }
    })();
    output.catch(noop);
    await this.copy(reader, header.compressedSize, what, async (chunk) => {
      if (inflater.destroyed) return false;
      if (!inflater.write(chunk)) await waitDrain(inflater);
      return !inflater.destroyed;
    });
    if (!inflater.destroyed) inflater.end();
    try {
      await output;
    } catch (error) {
      throw new ZipSourceError(`${this.label}: ${what} is damaged: ${message(error)}`, { cause: error });
    }
  }

  /**
   * A stored entry whose size comes only after it: pass bytes on up to the
   * first "PK\x07\x08" that is a real descriptor for them (sizes equal to
   * the bytes passed, a zip record after it), whose CRC-32 must then match.
   */
  private async scanStored(reader: ByteReader, header: LocalHeader, entry: EntryStream): Promise<void> {
    const what = `entry ${quote(header.name)} (local header at offset ${header.offset})`;
    let crc = 0;
    let count = 0;
    let wanted = true;
    const emit = async (bytes: Buffer): Promise<void> => {
      if (bytes.length === 0) return;
      crc = crc32(bytes, crc);
      count += bytes.length;
      if (wanted) wanted = await entry.feed(bytes);
    };
    let window: Buffer = EMPTY;
    let from = 0;
    for (;;) {
      const at = window.indexOf(DESCRIPTOR_BYTES, from);
      if (at === -1) {
        const keep = signaturePrefixAtEnd(window);
        await emit(window.subarray(0, window.length - keep));
        const next = await reader.chunk();
        if (next === undefined) throw reader.truncated(what);
        window = keep > 0 ? Buffer.concat([window.subarray(window.length - keep), next]) : next;
        from = 0;
        continue;
      }
      await emit(window.subarray(0, at));
      window = window.subarray(at);
      if (window.length < DESCRIPTOR_LOOKAHEAD) {
        const next = await reader.chunk();
        if (next !== undefined) {
          window = Buffer.concat([window, next]);
          from = 0;
          continue;
        }
      }
      const descriptor = matchDescriptor(window, count, count, undefined, true);
      if (descriptor) {
        // Sizes and the next record match: this is the end of the entry.
        if (descriptor.crc !== crc) {
          throw new ZipSourceError(`${this.label}: ${what} is damaged: CRC-32 ${hex(crc)}, the archive says ${hex(descriptor.crc)}`);
        }
        reader.unread(window.subarray(descriptor.length));
        return;
      }
      if (window.length < DESCRIPTOR_LOOKAHEAD) throw reader.truncated(what);
      // Data that merely looks like a descriptor.
      from = 1;
    }
  }
}

/**
 * Byte-range streams of the archive file for unzipper's directory reader,
 * each with its own descriptor, all destroyed once the directory is read.
 */
class RangeStreams {
  private readonly streams = new Set<Readable>();

  constructor(
    private readonly path: string,
    private readonly highWaterMark: number,
  ) {}

  stream(offset: number, length?: number): Readable {
    const end = length ? offset + length - 1 : undefined;
    const stream = createReadStream(this.path, { start: offset, end, highWaterMark: this.highWaterMark });
    this.streams.add(stream);
    stream.once('close', () => this.streams.delete(stream));
    return stream;
  }

  destroyAll(): void {
    for (const stream of this.streams) stream.destroy();
  }
}

/** Where a member's data starts: after its local header, whose name and extra field lengths may differ from the central directory's. */
async function dataOffset(path: string, member: unzipper.File): Promise<number> {
  const handle = await open(path, 'r');
  try {
    const header = Buffer.alloc(30);
    const { bytesRead } = await handle.read(header, 0, 30, member.offsetToLocalFileHeader);
    if (bytesRead < 30 || header.readUInt32LE(0) !== SIG_LOCAL) {
      throw new ZipSourceError(`${path}: no local header for entry ${quote(member.path)} at offset ${member.offsetToLocalFileHeader}`);
    }
    return member.offsetToLocalFileHeader + 30 + header.readUInt16LE(26) + header.readUInt16LE(28);
  } finally {
    await handle.close();
  }
}
