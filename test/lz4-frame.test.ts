import test from 'ava';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { compressFrameSync, decompressFrame, decompressFrameSync } from 'lz4-napi';
import { xxh32 } from '../lib/format/xxh32.js';
import { Lz4FrameViolation, Lz4FrameWalker, parseLz4FrameDescriptor } from '../lib/format/lz4Frame.js';
import { LZ4_FRAME_OPTIONS } from '../streams/Lz4Compress.js';

/** Run python3 with the C LZ4 library (python3-lz4, what virtnbdbackup uses) on stdin bytes. */
function python(script: string, input: Buffer): Buffer {
  return execFileSync('/usr/bin/python3', ['-c', 'import sys, lz4.frame\n' + script], {
    input,
    maxBuffer: 256 * 1024 * 1024,
  });
}

/** Frames as virtnbdbackup makes them: lz4.frame.compress(data, content_checksum=True, block_checksum=True, level). */
function pythonCompress(data: Buffer, extra = ''): Buffer {
  return python(
    `sys.stdout.buffer.write(lz4.frame.compress(sys.stdin.buffer.read(), content_checksum=True, block_checksum=True, compression_level=2${extra}))`,
    data,
  );
}

/** Sample data: some compressible, some random. */
function sample(size: number): Buffer {
  const data = Buffer.alloc(size);
  randomBytes(Math.floor(size / 2)).copy(data);
  data.fill('virtnbd text ', Math.floor(size / 2));
  return data;
}

/** Feed `bytes` to a fresh walker in slices chosen by `next`; returns bytes consumed when done. */
function walk(bytes: Buffer, next: () => number): { consumed: number; walker: Lz4FrameWalker } {
  const walker = new Lz4FrameWalker();
  let at = 0;
  let consumed = 0;
  while (!walker.done && at < bytes.length) {
    const end = Math.min(bytes.length, at + next());
    const used = walker.feed(bytes, at, end);
    consumed += used;
    if (used < end - at) break;
    at = end;
  }
  return { consumed, walker };
}

test('xxh32 matches the reference test vectors', (t) => {
  t.is(xxh32(Buffer.alloc(0)), 0x02cc5d05);
  t.is(xxh32(Buffer.from('a')), 0x550d7456);
  t.is(xxh32(Buffer.from('abc')), 0x32d153ff);
  t.is(xxh32(Buffer.from('Nobody inspects the spammish repetition')), 0xe2293b2f);
});

test('xxh32 equals the content checksum the C library writes, for every length up to 100 and some large', (t) => {
  const lengths = [...Array.from({ length: 101 }, (_, i) => i), 1000, 65536, 65537, 1234567];
  const data = sample(1234567);
  // One python run frames every prefix and reports the content checksum field of each frame.
  const script =
    'import json\n' +
    'data = sys.stdin.buffer.read()\n' +
    `lengths = ${JSON.stringify(lengths)}\n` +
    'sums = [int.from_bytes(lz4.frame.compress(data[:n], content_checksum=True)[-4:], "little") for n in lengths]\n' +
    'print(json.dumps(sums))\n';
  const sums = JSON.parse(python(script, data).toString()) as number[];
  lengths.forEach((length, i) => t.is(xxh32(data.subarray(0, length)), sums[i], `length ${length}`));
});

test('the walker finds the exact end of C-library frames however the bytes are sliced', (t) => {
  const variants = ['', ', block_size=lz4.frame.BLOCKSIZE_MAX4MB', ', block_linked=False', ', store_size=False', ', block_size=lz4.frame.BLOCKSIZE_MAX256KB'];
  const garbage = Buffer.from('\r\ndata 0000');
  for (const extra of variants) {
    for (const size of [0, 1, 70000, 300000]) {
      const frame = pythonCompress(sample(size), extra);
      const stream = Buffer.concat([frame, garbage]);
      for (const slicer of [() => 1, () => 1 + Math.floor(Math.random() * 7000), () => stream.length]) {
        const { consumed, walker } = walk(stream, slicer);
        t.true(walker.done, `${extra} ${size}`);
        t.is(consumed, frame.length, `${extra} ${size}`);
        t.is(walker.bytesSeen, frame.length);
      }
      const descriptor = parseLz4FrameDescriptor(frame);
      t.true(descriptor.blockChecksum);
      t.true(descriptor.contentChecksum);
      // The C library leaves the content size out when it is 0.
      t.is(descriptor.contentSize, extra.includes('store_size=False') || size === 0 ? undefined : size);
    }
  }
});

