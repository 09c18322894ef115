import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { compressFrameSync } from 'lz4-napi';
import type { Chunk } from '../lib/chunk.js';
import {
  DataSizeMismatchError,
  FrameHeaderError,
  FramerInputError,
  FrameRangeError,
  FrameSequenceError,
  Lz4DataError,
  Lz4FormatError,
  MetadataError,
  MissingStopFrameError,
  MissingTerminatorError,
  StreamFormatError,
  TrailerError,
  TrailerMismatchError,
  TrailingDataError,
  TruncatedStreamError,
  UnknownFrameKindError,
} from '../lib/format/errors.js';
import { createMetadata, serializeMetadata, type StreamMetadata } from '../lib/format/metadata.js';
import { parseLz4FrameDescriptor } from '../lib/format/lz4Frame.js';
import { trailerEntryTotal } from '../lib/format/trailer.js';
import { Lz4Compress, LZ4_FRAME_OPTIONS } from '../streams/Lz4Compress.js';
import { Lz4Decompress } from '../streams/Lz4Decompress.js';
import { SparseFramer } from '../streams/SparseFramer.js';
import { SparseParser } from '../streams/SparseParser.js';

const MAX_REQUEST = 64 * 1024;
const VIRTUAL_SIZE = 1024 * 1024;

// The sample disk: frame 1 data [0, 1000), frame 2 zero [1000, 5000),
// frame 3 data [8192, 11192), frame 4 data [65536, 265536) read in 4 pieces; frame 5 stop.
const image = Buffer.alloc(VIRTUAL_SIZE);
randomBytes(1000).copy(image, 0);
randomBytes(3000).copy(image, 8192);
image.fill('compressible ', 65536, 265536);

function sampleChunks(): Chunk[] {
  const chunks: Chunk[] = [
    { offset: 0, length: 1000, data: image.subarray(0, 1000) },
    { offset: 1000, length: 4000, zero: true },
    { offset: 8192, length: 3000, data: image.subarray(8192, 11192) },
  ];
  for (let at = 65536; at < 265536; at += MAX_REQUEST) {
    const length = Math.min(MAX_REQUEST, 265536 - at);
    chunks.push({ offset: at, length, data: image.subarray(at, at + length), frame: { offset: 65536, length: 200000 } });
  }
  return chunks;
}

function sampleMetadata(compressed: boolean, overrides: Partial<StreamMetadata> = {}): StreamMetadata {
  return {
    ...createMetadata({
      virtualSize: VIRTUAL_SIZE,
      dataSize: 204000,
      diskName: 'vda',
      diskFormat: 'qcow2',
      checkpointName: 'virtnbdbackup.0',
      compressed: compressed ? 2 : false,
      date: '2026-11-30T07:45:01.123456',
    }),
    ...overrides,
  };
}

interface Sample {
  bytes: Buffer;
  /** Byte offset of each frame's header, by frame index (0 = meta, 5 = stop). */
  frameAt: number[];
  /** Byte offset of each data frame's payload, by frame index. */
  payloadAt: Record<number, number>;
}

async function frame(chunks: Chunk[], metadata: StreamMetadata): Promise<{ bytes: Buffer; framer: SparseFramer }> {
  const framer = new SparseFramer({ metadata, maxRequestSize: MAX_REQUEST });
  const parts: Buffer[] = [];
  const sink = new Writable({
    write(part: Buffer, _encoding, callback) {
      parts.push(part);
      callback();
    },
  });
  const stages = metadata.compressed === false ? [framer] : [new Lz4Compress(), framer];
  await pipeline([Readable.from(chunks), ...stages, sink]);
  return { bytes: Buffer.concat(parts), framer };
}

