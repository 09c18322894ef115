/**
 * LZ4 pieces served a span at a time (lib/map/lz4Spans.ts) and checked
 * whole before any span is served (lib/map/lz4Verify.ts,
 * lz4BlockCheck.ts), on frames python-lz4 writes as Debian's
 * virtnbdbackup does (linked 64 KiB blocks, block and content checksums)
 * and without block checksums: spans decode to the original bytes, and a
 * flipped byte anywhere fails the whole-piece check.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Lz4DecodeError } from '../lib/lz4/errors.js';
import { Lz4Spans } from '../lib/map/lz4Spans.js';
import { verifyLz4Piece } from '../lib/map/lz4Verify.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** 3 MiB that compress somewhat: runs of text and of noise. */
function sample(): Buffer {
  const out = Buffer.alloc(3 * MiB);
  let x = 12345;
  for (let i = 0; i < out.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = (i >> 12) % 3 === 0 ? x >>> 24 : 97 + ((i * 7) % 23);
  }
  return out;
}

async function compress(dir: string, data: Buffer, blockChecksum: boolean): Promise<string> {
  const raw = join(dir, 'raw');
  const file = join(dir, `frame-${blockChecksum}`);
  await writeFile(raw, data);
  const py = `import lz4.frame,sys
d=open(sys.argv[1],'rb').read()
open(sys.argv[2],'wb').write(lz4.frame.compress(d,block_size=lz4.frame.BLOCKSIZE_MAX64KB,block_linked=True,content_checksum=True,block_checksum=${blockChecksum ? 'True' : 'False'}))`;
  await run('/usr/bin/python3', ['-c', py, raw, file]);
  return file;
}

async function spansOf(file: string, limit: number): Promise<{ spans: Lz4Spans; close: () => Promise<void> }> {
  const handle = await open(file, 'r');
  const size = (await handle.stat()).size;
  const readAt = async (buf: Buffer, position: number): Promise<void> => {
    const { bytesRead } = await handle.read(buf, 0, buf.length, position);
    if (bytesRead !== buf.length) throw new Error('short read');
  };
  return { spans: new Lz4Spans(readAt, 0, size, limit), close: () => handle.close() };
}

for (const blockChecksum of [true, false]) {
  test(`python-lz4 linked frame, block checksums ${blockChecksum}: spans decode right; a flipped byte fails the whole-piece check`, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'lz4spans-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const data = sample();
    const file = await compress(dir, data, blockChecksum);

    const good = await spansOf(file, data.length);
    await verifyLz4Piece(good.spans, false);
    const out = Buffer.alloc(await good.spans.capacity());
    // Read spans out of order: the second one first, then from the start.
    const parts = new Map<number, Buffer>();
    await good.spans.decode(0, out);
    for (const k of [1, 0, 2, 1]) {
      if (k >= good.spans.marks.length) continue;
      const n = await good.spans.decode(k, out);
      parts.set(k, Buffer.from(out.subarray(0, n)));
    }
    for (let k = 0; good.spans.total === undefined; k++) parts.set(k, Buffer.from(out.subarray(0, await good.spans.decode(k, out))));
    const whole = Buffer.concat([...parts.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]));
    t.is(good.spans.total, data.length);
    t.true(whole.equals(data), 'the spans are the original bytes');
    await good.close();

    // One byte in the middle of the frame, far from the spans a reader of the start would decode.
    const bytes = await readFile(file);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x5a;
    await writeFile(file, bytes);
    const bad = await spansOf(file, data.length);
    await t.throwsAsync(verifyLz4Piece(bad.spans, false), { instanceOf: Lz4DecodeError });
    await t.throwsAsync(verifyLz4Piece(bad.spans, false), { instanceOf: Lz4DecodeError }, 'and again');
    await bad.close();
  });
}
