import test from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Adler32, ChecksumFileError, adler32, formatChecksumFile, parseChecksumFile } from '../lib/format/adler32.js';
import { ADLER32_WASM } from '../lib/format/adler32Wasm.js';
import { ChecksumTap } from '../streams/ChecksumTap.js';

/** zlib's adler32 of `data`, computed by python3 (the checksum virtnbdbackup writes). */
function pythonAdler32(data: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      '/usr/bin/python3',
      ['-c', 'import sys, zlib; print(zlib.adler32(sys.stdin.buffer.read()))'],
      { maxBuffer: 1024 },
      (error, stdout) => (error ? reject(error) : resolve(Number(stdout.trim()))),
    );
    child.stdin!.end(data);
  });
}

/** `data` cut at random places, including empty pieces. */
function randomPieces(data: Buffer): Buffer[] {
  const pieces: Buffer[] = [];
  let at = 0;
  while (at < data.length) {
    const n = Math.min(data.length - at, randomInt(0, 200_000));
    pieces.push(data.subarray(at, at + n));
    at += n;
  }
  return pieces;
}

test('known values', (t) => {
  t.is(adler32(Buffer.alloc(0)), 1);
  t.is(adler32(Buffer.from('Wikipedia')), 0x11e60398);
  t.is(new Adler32().digest(), 1);
});

// Sizes around NMAX (5552) and 0xff bytes, which make the sums grow fastest.
const cases: Array<[string, () => Buffer]> = [
  ['one byte', () => randomBytes(1)],
  ['5551 random bytes', () => randomBytes(5551)],
  ['5552 bytes of 0xff', () => Buffer.alloc(5552, 0xff)],
  ['5553 bytes of 0xff', () => Buffer.alloc(5553, 0xff)],
  // The WebAssembly path: runs of 5536 bytes, slices of 1 MiB, a view at an odd offset.
  ['5536 + 15 bytes of 0xff', () => Buffer.alloc(5536 + 15, 0xff)],
  ['1 MiB + 31 bytes of 0xff at an odd offset', () => Buffer.alloc(1024 * 1024 + 40, 0xff).subarray(9)],
  ['3 MiB of 0xff', () => Buffer.alloc(3 * 1024 * 1024, 0xff)],
  ['4 MiB + 17 random bytes', () => randomBytes(4 * 1024 * 1024 + 17)],
];

for (const [name, make] of cases) {
  test(`equals python zlib.adler32: ${name}, whole and in random pieces`, async (t) => {
    const data = make();
    const expected = await pythonAdler32(data);
    t.is(adler32(data), expected);
    const streaming = new Adler32();
    for (const piece of randomPieces(data)) streaming.update(piece);
    t.is(streaming.digest(), expected);
  });
}

test('a seed continues a checksum', (t) => {
  const a = randomBytes(10_000);
  const b = randomBytes(7_777);
  t.is(adler32(b, adler32(a)), adler32(Buffer.concat([a, b])));
});

test('ChecksumTap passes bytes through untouched and equals python zlib.adler32', async (t) => {
  const data = Buffer.concat([randomBytes(2 * 1024 * 1024 + 5), Buffer.alloc(70_000, 0xff)]);
  const tap = new ChecksumTap();
  let announced: number | undefined;
  tap.on('checksum', (value: number) => {
    announced = value;
  });
  const out: Buffer[] = [];
  await pipeline(
    Readable.from(randomPieces(data)),
    tap,
    new Writable({
      write(chunk: Buffer, _encoding, callback) {
        out.push(chunk);
        callback();
      },
    }),
  );
  const expected = await pythonAdler32(data);
  t.true(Buffer.concat(out).equals(data));
  t.true(tap.complete);
  t.is(tap.checksum, expected);
  t.is(announced, expected);
  t.is(tap.bytes, data.length);
});

test('ChecksumTap of nothing is 1, like an empty file', async (t) => {
  const tap = new ChecksumTap();
  await pipeline(Readable.from([]), tap, new Writable({ write: (_c, _e, cb) => cb() }));
  t.is(tap.checksum, 1);
});

test('chksum file content: decimal, no newline; parsed back as python int() would', async (t) => {
  t.is(formatChecksumFile(3213438597), '3213438597');
  t.is(formatChecksumFile(1), '1');
  t.is(parseChecksumFile('3213438597'), 3213438597);
  t.is(parseChecksumFile(' 42\n'), 42);
  t.is(parseChecksumFile(Buffer.from('4294967295')), 4294967295);
  // What virtnbdrestore --verify does with our file.
  const python = await new Promise<string>((resolve, reject) => {
    const child = execFile('/usr/bin/python3', ['-c', 'import sys; print(int(sys.stdin.read()))'], (e, out) => (e ? reject(e) : resolve(out.trim())));
    child.stdin!.end(formatChecksumFile(2882400018));
  });
  t.is(python, '2882400018');
});

test('chksum file content that is not a checksum is a typed error naming the file', (t) => {
  for (const bad of ['', 'abc', '12 34', '-1', '4294967296', '0x10', '1.5']) {
    const error = t.throws(() => parseChecksumFile(bad, '/backup/vda.full.data.chksum'), { instanceOf: ChecksumFileError });
    t.true(error!.message.includes('/backup/vda.full.data.chksum'), error!.message);
  }
  t.throws(() => formatChecksumFile(-1), { instanceOf: RangeError });
  t.throws(() => formatChecksumFile(2 ** 32), { instanceOf: RangeError });
});

test('the embedded WebAssembly is the one lib/format/wasm/adler32.wat builds (scripts/build-wasm.sh)', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'virtnbd-wasm-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await promisify(execFile)('wat2wasm', [join(import.meta.dirname, '../lib/format/wasm/adler32.wat'), '-o', join(dir, 'a.wasm')]);
  t.is(ADLER32_WASM, (await readFile(join(dir, 'a.wasm'))).toString('base64'));
});