async function sample(compressed: boolean): Promise<Sample> {
  const { bytes, framer } = await frame(sampleChunks(), sampleMetadata(compressed));
  const metaLength = serializeMetadata(sampleMetadata(compressed)).length;
  const payloads = compressed ? framer.trailer.map(trailerEntryTotal) : [1000, 3000, 200000];
  const frameAt = [0, 40 + metaLength + 2];
  frameAt.push(frameAt[1]! + 40 + payloads[0]! + 2); // zero frame
  frameAt.push(frameAt[2]! + 40);
  frameAt.push(frameAt[3]! + 40 + payloads[1]! + 2);
  frameAt.push(frameAt[4]! + 40 + payloads[2]! + 2); // stop
  const payloadAt = { 1: frameAt[1]! + 40, 3: frameAt[3]! + 40, 4: frameAt[4]! + 40 };
  return { bytes, frameAt, payloadAt };
}

/** Replace bytes at `at` with `text`. */
function patch(bytes: Buffer, at: number, text: string | Buffer): Buffer {
  const copy = Buffer.from(bytes);
  (typeof text === 'string' ? Buffer.from(text, 'latin1') : text).copy(copy, at);
  return copy;
}

/** Parse + decompress `bytes` into a sink that drops everything. */
function parse(bytes: Buffer, sliceLength: number): Promise<void> {
  function* slices() {
    for (let at = 0; at < bytes.length; at += sliceLength) yield bytes.subarray(at, at + sliceLength);
  }
  const sink = new Writable({
    objectMode: true,
    write(_chunk: Chunk, _encoding, callback) {
      callback();
    },
  });
  return pipeline(Readable.from(slices(), { objectMode: false }), new SparseParser(), new Lz4Decompress(), sink);
}

/**
 * The pipeline must reject (not hang, not finish) with `type`, naming frame
 * and byte, the same whether the stream comes whole or a byte at a time.
 */
async function rejects(
  t: ExecutionContext,
  bytes: Buffer,
  type: abstract new (...args: never[]) => StreamFormatError,
  expected: { frameIndex: number; byteOffset: number | undefined; message: RegExp },
): Promise<void> {
  for (const sliceLength of [bytes.length || 1, 1, 4093]) {
    const err = await t.throwsAsync(parse(bytes, sliceLength), { instanceOf: type });
    if (!err) return;
    t.true(err instanceof StreamFormatError);
    t.is(err.frameIndex, expected.frameIndex, err.message);
    t.is(err.byteOffset, expected.byteOffset, err.message);
    const place = expected.byteOffset === undefined ? '' : ` at byte ${expected.byteOffset}`;
    t.true(err.message.startsWith(`frame ${expected.frameIndex}${place}`), err.message);
    t.regex(err.message, expected.message);
  }
}

test('the sample streams are valid (so the failures below are the patches)', async (t) => {
  for (const compressed of [false, true]) {
    const { bytes, frameAt } = await sample(compressed);
    t.is(bytes.subarray(frameAt[5]!, frameAt[5]! + 40).toString('latin1'), 'stop 0000000000000000 0000000000000000\r\n');
    t.is(bytes.subarray(frameAt[4]!, frameAt[4]! + 5).toString('latin1'), 'data ');
    await t.notThrowsAsync(parse(bytes, 1));
  }
});

test('truncated header', async (t) => {
  const { bytes, frameAt } = await sample(false);
  await rejects(t, bytes.subarray(0, frameAt[3]! + 17), TruncatedStreamError, {
    frameIndex: 3,
    byteOffset: frameAt[3]!,
    message: /inside a frame header \(17 of 40 bytes\)/,
  });
});

test('bad hex in a header', async (t) => {
  const { bytes, frameAt } = await sample(false);
  await rejects(t, patch(bytes, frameAt[3]! + 10, 'x'), FrameHeaderError, {
    frameIndex: 3,
    byteOffset: frameAt[3]!,
    message: /bad start .* byte 10 of the header is "x"/,
  });
});

