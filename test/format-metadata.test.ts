import test from 'ava';
import { execFileSync } from 'node:child_process';
import {
  createMetadata,
  isCompressed,
  parseMetadata,
  pythonIsoDate,
  serializeMetadata,
  type StreamMetadata,
} from '../lib/format/metadata.js';
import { pythonJsonDumps, type PythonJsonValue } from '../lib/format/pythonJson.js';
import { MetadataError } from '../lib/format/errors.js';

/** What Python's json.dumps writes for the same value (the real peer, not our idea of it). */
function pythonDumps(value: PythonJsonValue, indent?: number): string {
  const script =
    'import json, sys\n' +
    'value = json.loads(sys.stdin.read())\n' +
    `sys.stdout.write(json.dumps(value${indent === undefined ? '' : `, indent=${indent}`}))\n`;
  return execFileSync('/usr/bin/python3', ['-c', script], { input: JSON.stringify(value), encoding: 'utf8' });
}

const sample: StreamMetadata = {
  virtualSize: 4294967296,
  dataSize: 1503657984,
  date: '2026-11-30T07:45:01.123456',
  diskName: 'vda',
  diskFormat: 'qcow2',
  checkpointName: 'virtnbdbackup.0',
  compressed: false,
  compressionMethod: 'lz4',
  parentCheckpoint: false,
  incremental: false,
  streamVersion: 2,
};

test('metadata is serialized byte for byte as virtnbdbackup writes it', (t) => {
  const expected = [
    '{',
    '    "virtualSize": 4294967296,',
    '    "dataSize": 1503657984,',
    '    "date": "2026-11-30T07:45:01.123456",',
    '    "diskName": "vda",',
    '    "diskFormat": "qcow2",',
    '    "checkpointName": "virtnbdbackup.0",',
    '    "compressed": false,',
    '    "compressionMethod": "lz4",',
    '    "parentCheckpoint": false,',
    '    "incremental": false,',
    '    "streamVersion": 2',
    '}',
  ].join('\n');
  t.is(serializeMetadata(sample).toString('utf8'), expected);
  t.is(serializeMetadata(sample).toString('utf8'), pythonDumps(sample as unknown as PythonJsonValue, 4));
});

test('key order is Python\'s insertion order whatever order the object has', (t) => {
  const shuffled = Object.fromEntries(Object.entries(sample).reverse()) as unknown as StreamMetadata;
  t.deepEqual(serializeMetadata(shuffled), serializeMetadata(sample));
});

test('non-ASCII, control characters and DEL are escaped as Python does', (t) => {
  const odd = {
    ...sample,
    diskName: 'vdä',
    checkpointName: 'Prüfpunkt €1 🚀 "quoted" back\\slash\ttab\nnl\u0001\u007f\u00ff',
    parentCheckpoint: 'virtnbdbackup.0',
    compressed: 2,
    incremental: true,
  };
  const ours = serializeMetadata(odd).toString('latin1');
  t.is(ours, pythonDumps(odd as unknown as PythonJsonValue, 4));
  t.regex(ours, /\\u00e4/);
  t.regex(ours, /\\ud83d\\ude80/);
  t.regex(ours, /\\u007f/);
  t.true([...ours].every((ch) => ch.charCodeAt(0) < 0x80), 'pure ASCII output');
  t.deepEqual(parseMetadata(serializeMetadata(odd)), odd);
});

test('nested and empty values follow json.dumps with and without indent', (t) => {
  const value: PythonJsonValue = { a: [], b: {}, c: [1, [2, { d: null }]], e: 'x', f: -3, g: true };
  t.is(pythonJsonDumps(value, 4), pythonDumps(value, 4));
  t.is(pythonJsonDumps(value), pythonDumps(value));
});

test('createMetadata fills in a version 2 record with a Python-style date', (t) => {
  const meta = createMetadata({
    virtualSize: 1 << 30,
    dataSize: 1 << 20,
    diskName: 'sda',
    diskFormat: 'raw',
    checkpointName: 'virtnbdbackup.1',
    parentCheckpoint: 'virtnbdbackup.0',
    incremental: true,
    compressed: 2,
  });
  t.is(meta.streamVersion, 2);
  t.is(meta.compressionMethod, 'lz4');
  t.true(isCompressed(meta));
  t.regex(meta.date, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$/);
  t.deepEqual(Object.keys(JSON.parse(serializeMetadata(meta).toString())), Object.keys(sample));
});

