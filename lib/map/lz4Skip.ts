/**
 * Finding where an LZ4 frame in a file ends by reading only its header and
 * its block size words, skipping the block data
 * (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md): how the
 * scanner locates the pieces of a compressed payload when the stream has
 * no usable compression trailer. One small read per block (64 KiB to
 * 4 MiB of data each), served from the reader's window when blocks are
 * small.
 */
import { Lz4FrameViolation, parseLz4FrameDescriptor } from '../format/lz4Frame.js';
import type { WindowedReader } from './windowedReader.js';

/** The longest LZ4 frame header: magic, FLG, BD, content size, dictionary id, checksum. */
const MAX_HEADER = 19;
const UNCOMPRESSED_BLOCK = 0x80000000;

export interface Lz4FrameExtent {
  /** Byte offset of the frame in the file. */
  position: number;
  /** Bytes from its magic to the end of its EndMark (and content checksum). */
  size: number;
  /** Uncompressed size, when the header declares it. */
  contentSize: number | undefined;
}

/** Walk the LZ4 frame at `position`. Throws Lz4FrameViolation (offsetInFrame set) when it is not one. */
export async function skipLz4Frame(reader: WindowedReader, position: number): Promise<Lz4FrameExtent> {
  const head = await reader.read(position, MAX_HEADER);
  const descriptor = parseLz4FrameDescriptor(head);
  let at = position + descriptor.headerLength;
  for (;;) {
    const word = await reader.read(at, 4);
    if (word.length < 4) throw new Lz4FrameViolation('the file ends inside the LZ4 frame (no EndMark)', at - position);
    const value = word.readUInt32LE(0);
    if (value === 0) {
      at += 4 + (descriptor.contentChecksum ? 4 : 0);
      break;
    }
    const size = (value & ~UNCOMPRESSED_BLOCK) >>> 0;
    if (size > descriptor.blockMaxSize) {
      throw new Lz4FrameViolation(`LZ4 block of ${size} bytes exceeds the frame's maximum block size ${descriptor.blockMaxSize}`, at - position);
    }
    at += 4 + size + (descriptor.blockChecksum ? 4 : 0);
  }
  if (at > reader.fileSize) throw new Lz4FrameViolation('the file ends inside the LZ4 frame', reader.fileSize - position);
  return { position, size: at - position, contentSize: descriptor.contentSize };
}
