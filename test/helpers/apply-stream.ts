/**
 * Applies a sparse stream file to a raw image file with virtnbd's own
 * stages (SparseParser -> Lz4Decompress): data chunks are written at their
 * offsets; zero chunks are written as zeros unless the raw file is new
 * (a new sparse file already reads as zeros there). What `qemu-img compare`
 * then sees is what our parser understood of the stream.
 */
import { createReadStream, existsSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Chunk } from '../../lib/chunk.js';
import type { StreamMetadata } from '../../lib/format/metadata.js';
import { SparseParser } from '../../streams/SparseParser.js';
import { Lz4Decompress } from '../../streams/Lz4Decompress.js';

export async function applyStream(streamFile: string, rawFile: string): Promise<{ dataBytes: number; metadata: StreamMetadata }> {
  const fresh = !existsSync(rawFile);
  const out = await open(rawFile, fresh ? 'w+' : 'r+');
  const parser = new SparseParser();
  let dataBytes = 0;
  let sized = false;
  const write = async (chunk: Chunk): Promise<void> => {
    if (!sized) {
      const size = parser.metadata!.virtualSize;
      if ((await out.stat()).size < size) await out.truncate(size);
      sized = true;
    }
    if (chunk.zero) {
      if (!fresh) await writeZeros(out, chunk.offset, chunk.length);
      return;
    }
    dataBytes += chunk.length;
    await out.write(chunk.data!, 0, chunk.length, chunk.offset);
  };
  try {
    const sink = new Writable({
      objectMode: true,
      write(chunk: Chunk, _enc, done) {
        write(chunk).then(() => done(), done);
      },
    });
    await pipeline(createReadStream(streamFile), parser, new Lz4Decompress(), sink);
    if (!sized) await out.truncate(parser.metadata!.virtualSize);
    return { dataBytes, metadata: parser.metadata! };
  } finally {
    await out.close();
  }
}

async function writeZeros(out: FileHandle, offset: number, length: number): Promise<void> {
  const zeros = Buffer.alloc(Math.min(length, 1 << 20));
  for (let at = offset; at < offset + length; at += zeros.length) {
    await out.write(zeros, 0, Math.min(zeros.length, offset + length - at), at);
  }
}