test('pythonIsoDate matches datetime.isoformat, dropping a zero fraction', (t) => {
  const when = new Date(2026, 10, 30, 7, 45, 1, 123);
  t.is(pythonIsoDate(when, 123456), '2026-11-30T07:45:01.123456');
  t.is(pythonIsoDate(when, 5), '2026-11-30T07:45:01.000005');
  t.is(pythonIsoDate(when, 0), '2026-11-30T07:45:01');
  t.is(pythonIsoDate(when), '2026-11-30T07:45:01.123000');
  const python = execFileSync(
    '/usr/bin/python3',
    ['-c', 'import datetime; print(datetime.datetime(2026, 11, 30, 7, 45, 1, 5).isoformat(), datetime.datetime(2026, 11, 30, 7, 45, 1).isoformat())'],
    { encoding: 'utf8' },
  );
  t.is(python.trim(), `${pythonIsoDate(when, 5)} ${pythonIsoDate(when, 0)}`);
});

test('any compressed value but false means compressed, including level 0', (t) => {
  t.false(isCompressed(sample));
  t.true(isCompressed({ ...sample, compressed: 2 }));
  t.true(isCompressed({ ...sample, compressed: 0 }));
  t.true(isCompressed({ ...sample, compressed: true }));
});

test('stream version 1 metadata from old virtnbdbackup parses with defaults', (t) => {
  const old = Buffer.from(
    JSON.stringify(
      {
        virtualSize: 10737418240,
        dataSize: 2097152,
        date: '2021-03-01T10:00:00.000001',
        diskName: 'vda',
        checkpointName: 'virtnbdbackup.2',
        parentCheckpoint: 'virtnbdbackup.1',
        incremental: true,
        'stream-version': 1,
      },
      null,
      4,
    ),
  );
  const meta = parseMetadata(old);
  t.is(meta.streamVersion, 1);
  t.is(meta.compressed, false);
  t.false(isCompressed(meta));
  t.is(meta.diskFormat, 'qcow2');
  t.is(meta.parentCheckpoint, 'virtnbdbackup.1');
  t.true(meta.incremental);
});

test('extra keys are accepted and compressed only counts from version 2', (t) => {
  const meta = parseMetadata(
    Buffer.from(JSON.stringify({ virtualSize: 100, dataSize: 0, compressed: 2, futureKey: [1, 2] })),
  );
  t.is(meta.streamVersion, 1);
  t.false(isCompressed(meta));
  t.is(meta.parentCheckpoint, false);
});

test('1.9.15-style empty parent checkpoint stays a string', (t) => {
  const meta = parseMetadata(serializeMetadata({ ...sample, parentCheckpoint: '' as string }));
  t.is(meta.parentCheckpoint, '');
});

test('bad metadata is a MetadataError naming frame 0 and byte 40', (t) => {
  const cases: [string, RegExp][] = [
    ['{"virtualSize": 1', /not valid UTF-8 JSON/],
    ['[1, 2]', /not a JSON object/],
    ['{"dataSize": 0}', /virtualSize must be a non-negative integer/],
    ['{"virtualSize": 10, "dataSize": 20}', /dataSize 20 exceeds virtualSize 10/],
    ['{"virtualSize": 10, "dataSize": 1, "streamVersion": 2, "compressed": 2, "compressionMethod": "zstd"}', /unsupported compression method/],
  ];
  for (const [json, pattern] of cases) {
    const err = t.throws(() => parseMetadata(Buffer.from(json)), { instanceOf: MetadataError });
    t.regex(err?.message ?? '', /^frame 0 at byte 40: /);
    t.regex(err?.message ?? '', pattern);
  }
  t.throws(() => parseMetadata(Buffer.from([0x7b, 0xff, 0x7d])), { instanceOf: MetadataError });
});

test('a stream without a parent says so the way virtnbdbackup does: an empty string', (t) => {
  const meta = createMetadata({
    virtualSize: 1 << 30,
    dataSize: 0,
    diskName: 'vda',
    diskFormat: 'qcow2',
    checkpointName: 'virtnbdbackup.0',
  });
  t.is(meta.parentCheckpoint, '');
  t.true(serializeMetadata(meta).toString().includes('\n    "parentCheckpoint": "",\n'));
});
