/**
 * Sparse stream frame headers: `<kind> <start> <length>\r\n`, kind one of
 * meta/data/zero/stop/comp, start and length as 16 lower-case hex digits,
 * 40 bytes in all. Parsing is strict (exact layout, lower-case hex only), so
 * a stream that is not exactly what virtnbdbackup writes is rejected at the
 * first wrong byte instead of being half understood.
 */
import { FrameHeaderError, UnknownFrameKindError, type StreamPosition } from './errors.js';

export type FrameKind = 'meta' | 'data' | 'zero' | 'stop' | 'comp';

export interface FrameHeader {
  kind: FrameKind;
  /** Disk offset (data/zero), else 0. */
  start: number;
  /** Uncompressed length (data/zero), payload length (meta/comp), 0 for stop. */
  length: number;
}

export const FRAME_KINDS: readonly FrameKind[] = ['meta', 'data', 'zero', 'stop', 'comp'];

/** Every header is exactly this long, `\r\n` included. */
export const FRAME_HEADER_LENGTH = 40;

/** Ends every header and every payload. */
export const TERMINATOR: Buffer = Buffer.from('\r\n', 'latin1');

const SPACE = 0x20;
const CR = 0x0d;
const LF = 0x0a;
const HEX_DIGITS = 16;
const START_AT = 5;
const LENGTH_AT = START_AT + HEX_DIGITS + 1;
const CR_AT = LENGTH_AT + HEX_DIGITS;

function hex16(value: number, what: string): string {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`frame ${what} must be a non-negative safe integer, got ${value}`);
  }
  return value.toString(16).padStart(HEX_DIGITS, '0');
}

/** The 40 header bytes for a frame. */
export function encodeFrameHeader(kind: FrameKind, start: number, length: number): Buffer {
  if (!FRAME_KINDS.includes(kind)) throw new RangeError(`unknown frame kind ${String(kind)}`);
  return Buffer.from(`${kind} ${hex16(start, 'start')} ${hex16(length, 'length')}\r\n`, 'latin1');
}

/** Printable rendering of raw header bytes for error messages. */
export function showBytes(bytes: Uint8Array): string {
  return JSON.stringify(Buffer.from(bytes).toString('latin1'));
}

function hexValue(byte: number): number {
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  if (byte >= 0x61 && byte <= 0x66) return byte - 0x61 + 10;
  return -1;
}

function parseHexField(bytes: Uint8Array, at: number, field: string, where: StreamPosition): number {
  // Two 8-digit halves keep the arithmetic exact without BigInt.
  let high = 0;
  let low = 0;
  for (let i = 0; i < HEX_DIGITS; i++) {
    const digit = hexValue(bytes[at + i]!);
    if (digit < 0) {
      throw new FrameHeaderError(
        where,
        `bad ${field} in frame header ${showBytes(bytes)}: ` +
          `byte ${at + i} of the header is ${showBytes(bytes.subarray(at + i, at + i + 1))}, ` +
          'expected a lower-case hex digit',
      );
    }
    if (i < 8) high = high * 16 + digit;
    else low = low * 16 + digit;
  }
  const value = high * 2 ** 32 + low;
  if (!Number.isSafeInteger(value)) {
    throw new FrameHeaderError(where, `${field} 0x${Buffer.from(bytes.subarray(at, at + HEX_DIGITS)).toString('latin1')} is too large`);
  }
  return value;
}

/**
 * Parse exactly one 40-byte header. `where` names the frame and the byte
 * offset of the header for error messages.
 */
export function parseFrameHeader(bytes: Uint8Array, where: StreamPosition): FrameHeader {
  if (bytes.length !== FRAME_HEADER_LENGTH) {
    throw new FrameHeaderError(
      where,
      `frame header is ${bytes.length} bytes, expected ${FRAME_HEADER_LENGTH}: ${showBytes(bytes)}`,
    );
  }
  const kind = Buffer.from(bytes.subarray(0, 4)).toString('latin1') as FrameKind;
  if (!FRAME_KINDS.includes(kind)) {
    throw new UnknownFrameKindError(
      where,
      `unknown frame kind ${showBytes(bytes.subarray(0, 4))} in header ${showBytes(bytes)} ` +
        `(expected one of ${FRAME_KINDS.join(', ')})`,
    );
  }
  if (bytes[4] !== SPACE || bytes[LENGTH_AT - 1] !== SPACE) {
    throw new FrameHeaderError(where, `frame header ${showBytes(bytes)} is not "<kind> <start> <length>" with single spaces`);
  }
  const start = parseHexField(bytes, START_AT, 'start', where);
  const length = parseHexField(bytes, LENGTH_AT, 'length', where);
  if (bytes[CR_AT] !== CR || bytes[CR_AT + 1] !== LF) {
    throw new FrameHeaderError(where, `frame header ${showBytes(bytes)} does not end with \\r\\n`);
  }
  return { kind, start, length };
}