test('unknown frame kind', async (t) => {
  const { bytes, frameAt } = await sample(false);
  await rejects(t, patch(bytes, frameAt[2]!, 'void'), UnknownFrameKindError, {
    frameIndex: 2,
    byteOffset: frameAt[2]!,
    message: /unknown frame kind "void"/,
  });
});

test('frame past the virtual size', async (t) => {
  const { bytes, frameAt } = await sample(false);
  // Frame 4 (data at 65536, 200000 bytes) moved to end 1 byte past the disk.
  const start = (VIRTUAL_SIZE - 200000 + 1).toString(16).padStart(16, '0');
  await rejects(t, patch(bytes, frameAt[4]! + 5, start), FrameRangeError, {
    frameIndex: 4,
    byteOffset: frameAt[4]!,
    message: /\[848577, 1048577\) is past the virtual size 1048576/,
  });
});

test('frames out of order or overlapping', async (t) => {
  const { bytes, frameAt } = await sample(false);
  // Frame 3 (data at 8192) moved back into the zero frame before it.
  await rejects(t, patch(bytes, frameAt[3]! + 5, (4000).toString(16).padStart(16, '0')), FrameRangeError, {
    frameIndex: 3,
    byteOffset: frameAt[3]!,
    message: /at disk offset 4000 is out of order or overlaps the previous frame ending at 5000/,
  });
});

test('short payload (stream ends inside a frame)', async (t) => {
  const { bytes, payloadAt } = await sample(false);
  await rejects(t, bytes.subarray(0, payloadAt[3]! + 1234), TruncatedStreamError, {
    frameIndex: 3,
    byteOffset: payloadAt[3]! - 40,
    message: /inside the payload of the data frame at disk offset 8192 \(1234 of 3000 bytes\)/,
  });
});

test('missing \\r\\n after a payload', async (t) => {
  const { bytes, payloadAt } = await sample(false);
  await rejects(t, patch(bytes, payloadAt[1]! + 1000, '\n\r'), MissingTerminatorError, {
    frameIndex: 1,
    byteOffset: payloadAt[1]! - 40,
    message: new RegExp(`not followed by \\\\r\\\\n: byte ${payloadAt[1]! + 1000} is "\\\\n"`),
  });
});

test('missing stop frame', async (t) => {
  const { bytes, frameAt } = await sample(false);
  await rejects(t, bytes.subarray(0, frameAt[5]!), MissingStopFrameError, {
    frameIndex: 5,
    byteOffset: frameAt[5]!,
    message: /without a stop frame/,
  });
  // Missing stop is a kind of truncation.
  await t.throwsAsync(parse(bytes.subarray(0, frameAt[5]!), 100), { instanceOf: TruncatedStreamError });
});

test('trailing garbage after the stop frame of an uncompressed stream', async (t) => {
  const { bytes, frameAt } = await sample(false);
  await rejects(t, Buffer.concat([bytes, Buffer.from('junk')]), TrailingDataError, {
    frameIndex: 6,
    byteOffset: frameAt[5]! + 40,
    message: /follow the stop frame/,
  });
});

test('data frames that do not add up to the metadata dataSize', async (t) => {
  // Our framer refuses to write such a stream, so patch the metadata (same JSON length).
  const { bytes: good, frameAt } = await sample(false);
  const bytes = patch(good, good.indexOf('"dataSize": 204000') + 17, '1');
  const stopAt = frameAt[5]!;
  await rejects(t, bytes, DataSizeMismatchError, {
    frameIndex: 5,
    byteOffset: stopAt,
    message: /data frames hold 204000 bytes, the metadata's dataSize is 204001/,
  });
});

test('a stream that does not start with a meta frame, or is empty', async (t) => {
  const { bytes, frameAt } = await sample(false);
  await rejects(t, bytes.subarray(frameAt[1]!), FrameSequenceError, {
    frameIndex: 0,
    byteOffset: 0,
    message: /starts with a data frame, not a meta frame/,
  });
  await t.throwsAsync(parse(Buffer.alloc(0), 1), { instanceOf: TruncatedStreamError, message: /stream is empty/ });
});

