/**
 * Lz4Compress: Chunk -> Chunk (object mode). Each data chunk (one NBD read
 * request) becomes the same chunk with `lz4` holding one LZ4 frame of its
 * bytes, block and content checksums on as virtnbdbackup writes them, and
 * `data` dropped; `offset`, `length` (uncompressed) and `frame` are kept.
 * Zero chunks and chunks that already carry `lz4` pass unchanged. Up to
 * `depth` compressions run at once in libuv's thread pool; output keeps input
 * order. Buffers at most `depth` chunks in flight plus `highWaterMark` on
 * each side.
 */
import { compressFrame } from 'lz4-napi';
import type { Chunk } from '../lib/chunk.js';
import { FramerInputError } from '../lib/format/errors.js';
import { OrderedJobTransform, type OrderedJobOptions } from '../lib/format/orderedJobTransform.js';

export type Lz4CompressOptions = OrderedJobOptions;

/** The LZ4 frame options virtnbdbackup uses (content_checksum, block_checksum). */
export const LZ4_FRAME_OPTIONS = { contentChecksum: true, blockChecksums: true } as const;

export class Lz4Compress extends OrderedJobTransform<Chunk, Chunk> {
  constructor(options: Lz4CompressOptions = {}) {
    super(options);
  }

  protected override start(chunk: Chunk): Promise<Chunk> | Chunk {
    if (chunk.zero || chunk.lz4 !== undefined) return chunk;
    const data = chunk.data;
    if (data === undefined) throw new FramerInputError('data chunk without data', chunk.offset);
    if (data.length !== chunk.length) {
      throw new FramerInputError(`chunk length ${chunk.length} but ${data.length} bytes of data`, chunk.offset);
    }
    return compressFrame(data, LZ4_FRAME_OPTIONS).then((lz4): Chunk => {
      const { data: _dropped, ...rest } = chunk;
      return { ...rest, lz4 };
    });
  }
}