test('the walker finds the exact end of frames lz4-napi makes', (t) => {
  for (const size of [0, 1, 4096, 5 * 1024 * 1024]) {
    const frame = compressFrameSync(sample(size), LZ4_FRAME_OPTIONS);
    const stream = Buffer.concat([frame, frame]);
    const { consumed, walker } = walk(stream, () => 1 + Math.floor(Math.random() * 100000));
    t.true(walker.done);
    t.is(consumed, frame.length);
    const descriptor = walker.descriptor!;
    t.true(descriptor.blockChecksum && descriptor.contentChecksum);
    t.is(descriptor.contentSize, undefined);
  }
});

test('lz4-napi decompresses frames the C library makes', async (t) => {
  for (const extra of ['', ', block_linked=False', ', block_size=lz4.frame.BLOCKSIZE_MAX4MB']) {
    const data = sample(3 * 1024 * 1024 + 17);
    t.true((await decompressFrame(pythonCompress(data, extra))).equals(data));
  }
});

test('python lz4 decompresses frames lz4-napi makes', (t) => {
  const data = sample(5 * 1024 * 1024 + 3);
  const ours = compressFrameSync(data, LZ4_FRAME_OPTIONS);
  const back = python('sys.stdout.buffer.write(lz4.frame.decompress(sys.stdin.buffer.read()))', ours);
  t.true(back.equals(data));
  const info = python(
    'i = lz4.frame.get_frame_info(sys.stdin.buffer.read()); print(i["content_checksum"], i["block_checksum"])',
    ours,
  );
  t.is(info.toString().trim(), 'True True');
});

test('lz4-napi, another reader of our frames, verifies block and content checksums', (t) => {
  const data = Buffer.alloc(100000, 'abcdefgh');
  for (const frame of [compressFrameSync(data, LZ4_FRAME_OPTIONS), pythonCompress(data)]) {
    const header = parseLz4FrameDescriptor(frame).headerLength;
    const blockSize = frame.readUInt32LE(header) & 0x7fffffff;
    const badChecksum = Buffer.from(frame);
    badChecksum[header + 4 + blockSize] ^= 0x01;
    t.throws(() => decompressFrameSync(badChecksum), { message: /ChecksumError/ });
    const badContent = Buffer.from(frame);
    badContent[badContent.length - 1] ^= 0x01;
    t.throws(() => decompressFrameSync(badContent), { message: /ContentChecksumError/ });
  }
});

test('bad magic is found after four bytes', (t) => {
  const walker = new Lz4FrameWalker();
  const err = t.throws(() => walker.feed(Buffer.from('data 0000')), { instanceOf: Lz4FrameViolation });
  t.regex(err?.message ?? '', /bad LZ4 frame magic 0x61746164/);
  t.is(err?.offsetInFrame, 0);
  const legacy = Buffer.from([0x02, 0x21, 0x4c, 0x18, 0, 0, 0, 0]);
  t.throws(() => new Lz4FrameWalker().feed(legacy), { message: /legacy/ });
});

test('a wrong header checksum is rejected', (t) => {
  const frame = Buffer.from(compressFrameSync(Buffer.from('hello'), LZ4_FRAME_OPTIONS));
  frame[6] ^= 0xff;
  const err = t.throws(() => new Lz4FrameWalker().feed(frame), { instanceOf: Lz4FrameViolation });
  t.regex(err?.message ?? '', /header checksum mismatch/);
  t.is(err?.offsetInFrame, 6);
});

test('reserved bits and oversized blocks are rejected', (t) => {
  const frame = compressFrameSync(Buffer.from('hello world'), LZ4_FRAME_OPTIONS);
  const badFlg = Buffer.from(frame);
  badFlg[4] |= 0b10;
  t.throws(() => new Lz4FrameWalker().feed(badFlg), { message: /reserved bit/ });
  const python64k = pythonCompress(Buffer.from('x'.repeat(10)));
  const header = parseLz4FrameDescriptor(python64k).headerLength;
  const huge = Buffer.from(python64k);
  huge.writeUInt32LE(65537, header);
  t.throws(() => new Lz4FrameWalker().feed(huge), { message: /more than the frame's maximum block size 65536/ });
});
