/**
 * Read buffers lent to the NBD server and handed back once written
 * (lib/map/readBuffers.ts, releaseRead in lib/nbd/server-session.ts): a
 * buffer is reused, never while its reply may still be on its way (nbdcopy
 * over 4 connections reads every byte right), and the lent bytes stay
 * bounded by the server's in-flight limit.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Chunk } from '../lib/chunk.js';
import type { Export } from '../lib/nbd/export.js';
import { NbdServer } from '../lib/nbd/server.js';
import { ReadBuffers } from '../lib/map/readBuffers.js';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;

test('ReadBuffers: a released buffer is reused, a double or foreign release does nothing, spares are bounded', (t) => {
  const buffers = new ReadBuffers(64 * KiB);
  const a = buffers.lend(10 * KiB);
  t.is(a.length, 10 * KiB);
  buffers.release(a);
  buffers.release(a);
  buffers.release(Buffer.alloc(16 * KiB));
  const b = buffers.lend(12 * KiB);
  t.is(b.buffer, a.buffer, 'same memory, another length');
  const c = buffers.lend(12 * KiB);
  t.not(c.buffer, b.buffer, 'a lent buffer is not lent twice');
  const many = Array.from({ length: 8 }, () => buffers.lend(16 * KiB));
  for (const m of many) buffers.release(m);
  t.is(buffers.allocated, 10);
  const again = Array.from({ length: 8 }, () => buffers.lend(16 * KiB));
  t.is(buffers.allocated, 14, 'only 64 KiB (4 buffers) of spares were kept');
  for (const m of again) buffers.release(m);
});

/** A disk whose every byte says where it is; reads lend, and poison what is handed back. */
class PatternExport implements Export {
  readonly canMultiConn = true;
  readonly buffers = new ReadBuffers(2 * MiB);
  lentBytes = 0;
  peakLentBytes = 0;
  constructor(readonly size: number) {}

  async read(offset: number, length: number): Promise<Chunk[]> {
    const buf = this.buffers.lend(length);
    for (let i = 0; i < length; i++) buf[i] = (offset + i) % 251;
    this.lentBytes += length;
    this.peakLentBytes = Math.max(this.peakLentBytes, this.lentBytes);
    // Give the event loop a turn so replies overlap.
    await new Promise((r) => setImmediate(r));
    return [{ offset, length, data: buf }];
  }

  releaseRead(result: Buffer | Chunk[]): void {
    const data = Array.isArray(result) ? result[0]!.data! : result;
    this.lentBytes -= data.length;
    // Handed back too early, the client would read these bytes.
    data.fill(0xee);
    this.buffers.release(data);
  }
}

test('the server hands read buffers back only once written: nbdcopy reads every byte right, lent bytes stay bounded', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'virtnbd-readbuf-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const size = 64 * MiB;
  const exp = new PatternExport(size);
  const server = new NbdServer({ exports: { disk: exp }, maxInFlightBytes: 2 * MiB });
  const sock = join(dir, 'nbd.sock');
  await server.listen({ socketPath: sock });
  t.teardown(() => server.close());
  const out = join(dir, 'out.raw');
  await run('nbdcopy', ['--connections=4', '--request-size=262144', `nbd+unix:///disk?socket=${sock}`, out]);
  const bytes = await readFile(out);
  t.is(bytes.length, size);
  let bad = -1;
  for (let i = 0; i < size; i++) {
    if (bytes[i] !== i % 251) {
      bad = i;
      break;
    }
  }
  t.is(bad, -1, 'no byte was overwritten before it was sent');
  t.is(exp.lentBytes, 0, 'every read was handed back');
  // 4 connections x 2 MiB in flight (a request may start just under the limit).
  t.true(exp.peakLentBytes <= 4 * (2 * MiB + 256 * KiB), `peak lent ${exp.peakLentBytes}`);
  t.true(exp.buffers.allocated <= 48, `${exp.buffers.allocated} buffers allocated for 256 reads`);
});
