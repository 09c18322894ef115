/**
 * ProgressTap: Chunk in, the same Chunk out (object mode), untouched; for
 * every data chunk it reports the chunk's uncompressed length to a
 * callback, so a progress bar can follow a pipeline without reading its
 * stages' internals. Zero chunks are not reported (they cost nothing to
 * save). Buffers nothing of its own beyond the usual high-water marks.
 */
import { Transform, type TransformCallback } from 'node:stream';
import type { Chunk } from '../lib/chunk.js';

export class ProgressTap extends Transform {
  /** Data bytes seen so far. */
  bytes = 0;

  constructor(private readonly onData: (bytes: number) => void) {
    super({ objectMode: true, highWaterMark: 2 });
  }

  override _transform(chunk: Chunk, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (!chunk.zero) {
      this.bytes += chunk.length;
      this.onData(chunk.length);
    }
    callback(null, chunk);
  }
}
