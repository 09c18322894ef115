/**
 * Checking an LZ4 frame whose blocks carry checksums without decoding it:
 * the checksums cover every stored byte, so reading the frame once front
 * to back, hashing each block, shows whether any byte changed. It costs a
 * 1 MiB read buffer and no output buffers (decoding a piece whole to check
 * it needed a span's output and its 4 MiB windows twice over). Checked on
 * the way: block sizes, the end mark, the content checksum's presence and
 * that nothing follows the frame.
 */
import type { Lz4FrameDescriptor } from '../format/lz4Frame.js';
import { Xxh32 } from '../format/xxh32.js';
import { Lz4DecodeError } from '../lz4/errors.js';
import { giveScratch, takeScratch } from './lz4Scratch.js';
import type { ReadAt } from './lz4Spans.js';

const CHUNK = 1024 * 1024;
const UNCOMPRESSED = 0x80000000;

/** Check the block checksums of the frame at file [position, position + size). */
export async function checkLz4Blocks(readAt: ReadAt, d: Lz4FrameDescriptor, position: number, size: number): Promise<void> {
  const end = position + size;
  const buf = takeScratch(CHUNK);
  // buf holds file bytes [start, start + held).
  let start = 0;
  let held = 0;
  /** Make file bytes [p, p + n) (n <= CHUNK) available at buf[p - start]. */
  const ensure = async (p: number, n: number, what: string): Promise<number> => {
    if (p + n > end) throw new Lz4DecodeError(`LZ4 frame ends inside ${what}`);
    if (p < start || p + n > start + held) {
      held = Math.min(CHUNK, end - p);
      start = p;
      await readAt(buf.subarray(0, held), p);
    }
    return p - start;
  };
  try {
    let at = position + d.headerLength;
    for (;;) {
      const word = buf.readUInt32LE(await ensure(at, 4, 'a block header (no end mark)'));
      at += 4;
      if (word === 0) break;
      const blockSize = (word & ~UNCOMPRESSED) >>> 0;
      if (blockSize > d.blockMaxSize) throw new Lz4DecodeError(`LZ4 block of ${blockSize} bytes exceeds the maximum block size ${d.blockMaxSize}`);
      const hash = new Xxh32();
      for (let p = at; p < at + blockSize; ) {
        const n = Math.min(CHUNK, at + blockSize - p);
        const i = await ensure(p, n, 'a block');
        hash.update(buf, i, i + n);
        p += n;
      }
      const stored = buf.readUInt32LE(await ensure(at + blockSize, 4, 'a block checksum'));
      if (hash.digest() >>> 0 !== stored) throw new Lz4DecodeError(`LZ4 block checksum mismatch in the block at byte ${at - 4 - position} of the frame`);
      at += blockSize + 4;
    }
    if (d.contentChecksum) at += 4;
    if (at > end) throw new Lz4DecodeError('LZ4 frame ends inside its content checksum');
    if (at !== end) throw new Lz4DecodeError(`${end - at} bytes follow the LZ4 frame`);
  } finally {
    giveScratch(buf);
  }
}
