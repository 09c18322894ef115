/**
 * Synthetic backup chains for the map tests, written by our own stream
 * stages (SparseFramer, optionally after Lz4Compress), plus the disk image
 * each point of the chain stands for, kept in memory as the reference.
 *
 *     const chain = new SyntheticChain(dir, 'vda', 4 * MiB, { compress: true, unitSize: 64 * KiB });
 *     await chain.full([{ offset: 0, data: bytes }, { offset: MiB, zero: 64 * KiB }]);
 *     await chain.inc([{ offset: 4096, data: more }]);
 *     chain.image  // what the disk holds after the last file
 */
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Chunk } from '../../lib/chunk.js';
import { createMetadata } from '../../lib/format/metadata.js';
import { xxh32 } from '../../lib/format/xxh32.js';
import { Lz4Compress } from '../../streams/Lz4Compress.js';
import { SparseFramer } from '../../streams/SparseFramer.js';

/** One frame: data bytes at an offset, or a zero range (full backups only). */
export type FrameSpec = { offset: number; data: Buffer } | { offset: number; zero: number };

export interface SyntheticChainOptions {
  compress?: boolean;
  /** LZ4 unit (and framer maximum request size) for compressed streams. */
  unitSize?: number;
  /** false: LZ4 frames that do not declare their content size (as lz4-napi wrote them). */
  lz4ContentSize?: boolean;
}

export class SyntheticChain {
  /** The disk as of the last file written. */
  readonly image: Buffer;
  /** Data files written so far, in chain order. */
  readonly files: string[] = [];
  /** The image after each file (same order as files). */
  readonly points: Buffer[] = [];
  private checkpoint = -1;

  constructor(
    readonly dir: string,
    readonly disk: string,
    readonly size: number,
    readonly options: SyntheticChainOptions = {},
  ) {
    this.image = Buffer.alloc(size);
  }

  /** Write `<disk>.full.data` holding these frames (and apply them to the image). */
  full(frames: readonly FrameSpec[]): Promise<string> {
    return this.write(frames, false);
  }

  /** Write the next `<disk>.inc.virtnbdbackup.N.data`. */
  inc(frames: readonly FrameSpec[]): Promise<string> {
    return this.write(frames, true);
  }

  private async write(frames: readonly FrameSpec[], incremental: boolean): Promise<string> {
    const parent = this.checkpoint;
    this.checkpoint++;
    const name = `virtnbdbackup.${this.checkpoint}`;
    const file = join(this.dir, incremental ? `${this.disk}.inc.${name}.data` : `${this.disk}.full.data`);
    // Incremental streams have no zero frames: zeros there are data (as virtnbdbackup writes them).
    const chunks: Chunk[] = frames.map((f) =>
      'data' in f
        ? { offset: f.offset, length: f.data.length, data: f.data }
        : incremental
          ? { offset: f.offset, length: f.zero, data: Buffer.alloc(f.zero) }
          : { offset: f.offset, length: f.zero, zero: true },
    );
    const metadata = createMetadata({
      virtualSize: this.size,
      dataSize: chunks.filter((c) => !c.zero).reduce((sum, c) => sum + c.length, 0),
      diskName: this.disk,
      diskFormat: 'qcow2',
      checkpointName: name,
      parentCheckpoint: incremental ? `virtnbdbackup.${parent}` : '',
      incremental,
      compressed: this.options.compress ? 2 : false,
    });
    const unit = this.options.unitSize ?? 32 * 1024 * 1024;
    const stages: NodeJS.ReadWriteStream[] = this.options.compress ? [new Lz4Compress({ unitSize: unit })] : [];
    if (this.options.compress && this.options.lz4ContentSize === false) stages.push(withoutContentSize());
    await pipeline([Readable.from(chunks), ...stages, new SparseFramer({ metadata, maxRequestSize: unit }), createWriteStream(file)]);
    for (const f of frames) {
      if ('data' in f) f.data.copy(this.image, f.offset);
      else this.image.fill(0, f.offset, f.offset + f.zero);
    }
    this.files.push(file);
    this.points.push(Buffer.from(this.image));
    return file;
  }
}

/** Deterministic bytes that compress somewhat (text with a counter), `length` long. */
export function patternBytes(tag: string, length: number): Buffer {
  const out = Buffer.alloc(length);
  let at = 0;
  for (let i = 0; at < length; i++) at += out.write(`${tag}:${i};`, at);
  return out;
}

/** Rewrites each chunk's LZ4 frame header without the content size field (FLG bit 3), with a new header checksum. */
function withoutContentSize(): Transform {
  return new Transform({
    objectMode: true,
    transform(chunk: Chunk, _e, done) {
      const lz4 = chunk.lz4;
      if (lz4 && lz4[4]! & 0b1000) {
        const header = Buffer.from([...lz4.subarray(0, 4), lz4[4]! & ~0b1000, lz4[5]!, 0]);
        header[6] = (xxh32(header.subarray(4, 6)) >>> 8) & 0xff;
        chunk = { ...chunk, lz4: Buffer.concat([header, lz4.subarray(15)]) };
      }
      done(null, chunk);
    },
  });
}
