/**
 * Errors of the LZ4 codec. `offsetInFrame` is the byte of the LZ4 frame
 * where the problem was found (for a block, the start of its size word), so
 * a caller can name the place in the file.
 */

/** The bytes are not a valid LZ4 frame or block, or do not fit the output buffer. */
export class Lz4DecodeError extends Error {
  override readonly name: string = 'Lz4DecodeError';

  constructor(
    message: string,
    readonly offsetInFrame?: number,
  ) {
    super(message);
  }
}

/** A block or content checksum does not match: the data is corrupt. */
export class Lz4ChecksumError extends Lz4DecodeError {
  override readonly name = 'Lz4ChecksumError';

  constructor(
    readonly kind: 'block' | 'content',
    message: string,
    offsetInFrame: number,
  ) {
    super(message, offsetInFrame);
  }
}