test('broken metadata JSON', async (t) => {
  const { bytes } = await sample(false);
  await rejects(t, patch(bytes, 40, '['), MetadataError, {
    frameIndex: 0,
    byteOffset: 40,
    message: /not valid UTF-8 JSON/,
  });
});

test('trailer that disagrees with the frames', async (t) => {
  const { bytes } = await sample(true);
  const text = bytes.toString('latin1');
  const trailerAt = text.lastIndexOf('stop 0000000000000000 0000000000000000\r\n') + 40;
  // Change the first entry's last digit, keeping the JSON's length (the comp frame stays right).
  const firstEnd = text.indexOf(',', trailerAt) - 1;
  const digit = text[firstEnd] === '9' ? '8' : String(Number(text[firstEnd]) + 1);
  const { payloadAt } = await sample(true);
  await rejects(t, patch(bytes, firstEnd, digit), TrailerMismatchError, {
    frameIndex: 1,
    byteOffset: payloadAt[1]! - 40,
    message: /trailer entry 0 says \d+ compressed bytes, the payload has \d+/,
  });
});

test('compressed stream without its trailer', async (t) => {
  const { bytes, frameAt } = await sample(true);
  await rejects(t, bytes.subarray(0, frameAt[5]! + 40), TrailerError, {
    frameIndex: 6,
    byteOffset: frameAt[5]! + 40,
    message: /without its compression trailer/,
  });
});

test('corrupted LZ4 block: checksum error naming frame and disk offset', async (t) => {
  const { bytes, payloadAt } = await sample(true);
  // Frame 3's payload is one LZ4 frame of 3000 random bytes, stored as a raw block:
  // the header, 4 block-size bytes, then the data. Flip a data byte.
  const header = parseLz4FrameDescriptor(bytes.subarray(payloadAt[3]!)).headerLength;
  t.is(bytes.readUInt32LE(payloadAt[3]! + header) >>> 31, 1, 'block stored uncompressed');
  const corrupt = Buffer.from(bytes);
  corrupt[payloadAt[3]! + header + 4 + 100]! ^= 0x40;
  await rejects(t, corrupt, Lz4DataError, {
    frameIndex: 3,
    byteOffset: undefined,
    message: /^frame 3 \(data frame at disk offset 8192\): cannot decompress LZ4 data: LZ4 block checksum mismatch/,
  });
});

test('bad LZ4 magic and header checksum', async (t) => {
  const { bytes, payloadAt } = await sample(true);
  await rejects(t, patch(bytes, payloadAt[4]! + 1, '\x23'), Lz4FormatError, {
    frameIndex: 4,
    byteOffset: payloadAt[4]! - 40,
    message: new RegExp(`bad LZ4 frame magic 0x184d2304.* LZ4 frame starting at byte ${payloadAt[4]!}`),
  });
  await rejects(t, patch(bytes, payloadAt[1]! + 6, Buffer.from([bytes[payloadAt[1]! + 6]! ^ 1])), Lz4FormatError, {
    frameIndex: 1,
    byteOffset: payloadAt[1]! - 40,
    message: /header checksum mismatch/,
  });
});

test('LZ4 frames followed by something other than another frame or \\r\\n', async (t) => {
  const { bytes, payloadAt } = await sample(true);
  const end = payloadAt[3]! + (bytes.indexOf('\r\ndata ', payloadAt[3]!) - payloadAt[3]!);
  await rejects(t, patch(bytes, end, 'XX'), MissingTerminatorError, {
    frameIndex: 3,
    byteOffset: payloadAt[3]! - 40,
    message: /neither the next LZ4 frame nor the \\r\\n/,
  });
});

// ---------------------------------------------------------------- Lz4Decompress on its own

