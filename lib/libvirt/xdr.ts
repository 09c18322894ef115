/**
 * XDR (RFC 4506) encoding and decoding, the data representation of
 * libvirt's RPC protocol. Only what libvirt's `.x` files use: int, unsigned
 * int, hyper, unsigned hyper, bool, double, enum (as int), string,
 * fixed and variable opaque, optional data (`*` pointers), variable arrays.
 * Every item is big-endian and padded to a multiple of four bytes.
 */

/** Bad data on the wire or a value that cannot be encoded. */
export class XdrError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'XdrError';
  }
}

const INT_MIN = -0x80000000;
const INT_MAX = 0x7fffffff;
const UINT_MAX = 0xffffffff;
const HYPER_MIN = -(1n << 63n);
const HYPER_MAX = (1n << 63n) - 1n;
const UHYPER_MAX = (1n << 64n) - 1n;

function padding(length: number): number {
  return (4 - (length % 4)) % 4;
}

/** Builds one XDR-encoded buffer; grows as needed. */
export class XdrWriter {
  private buf: Buffer;
  private pos = 0;

  constructor(initialSize = 256) {
    this.buf = Buffer.alloc(initialSize);
  }

  get length(): number {
    return this.pos;
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  int(value: number): this {
    if (!Number.isInteger(value) || value < INT_MIN || value > INT_MAX) {
      throw new XdrError(`${value} is not a 32-bit signed integer`);
    }
    this.ensure(4);
    this.buf.writeInt32BE(value, this.pos);
    this.pos += 4;
    return this;
  }

  uint(value: number): this {
    if (!Number.isInteger(value) || value < 0 || value > UINT_MAX) {
      throw new XdrError(`${value} is not a 32-bit unsigned integer`);
    }
    this.ensure(4);
    this.buf.writeUInt32BE(value, this.pos);
    this.pos += 4;
    return this;
  }

  hyper(value: number | bigint): this {
    const v = toBigInt(value);
    if (v < HYPER_MIN || v > HYPER_MAX) throw new XdrError(`${value} is not a 64-bit signed integer`);
    this.ensure(8);
    this.buf.writeBigInt64BE(v, this.pos);
    this.pos += 8;
    return this;
  }

  uhyper(value: number | bigint): this {
    const v = toBigInt(value);
    if (v < 0n || v > UHYPER_MAX) throw new XdrError(`${value} is not a 64-bit unsigned integer`);
    this.ensure(8);
    this.buf.writeBigUInt64BE(v, this.pos);
    this.pos += 8;
    return this;
  }

  bool(value: boolean): this {
    return this.int(value ? 1 : 0);
  }

  double(value: number): this {
    this.ensure(8);
    this.buf.writeDoubleBE(value, this.pos);
    this.pos += 8;
    return this;
  }

  /** Fixed-length opaque: exactly `length` bytes, then padding. */
  fixedOpaque(data: Buffer, length: number): this {
    if (data.length !== length) {
      throw new XdrError(`fixed opaque needs ${length} bytes, got ${data.length}`);
    }
    this.raw(data);
    return this;
  }

  /** Variable-length opaque: length word, bytes, padding. */
  opaque(data: Buffer, max = UINT_MAX): this {
    if (data.length > max) throw new XdrError(`opaque of ${data.length} bytes exceeds its limit of ${max}`);
    this.uint(data.length);
    this.raw(data);
    return this;
  }

  /** UTF-8 string: length word, bytes, padding. */
  string(value: string, max = UINT_MAX): this {
    const data = Buffer.from(value, 'utf8');
    if (data.length > max) throw new XdrError(`string of ${data.length} bytes exceeds its limit of ${max}`);
    this.uint(data.length);
    this.raw(data);
    return this;
  }

  /** Optional data (`T *`): a bool, then the value when present. */
  optional<T>(value: T | null | undefined, write: (w: XdrWriter, v: T) => void): this {
    if (value === null || value === undefined) return this.bool(false);
    this.bool(true);
    write(this, value);
    return this;
  }

  /** Variable-length array: count, then each element. */
  array<T>(items: readonly T[], write: (w: XdrWriter, v: T) => void, max = UINT_MAX): this {
    if (items.length > max) throw new XdrError(`array of ${items.length} items exceeds its limit of ${max}`);
    this.uint(items.length);
    for (const item of items) write(this, item);
    return this;
  }

  private raw(data: Buffer): void {
    const pad = padding(data.length);
    this.ensure(data.length + pad);
    data.copy(this.buf, this.pos);
    this.pos += data.length;
    this.buf.fill(0, this.pos, this.pos + pad);
    this.pos += pad;
  }

  /** The encoded bytes (a copy-free view of the internal buffer). */
  finish(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

function toBigInt(value: number | bigint): bigint {
  if (typeof value === 'bigint') return value;
  if (!Number.isSafeInteger(value)) throw new XdrError(`${value} is not a safe integer`);
  return BigInt(value);
}

/** Reads XDR items from a buffer; every read is bounds-checked. */
export class XdrReader {
  private pos: number;

  constructor(
    private readonly buf: Buffer,
    offset = 0,
    private readonly end = buf.length,
  ) {
    this.pos = offset;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  private need(n: number, what: string): void {
    if (this.pos + n > this.end) {
      throw new XdrError(`truncated data: ${what} needs ${n} bytes at offset ${this.pos}, ${this.remaining} left`);
    }
  }

  int(): number {
    this.need(4, 'int');
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  uint(): number {
    this.need(4, 'unsigned int');
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  hyper(): bigint {
    this.need(8, 'hyper');
    const v = this.buf.readBigInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  uhyper(): bigint {
    this.need(8, 'unsigned hyper');
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** An unsigned hyper that must fit a JavaScript number (sizes, versions, times). */
  uhyperNumber(what: string): number {
    return safeNumber(this.uhyper(), what);
  }

  /** A hyper that must fit a JavaScript number. */
  hyperNumber(what: string): number {
    return safeNumber(this.hyper(), what);
  }

  bool(): boolean {
    const v = this.int();
    if (v !== 0 && v !== 1) throw new XdrError(`bool must be 0 or 1, got ${v}`);
    return v === 1;
  }

  double(): number {
    this.need(8, 'double');
    const v = this.buf.readDoubleBE(this.pos);
    this.pos += 8;
    return v;
  }

  fixedOpaque(length: number): Buffer {
    const pad = padding(length);
    this.need(length + pad, `opaque[${length}]`);
    const data = Buffer.from(this.buf.subarray(this.pos, this.pos + length));
    this.pos += length + pad;
    return data;
  }

  opaque(max = UINT_MAX): Buffer {
    const length = this.uint();
    if (length > max) throw new XdrError(`opaque of ${length} bytes exceeds its limit of ${max}`);
    return this.fixedOpaque(length);
  }

  string(max = UINT_MAX): string {
    const length = this.uint();
    if (length > max) throw new XdrError(`string of ${length} bytes exceeds its limit of ${max}`);
    const pad = padding(length);
    this.need(length + pad, `string<${length}>`);
    const s = this.buf.toString('utf8', this.pos, this.pos + length);
    this.pos += length + pad;
    return s;
  }

  optional<T>(read: (r: XdrReader) => T): T | null {
    return this.bool() ? read(this) : null;
  }

  array<T>(read: (r: XdrReader) => T, max = UINT_MAX): T[] {
    const count = this.uint();
    if (count > max) throw new XdrError(`array of ${count} items exceeds its limit of ${max}`);
    // Each element takes at least 4 bytes: refuse counts the data cannot hold.
    if (count * 4 > this.remaining) {
      throw new XdrError(`array claims ${count} items but only ${this.remaining} bytes remain`);
    }
    const items: T[] = [];
    for (let i = 0; i < count; i++) items.push(read(this));
    return items;
  }

  /** Fails when bytes are left over: the reply did not have the shape we expected. */
  assertEnd(what: string): void {
    if (this.pos !== this.end) {
      throw new XdrError(`${this.end - this.pos} unexpected bytes after ${what}`);
    }
  }
}

function safeNumber(v: bigint, what: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new XdrError(`${what} ${v} does not fit a JavaScript number`);
  return n;
}
