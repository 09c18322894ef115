/**
 * Buffer reuse on the read path, against qemu-nbd: NbdClient.read() into a
 * caller's buffer, and NbdReader.release(), which hands a chunk's buffer
 * back for later reads. What matters to a user: reused buffers still carry
 * the right bytes, and a chunk that was not given back is never overwritten.
 */
import test from 'ava';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Chunk } from '../lib/chunk.js';
import { NbdClient } from '../lib/nbd/client.js';
import { NbdUsageError } from '../lib/nbd/errors.js';
import { ExtentSource } from '../streams/ExtentSource.js';
import { NbdReader } from '../streams/NbdReader.js';
import { MiB, NbdScratch, nbdFixtureImage } from './helpers/nbd-servers.js';

async function source(t: Parameters<typeof NbdScratch.create>[0]) {
  const s = await NbdScratch.create(t);
  const img = await nbdFixtureImage(s);
  const server = await s.qemuNbd(img.path, ['-t', '-r', '-f', 'qcow2', '-x', 'disk']);
  const client = await NbdClient.connect(server.uri('disk'), { metaContexts: ['base:allocation'] });
  t.teardown(() => client.destroy());
  return { img, client };
}

test('NbdClient.read into a caller buffer returns a view of it holding the image bytes', async (t) => {
  const { img, client } = await source(t);
  const into = Buffer.alloc(MiB, 0xee);
  const got = await client.read(30 * MiB + 4096, 512 * 1024, into);
  t.is(got.buffer, into.buffer);
  t.is(got.length, 512 * 1024);
  t.true(got.equals(img.raw.subarray(30 * MiB + 4096, 30 * MiB + 4096 + 512 * 1024)));
  // Reused for a range with a hole: the hole's zeroes overwrite the old bytes.
  const again = await client.read(6 * MiB, 64 * 1024, into);
  t.true(again.equals(img.raw.subarray(6 * MiB, 6 * MiB + 64 * 1024)));
  await t.throwsAsync(client.read(0, 2 * MiB, into), { instanceOf: NbdUsageError, message: /into a buffer of 1048576 bytes/ });
});

test('NbdReader.release: given-back buffers are reused; chunks kept are never overwritten', async (t) => {
  const { img, client } = await source(t);
  const reader = new NbdReader(client, { requestSize: 128 * 1024, inFlight: 3 });
  const kept: Chunk[] = [];
  const releasedMemory = new Set<ArrayBufferLike>();
  let released = 0;
  let n = 0;
  const sink = new Writable({
    objectMode: true,
    highWaterMark: 1,
    write(c: Chunk, _enc, cb) {
      if (c.data) {
        t.true(c.data.equals(img.raw.subarray(c.offset, c.offset + c.length)), `chunk at ${c.offset}`);
        for (const k of kept) t.not(k.data?.buffer, c.data.buffer, 'a kept chunk shares memory with a later one');
        // Keep a few chunks, spread out; give the others back (twice, and a foreign buffer too: both ignored).
        if (n++ % 10 === 0) kept.push(c);
        else {
          reader.release(c.data);
          reader.release(c.data);
          reader.release(Buffer.alloc(16));
          releasedMemory.add(c.data.buffer);
          released++;
        }
      }
      cb();
    },
  });
  await pipeline(new ExtentSource(client), reader, sink);
  t.true(kept.length >= 5);
  for (const k of kept) t.true(k.data?.equals(img.raw.subarray(k.offset, k.offset + k.length)), `kept chunk at ${k.offset} intact`);
  // ~8 MiB of data in 128 KiB reads: with reuse, a few buffers (reads in
  // flight, chunks queued, and one new one per kept chunk) serve them all.
  t.true(released > 50);
  t.true(releasedMemory.size <= 3 + 2 + 2 + kept.length, `${releasedMemory.size} buffers for ${released} released chunks`);
});
