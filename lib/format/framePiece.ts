/**
 * Pieces of one sparse-stream data frame arrive in order, each starting
 * where the last ended; the stages that gather them (SparseFramer,
 * Lz4Compress) check that with the same rule and the same messages.
 */
import type { Chunk, FrameSpan } from '../chunk.js';
import { FramerInputError } from './errors.js';

/**
 * The data frame `chunk` belongs to (its `frame`, else its own range),
 * checked against the frame being gathered, if any (`open`: its span and
 * where the next piece must start); a piece that does not continue it, or
 * the first piece of a frame that starts elsewhere, is a FramerInputError.
 */
export function nextPieceFrame(chunk: Chunk, open: { span: FrameSpan; next: number } | undefined): FrameSpan {
  const span = chunk.frame ?? { offset: chunk.offset, length: chunk.length };
  if (open) {
    if (span.offset !== open.span.offset || span.length !== open.span.length || chunk.offset !== open.next) {
      throw new FramerInputError(`expected the piece at ${open.next} of the data frame at ${open.span.offset} (length ${open.span.length})`, chunk.offset);
    }
  } else if (chunk.offset !== span.offset) {
    throw new FramerInputError(`first piece of the data frame at ${span.offset} starts elsewhere`, chunk.offset);
  }
  return span;
}
