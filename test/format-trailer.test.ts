import test from 'ava';
import { execFileSync } from 'node:child_process';
import {
  CompressedSizeLog,
  encodeTrailer,
  encodeTrailerSection,
  parseTrailer,
  parseTrailerSection,
  trailerEntryFor,
  trailerEntryTotal,
  type CompressionTrailer,
} from '../lib/format/trailer.js';
import { MissingTerminatorError, TrailerError, TrailerMismatchError, TrailingDataError } from '../lib/format/errors.js';

const where = { frameIndex: 9, byteOffset: 123456 };

test('trailer JSON is what json.dumps writes', (t) => {
  const trailer: CompressionTrailer = [123, { total: 456, pieces: [100, 356] }, 789];
  t.is(encodeTrailer(trailer).toString(), '[123, {"456": [100, 356]}, 789]');
  t.is(encodeTrailer([]).toString(), '[]');
  t.is(encodeTrailer([{ total: 7, pieces: [7] }]).toString(), '[{"7": [7]}]');
});

test('trailer JSON matches Python byte for byte for the structure virtnbdbackup builds', (t) => {
  // virtnbdbackup appends sizes and {total: [sizes]} dicts with int keys to a list.
  const script =
    'import json\n' +
    'sizes = [65, {1048576: [524288, 524288]}, 9, {33554432: [33554432]}]\n' +
    'print(json.dumps(sizes), end="")\n';
  const python = execFileSync('/usr/bin/python3', ['-c', script], { encoding: 'utf8' });
  const ours = encodeTrailer([
    65,
    { total: 1048576, pieces: [524288, 524288] },
    9,
    { total: 33554432, pieces: [33554432] },
  ]).toString();
  t.is(ours, python);
});

test('the trailer section ends with the comp frame as the last 40 bytes', (t) => {
  const section = Buffer.concat(encodeTrailerSection([123, { total: 456, pieces: [100, 356] }, 789]));
  t.is(
    section.toString('latin1'),
    '[123, {"456": [100, 356]}, 789]\r\ncomp 0000000000000000 000000000000001f\r\n',
  );
});

test('entries take the object form from maxRequestSize on, even for one piece', (t) => {
  t.is(trailerEntryFor(65535, [100], 65536), 100);
  t.deepEqual(trailerEntryFor(65536, [100], 65536), { total: 100, pieces: [100] });
  t.deepEqual(trailerEntryFor(200000, [10, 20, 30, 40], 65536), { total: 100, pieces: [10, 20, 30, 40] });
  t.is(trailerEntryTotal({ total: 100, pieces: [60, 40] }), 100);
  t.is(trailerEntryTotal(5), 5);
});

test('parse round trip', (t) => {
  const trailer: CompressionTrailer = [1, { total: 3, pieces: [1, 2] }, 0, { total: 9, pieces: [9] }];
  t.deepEqual(parseTrailer(encodeTrailer(trailer), where), trailer);
});

test('malformed trailers are TrailerErrors naming frame and byte', (t) => {
  const cases: [string, RegExp][] = [
    ['[1, 2', /not valid JSON/],
    ['{"1": [1]}', /not a JSON list/],
    ['[1, -2]', /entry 1 is neither a size/],
    ['["12"]', /entry 0 is neither a size/],
    ['[{"3": [1, 2], "4": [4]}]', /exactly one key/],
    ['[{"x": [1]}]', /exactly one key/],
    ['[{"3": []}]', /must list the sizes/],
    ['[{"4": [1, 2]}]', /do not add up/],
  ];
  for (const [json, pattern] of cases) {
    const err = t.throws(() => parseTrailer(Buffer.from(json), where), { instanceOf: TrailerError });
    t.regex(err?.message ?? '', /^frame 9 at byte 123456: /);
    t.regex(err?.message ?? '', pattern);
  }
});

test('the section after the stop frame parses back, and its damage is named', (t) => {
  const trailer: CompressionTrailer = [123, { total: 456, pieces: [100, 356] }, 789];
  const section = Buffer.concat(encodeTrailerSection(trailer));
  t.deepEqual(parseTrailerSection(section, where), trailer);
  const compAt = where.byteOffset + section.length - 40;
  const short = t.throws(() => parseTrailerSection(section.subarray(0, 30), where), { instanceOf: TrailerError });
  t.regex(short?.message ?? '', /only 30 bytes follow the stop frame/);
  const cut = t.throws(() => parseTrailerSection(section.subarray(5), where), { instanceOf: TrailerError });
  t.regex(cut?.message ?? '', new RegExp(`^frame 9 at byte ${compAt - 5}: comp frame announces 31 trailer bytes, only 26`));
  const extra = Buffer.concat([Buffer.from('xx'), section]);
  t.throws(() => parseTrailerSection(extra, where), { instanceOf: TrailingDataError, message: /2 unexpected bytes/ });
  const noTerm = Buffer.from(section);
  noTerm.write('..', 31, 'latin1');
  t.throws(() => parseTrailerSection(noTerm, where), { instanceOf: MissingTerminatorError });
  const notComp = Buffer.from(section);
  notComp.write('stop', section.length - 40, 'latin1');
  t.throws(() => parseTrailerSection(notComp, where), { instanceOf: TrailerError, message: /ends with a stop frame/ });
});

test('CompressedSizeLog names the first data frame the trailer gets wrong', (t) => {
  const log = new CompressedSizeLog();
  log.startFrame({ frameIndex: 1, byteOffset: 400 });
  log.addPiece(123);
  log.startFrame({ frameIndex: 3, byteOffset: 600 });
  log.addPiece(100);
  log.addPiece(356);
  t.notThrows(() => log.check([123, { total: 456, pieces: [100, 356] }], where));
  t.notThrows(() => log.check([123, 456], where), 'a plain number for a split frame is accepted by its total');
  const count = t.throws(() => log.check([123], where), { instanceOf: TrailerMismatchError });
  t.regex(count?.message ?? '', /^frame 9 at byte 123456: compression trailer has 1 entries, the stream has 2 data frames/);
  const pieces = t.throws(() => log.check([123, { total: 456, pieces: [356, 100] }], where), { instanceOf: TrailerMismatchError });
  t.regex(pieces?.message ?? '', /^frame 3 at byte 600: compression trailer entry 1 lists LZ4 frames of \[356, 100\]/);
  const total = t.throws(() => log.check([124, 456], where), { instanceOf: TrailerMismatchError });
  t.regex(total?.message ?? '', /^frame 1 at byte 400: compression trailer entry 0 says 124 compressed bytes, the payload has 123/);
});
