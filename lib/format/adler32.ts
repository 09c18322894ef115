/**
 * Adler-32 (RFC 1950), streaming, equal to zlib's `adler32()`, and the
 * `.chksum` file that holds it.
 *
 * virtnbdbackup (since 1.9.40; Debian's 1.9.15 writes none) stores beside
 * each stream-format data file `<datafile>.chksum`: the Adler-32 of the
 * data file's bytes as a plain decimal number, no newline (e.g.
 * `3213438597`). Its restore `--verify` recomputes it and compares with
 * Python's `int()`, which tolerates surrounding whitespace; so do we.
 *
 * A backup checksums every byte it writes on the main thread, so bigger
 * updates run in WebAssembly with SIMD (wasm/adler32.wat; ~8 GB/s here,
 * copy into its memory included, against ~2 GB/s for the JavaScript below,
 * which stays for small updates and where WebAssembly is unavailable).
 */
import { ADLER32_WASM } from './adler32Wasm.js';

/** Largest prime below 2^16. */
const BASE = 65521;
/**
 * Most bytes that can be summed before `b` could pass 2^32 - 1 (starting
 * from a, b < BASE), so the two modulo operations run once per NMAX bytes
 * instead of once per byte.
 */
const NMAX = 5552;
/** Words summed between two modulo operations (NMAX bytes). */
const WORDS_PER_MOD = NMAX / 4;
/** Uint32Array reads bytes in the platform's order; the word path needs little-endian. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** Updates at least this long go to WebAssembly (below it the copy and call cost more than they save). */
const WASM_MIN_LENGTH = 256;

interface WasmAdler {
  memory: Uint8Array;
  update(adler: number, ptr: number, len: number): number;
}

let wasm: WasmAdler | null | undefined;

/** The WebAssembly module, instantiated once; null where it cannot run (no SIMD). */
function wasmAdler(): WasmAdler | null {
  if (wasm !== undefined) return wasm;
  try {
    const instance = new WebAssembly.Instance(new WebAssembly.Module(Buffer.from(ADLER32_WASM, 'base64')));
    const exports = instance.exports as { memory: WebAssembly.Memory; update: (adler: number, ptr: number, len: number) => number };
    // The memory never grows, so this view stays valid.
    wasm = { memory: new Uint8Array(exports.memory.buffer), update: exports.update };
  } catch {
    wasm = null;
  }
  return wasm;
}

/** Bytes copied into the module's memory per call: its 17 pages hold 1 MiB and change. */
const WASM_SLICE = 1024 * 1024;

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
    const n = data.length;
    const w = n >= WASM_MIN_LENGTH ? wasmAdler() : null;
    if (w) {
      let adler = this.digest();
      for (let at = 0; at < n; at += WASM_SLICE) {
        const slice = data.subarray(at, Math.min(n, at + WASM_SLICE));
        w.memory.set(slice, 0);
        adler = w.update(adler, 0, slice.length) >>> 0;
      }
      this.a = adler & 0xffff;
      this.b = adler >>> 16;
      return this;
    }
    // Bytes one by one up to a 4-byte boundary, then whole words (4x faster: this runs on every byte a backup writes).
    const head = LITTLE_ENDIAN ? Math.min(n, (4 - (data.byteOffset & 3)) & 3) : n;
    this.bytes(data, 0, head);
    const words = (n - head) >>> 2;
    if (words > 0) this.words(new Uint32Array(data.buffer, data.byteOffset + head, words));
    this.bytes(data, head + words * 4, n);
    return this;
  }

  private bytes(data: Uint8Array, from: number, to: number): void {
    let a = this.a;
    let b = this.b;
    let i = from;
    while (i < to) {
      const end = Math.min(i + NMAX, to);
      for (; i < end; i++) {
        a += data[i];
        b += a;
      }
      a %= BASE;
      b %= BASE;
    }
    this.a = a;
    this.b = b;
  }

  /**
   * Little-endian words d0 | d1 << 8 | d2 << 16 | d3 << 24: adding the four
   * bytes one by one adds d0+d1+d2+d3 to `a` and 4a + 4d0+3d1+2d2+d3 to `b`.
   * Sums stay exact in doubles (below 2^53) over WORDS_PER_MOD words.
   */
  private words(words: Uint32Array): void {
    let a = this.a;
    let b = this.b;
    const n = words.length;
    let w = 0;
    while (w < n) {
      const end = Math.min(w + WORDS_PER_MOD, n);
      for (; w < end; w++) {
        const x = words[w];
        const d0 = x & 255;
        const d1 = (x >>> 8) & 255;
        const d2 = (x >>> 16) & 255;
        const d3 = x >>> 24;
        b += 4 * a + 4 * d0 + 3 * d1 + 2 * d2 + d3;
        a += d0 + d1 + d2 + d3;
      }
      a %= BASE;
      b %= BASE;
    }
    this.a = a;
    this.b = b;
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
