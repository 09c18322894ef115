/**
 * Checking a whole LZ4 piece before any of its bytes is served: a flipped
 * byte anywhere in the frame must fail every read of the piece, as when
 * pieces were decoded whole (a span decoded alone only shows its own
 * blocks are sound).
 *
 * With block checksums, hashing the stored blocks suffices
 * (lz4BlockCheck.ts). Without them, or when the piece's length is still
 * to be learnt, the piece is decoded span after span into one scratch
 * buffer, keeping none of the output: every match, the end mark, the
 * declared content size and the content checksum get checked, and the
 * span marks and the piece's length are learnt on the way.
 */
import { checkLz4Blocks } from './lz4BlockCheck.js';
import { giveScratch, takeScratch } from './lz4Scratch.js';
import type { Lz4Spans } from './lz4Spans.js';

/** Check all of `spans`; resolves to the piece's decoded length when it was decoded (`needLength` forces that). */
export async function verifyLz4Piece(spans: Lz4Spans, needLength: boolean): Promise<number | undefined> {
  const d = await spans.frameDescriptor();
  if (d.blockChecksum && !needLength) {
    await checkLz4Blocks(spans.readAt, d, spans.position, spans.size);
    return undefined;
  }
  const scratch = takeScratch(await spans.capacity());
  try {
    for (let k = 0; spans.total === undefined; k++) await spans.decode(k, scratch);
    return spans.total;
  } finally {
    giveScratch(scratch);
  }
}