async function decompress(chunks: Chunk[]): Promise<Chunk[]> {
  const out: Chunk[] = [];
  await pipeline(
    Readable.from(chunks),
    new Lz4Decompress(),
    new Writable({
      objectMode: true,
      write(chunk: Chunk, _encoding, callback) {
        out.push(chunk);
        callback();
      },
    }),
  );
  return out;
}

test('Lz4Decompress rejects pieces that do not fill their frame exactly', async (t) => {
  const lz4 = compressFrameSync(Buffer.alloc(500, 1), LZ4_FRAME_OPTIONS);
  const frame = { offset: 4096, length: 1000 };
  const short = decompress([{ offset: 4096, length: 1000, lz4, frame }]);
  await t.throwsAsync(short, { instanceOf: Lz4DataError, message: /^frame 1 \(data frame at disk offset 4096\): decompressed pieces hold 500 bytes, the data frame says 1000/ });
  const long = decompress([
    { offset: 4096, length: 1000, lz4, frame: { offset: 4096, length: 700 } },
    { offset: 4096, length: 1000, lz4, frame: { offset: 4096, length: 700 } },
  ]);
  await t.throwsAsync(long, { instanceOf: Lz4DataError, message: /more than the frame's 700 bytes/ });
  const next = decompress([
    { offset: 4096, length: 1000, lz4, frame },
    { offset: 8192, length: 10, zero: true },
  ]);
  await t.throwsAsync(next, { instanceOf: Lz4DataError, message: /hold 500 bytes/ });
});

// ---------------------------------------------------------------- SparseFramer input checks

async function frameRejects(t: ExecutionContext, chunks: Chunk[], metadata: StreamMetadata, message: RegExp) {
  await t.throwsAsync(frame(chunks, metadata), { instanceOf: FramerInputError, message });
}

test('SparseFramer rejects chunks it cannot frame', async (t) => {
  const plain = sampleMetadata(false, { dataSize: 2000 });
  const a = { offset: 0, length: 1000, data: image.subarray(0, 1000) };
  const b = { offset: 4096, length: 1000, data: image.subarray(4096, 5096) };
  await frameRejects(t, [b, a], plain, /chunk at disk offset 0: out of order or overlapping/);
  await frameRejects(t, [a, { ...b, offset: 999 }], plain, /out of order or overlapping/);
  await frameRejects(t, [a, { ...b, offset: VIRTUAL_SIZE - 999 }], plain, /past the virtual size/);
  await frameRejects(t, [a, { ...b, length: 999 }], plain, /chunk length 999 but 1000 bytes of data/);
  await frameRejects(t, [a], plain, /data chunks held 1000 bytes but metadata.dataSize says 2000/);
  await frameRejects(t, [a, { ...b, frame: { offset: 4096, length: 2000 } }], plain, /input ended inside the data frame at 4096/);
  await frameRejects(
    t,
    [{ ...b, frame: { offset: 4096, length: 2000 } }, { offset: 6000, length: 1000, data: image.subarray(0, 1000), frame: { offset: 4096, length: 2000 } }],
    plain,
    /expected the piece at 5096 of the data frame at 4096/,
  );
  const lz4 = compressFrameSync(a.data, LZ4_FRAME_OPTIONS);
  await frameRejects(t, [{ offset: 0, length: 1000, lz4 }], sampleMetadata(false, { dataSize: 1000 }), /compressed chunk for an uncompressed stream/);
  // A compressed frame shorter than maxRequestSize must be one LZ4 frame (virtnbdbackup reads it as one).
  const halves = [
    { offset: 0, length: 500, data: image.subarray(0, 500), frame: { offset: 0, length: 1000 } },
    { offset: 500, length: 500, data: image.subarray(500, 1000), frame: { offset: 0, length: 1000 } },
  ];
  await frameRejects(t, halves, sampleMetadata(true, { dataSize: 1000 }), /shorter than maxRequestSize 65536 came in 2 pieces/);
});
