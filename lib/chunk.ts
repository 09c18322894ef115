/**
 * A Chunk is a piece of a virtual disk travelling through a pipeline:
 * what NbdReader reads, what SparseFramer frames, what SparseParser yields
 * and what NbdWriter writes.
 *
 * - data chunk: `data` holds `length` raw bytes (or, between Lz4Compress and
 *   Lz4Decompress, `lz4` holds one LZ4 frame of those bytes);
 * - zero chunk: `zero` is true, no payload; the range reads as zeros.
 *
 * An extent longer than the NBD server's maximum request size is read in
 * several requests; each piece then carries `frame`, the span of the one
 * sparse-stream data frame they all belong to, so the framer writes one
 * frame header and the parser can say which frame a piece came from.
 *
 * An LZ4 frame may also travel in parts (Lz4Compress with `parts`), so no
 * stage ever holds a whole 32 MiB frame: each part is a chunk with the
 * same offset, length and frame (those of the whole unit the LZ4 frame
 * holds), `lz4` holding the next bytes of the LZ4 frame, and `lz4More`
 * set on every part but the last. The LZ4 frame is the concatenation of
 * the parts' `lz4`, in order.
 */
export interface FrameSpan {
  offset: number;
  length: number;
}

export interface Chunk {
  /** Byte offset of this piece in the virtual disk. */
  offset: number;
  /** Uncompressed length in bytes. */
  length: number;
  /** The range reads as zeros; no payload. */
  zero?: boolean;
  /** Raw bytes of a data chunk (length === data.length). */
  data?: Buffer;
  /** One LZ4 frame holding this chunk's bytes (compressed streams). */
  lz4?: Buffer;
  /** `lz4` is a part of an LZ4 frame that continues in the next chunk (absent on a frame's last part). */
  lz4More?: true;
  /** The data frame this piece belongs to, when the frame spans several pieces. */
  frame?: FrameSpan;
}
