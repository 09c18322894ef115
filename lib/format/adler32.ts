/**
 * Adler-32 (RFC 1950), streaming, equal to zlib's `adler32()`, and the
 * `.chksum` file that holds it.
 *
 * virtnbdbackup (since 1.9.40; Debian's 1.9.15 writes none) stores beside
 * each stream-format data file `<datafile>.chksum`: the Adler-32 of the
 * data file's bytes as a plain decimal number, no newline (e.g.
 * `3213438597`). Its restore `--verify` recomputes it and compares with
 * Python's `int()`, which tolerates surrounding whitespace; so do we.
 */

/** Largest prime below 2^16. */
const BASE = 65521;
/**
 * Most bytes that can be summed before `b` could pass 2^32 - 1 (starting
 * from a, b < BASE), so the two modulo operations run once per NMAX bytes
 * instead of once per byte.
 */
const NMAX = 5552;

/** Streaming Adler-32: `update()` any number of times, then `digest()`. */
export class Adler32 {
  private a: number;
  private b: number;

  /** `seed` continues a previous checksum (zlib's `adler32(data, seed)`); 1 starts afresh. */
  constructor(seed = 1) {
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
      throw new RangeError(`adler32 seed must be an unsigned 32-bit integer, got ${seed}`);
    }
    this.a = seed & 0xffff;
    this.b = seed >>> 16;
  }

  /** Adds bytes; returns this for chaining. */
  update(data: Uint8Array): this {
    let a = this.a;
    let b = this.b;
    const n = data.length;
    let i = 0;
    while (i < n) {
      const end = Math.min(i + NMAX, n);
      for (; i < end; i++) {
        a += data[i];
        b += a;
      }
      a %= BASE;
      b %= BASE;
    }
    this.a = a;
    this.b = b;
    return this;
  }

  /** The checksum of everything passed to `update()` so far, unsigned 32-bit. */
  digest(): number {
    return this.b * 0x10000 + this.a;
  }
}

/** One-shot Adler-32 of `data` (continuing from `seed`, default 1). */
export function adler32(data: Uint8Array, seed = 1): number {
  return new Adler32(seed).update(data).digest();
}

/** The content of a `.chksum` file: the checksum as a decimal number, no newline. */
export function formatChecksumFile(checksum: number): string {
  if (!Number.isInteger(checksum) || checksum < 0 || checksum > 0xffffffff) {
    throw new RangeError(`adler32 checksum must be an unsigned 32-bit integer, got ${checksum}`);
  }
  return String(checksum);
}

/** A `.chksum` file whose content is not a checksum. */
export class ChecksumFileError extends Error {
  override readonly name = 'ChecksumFileError';
  constructor(
    readonly file: string,
    readonly content: string,
  ) {
    super(`Checksum file ${file} does not hold an adler32 checksum (a decimal number up to 4294967295): ${JSON.stringify(content.slice(0, 40))}`);
  }
}

/**
 * Parses a `.chksum` file's content (string or bytes). `file` names it in
 * the error thrown for anything but one unsigned 32-bit decimal number,
 * optionally surrounded by whitespace.
 */
export function parseChecksumFile(content: string | Uint8Array, file = '<checksum file>'): number {
  const text = typeof content === 'string' ? content : Buffer.from(content).toString('latin1');
  const trimmed = text.trim();
  if (!/^[0-9]{1,10}$/.test(trimmed)) throw new ChecksumFileError(file, text);
  const value = Number(trimmed);
  if (value > 0xffffffff) throw new ChecksumFileError(file, text);
  return value;
}
