import test from 'ava';
import {
  encodeFrameHeader,
  FRAME_HEADER_LENGTH,
  parseFrameHeader,
  type FrameKind,
} from '../lib/format/frameHeader.js';
import { FrameHeaderError, StreamFormatError, UnknownFrameKindError } from '../lib/format/errors.js';

const where = { frameIndex: 12, byteOffset: 4096 };

test('headers are the exact bytes virtnbdbackup writes', (t) => {
  t.is(encodeFrameHeader('meta', 0, 0x16c).toString('latin1'), 'meta 0000000000000000 000000000000016c\r\n');
  t.is(encodeFrameHeader('data', 0x100000, 0x10000).toString('latin1'), 'data 0000000000100000 0000000000010000\r\n');
  t.is(encodeFrameHeader('zero', 0xabcdef0123, 1).toString('latin1'), 'zero 000000abcdef0123 0000000000000001\r\n');
  t.is(encodeFrameHeader('stop', 0, 0).toString('latin1'), 'stop 0000000000000000 0000000000000000\r\n');
  t.is(encodeFrameHeader('comp', 0, 42).toString('latin1'), 'comp 0000000000000000 000000000000002a\r\n');
  t.is(encodeFrameHeader('stop', 0, 0).length, FRAME_HEADER_LENGTH);
});

test('encode and parse round trip, up to the largest safe integer', (t) => {
  const cases: [FrameKind, number, number][] = [
    ['meta', 0, 365],
    ['data', 0, 1],
    ['zero', 2 ** 40 - 4096, 4096],
    ['data', Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
    ['stop', 0, 0],
    ['comp', 0, 17],
  ];
  for (const [kind, start, length] of cases) {
    t.deepEqual(parseFrameHeader(encodeFrameHeader(kind, start, length), where), { kind, start, length });
  }
});

test('encoding refuses values the format cannot hold', (t) => {
  t.throws(() => encodeFrameHeader('data', -1, 1), { instanceOf: RangeError });
  t.throws(() => encodeFrameHeader('data', 0, 1.5), { instanceOf: RangeError });
  t.throws(() => encodeFrameHeader('bogus' as FrameKind, 0, 1), { instanceOf: RangeError });
});

function rejects(t: import('ava').ExecutionContext, header: string, type: typeof StreamFormatError, pattern: RegExp) {
  const err = t.throws(() => parseFrameHeader(Buffer.from(header, 'latin1'), where), { instanceOf: type });
  t.true(err instanceof StreamFormatError);
  t.is(err?.frameIndex, 12);
  t.is(err?.byteOffset, 4096);
  t.regex(err?.message ?? '', /^frame 12 at byte 4096: /);
  t.regex(err?.message ?? '', pattern);
}

test('upper-case hex is rejected', (t) => {
  rejects(t, 'data 00000000001000A0 0000000000010000\r\n', FrameHeaderError, /lower-case hex/);
});

test('non-hex digits are rejected, naming the byte', (t) => {
  rejects(t, 'data 0000000000100000 00000000000g0000\r\n', FrameHeaderError, /byte 33 of the header is "g"/);
});

test('unknown kinds are rejected', (t) => {
  rejects(t, 'dato 0000000000100000 0000000000010000\r\n', UnknownFrameKindError, /unknown frame kind "dato"/);
  rejects(t, 'DATA 0000000000100000 0000000000010000\r\n', UnknownFrameKindError, /unknown frame kind/);
});

test('separators and terminator must be exact', (t) => {
  rejects(t, 'data\t0000000000100000 0000000000010000\r\n', FrameHeaderError, /single spaces/);
  rejects(t, 'data 0000000000100000  000000000010000\r\n', FrameHeaderError, /lower-case hex/);
  rejects(t, 'data 0000000000100000 0000000000010000\n\n', FrameHeaderError, /does not end with/);
});

test('headers of the wrong length are rejected', (t) => {
  rejects(t, 'data 100000 10000\r\n', FrameHeaderError, /is 19 bytes, expected 40/);
  rejects(t, 'data 00000000000100000 00000000000010000\r\n', FrameHeaderError, /expected 40/);
});
