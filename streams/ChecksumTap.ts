import { Transform, type TransformCallback, type TransformOptions } from 'node:stream';
import { Adler32 } from '../lib/format/adler32.js';

/**
 * ChecksumTap: bytes in, the same bytes out, untouched; on the way it
 * computes their Adler-32, the checksum of a data file's `.chksum` file.
 * It buffers nothing of its own (only the usual stream high-water marks).
 * When the input ends, `checksum` holds the final value and the
 * 'checksum' event fires with it, before 'finish' and 'end'.
 */
export class ChecksumTap extends Transform {
  private readonly adler = new Adler32();
  private count = 0;
  private done = false;

  constructor(options: Omit<TransformOptions, 'objectMode' | 'readableObjectMode' | 'writableObjectMode' | 'transform' | 'flush'> = {}) {
    super({ ...options, objectMode: false });
  }

  /** Adler-32 of the bytes seen so far; final once the stream has finished. */
  get checksum(): number {
    return this.adler.digest();
  }

  /** Number of bytes seen so far. */
  get bytes(): number {
    return this.count;
  }

  /** True once all input has passed and `checksum` is final. */
  get complete(): boolean {
    return this.done;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.adler.update(chunk);
    this.count += chunk.length;
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    this.done = true;
    this.emit('checksum', this.checksum);
    callback();
  }
}

