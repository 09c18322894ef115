/**
 * NbdClient against real servers: qemu-nbd (qcow2 with data, holes, zero
 * clusters and a persistent dirty bitmap; TLS), nbdkit (memory plugin for
 * writes, error and delay filters for failures). The oracles are qemu-img's
 * raw conversion of the image and libnbd's nbdinfo.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { NbdClient, type BlockStatusExtent } from '../lib/nbd/client.js';
import { NbdConnectionError, NbdError, NbdHandshakeError, NbdUsageError } from '../lib/nbd/errors.js';
import { NbdPool } from '../lib/nbd/pool.js';
import { run } from './helpers/exec.js';
import { MiB, NbdScratch, nbdFixtureImage } from './helpers/nbd-servers.js';

const BITMAP_CONTEXT = 'qemu:dirty-bitmap:b0';

async function servedFixture(t: Parameters<typeof NbdScratch.create>[0], extra: string[] = []) {
  const s = await NbdScratch.create(t);
  const img = await nbdFixtureImage(s);
  const server = await s.qemuNbd(img.path, ['-t', '-e', '8', '-r', '-f', 'qcow2', '-x', 'disk', '-B', img.bitmap, ...extra]);
  return { s, img, server, uri: server.uri('disk') };
}

/** Merge adjacent extents with equal flags (servers may split where nothing changes). */
function merged(list: Array<{ offset: number; length: number; flags: number }>): BlockStatusExtent[] {
  const out: BlockStatusExtent[] = [];
  for (const e of list) {
    const last = out[out.length - 1];
    if (last && last.flags === e.flags && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

async function nbdinfoMap(uri: string, context: string): Promise<BlockStatusExtent[]> {
  const r = await run('nbdinfo', ['--json', `--map=${context}`, uri]);
  const entries = JSON.parse(r.stdout) as Array<{ offset: number; length: number; type: number }>;
  return merged(entries.map((e) => ({ offset: e.offset, length: e.length, flags: e.type })));
}

test('qemu-nbd: export properties after NBD_OPT_GO', async (t) => {
  const { uri, img } = await servedFixture(t);
  const c = await NbdClient.connect(uri, { metaContexts: ['base:allocation', BITMAP_CONTEXT] });
  t.teardown(() => c.destroy());
  t.is(c.state, 'transmission');
  t.is(c.exportName, 'disk');
  t.is(c.size, img.size);
  t.true(c.isReadOnly);
  t.false(c.canWrite);
  t.false(c.canTrim);
  t.true(c.canFlush);
  t.true(c.structuredReplies);
  t.false(c.tls);
  t.deepEqual([...c.metaContexts.keys()].sort(), ['base:allocation', BITMAP_CONTEXT]);
  t.deepEqual(c.blockSize, { minimum: 1, preferred: 4096, maximum: 32 * MiB });
  t.is(c.maxRequestSize, 32 * MiB);
  await c.disconnect();
  t.is(c.state, 'dead');
});

test('qemu-nbd: concurrent reads equal the image bytes', async (t) => {
  const { uri, img } = await servedFixture(t);
  const c = await NbdClient.connect(uri);
  t.teardown(() => c.destroy());
  // Every MiB at once (64 requests in flight), plus unaligned reads across data/hole boundaries.
  const ranges: Array<[number, number]> = [];
  for (let off = 0; off < img.size; off += MiB) ranges.push([off, MiB]);
  ranges.push([MiB - 4096, 8192 + 3], [4 * MiB + 511, 600 * 1024], [30 * MiB - 1, 3 * MiB + 2], [0, 32 * MiB], [32 * MiB, 32 * MiB]);
  const results = await Promise.all(ranges.map(([o, l]) => c.read(o, l)));
  ranges.forEach(([o, l], i) => t.true(results[i].equals(img.raw.subarray(o, o + l)), `read at ${o} length ${l}`));
  await c.disconnect();
});

test('qemu-nbd: simple replies when structured replies are not negotiated', async (t) => {
  const { uri, img } = await servedFixture(t);
  const c = await NbdClient.connect(uri, { structuredReplies: false });
  t.teardown(() => c.destroy());
  t.false(c.structuredReplies);
  const ranges: Array<[number, number]> = [[0, 2 * MiB], [8 * MiB, MiB], [20 * MiB, 13 * MiB], [63 * MiB, MiB]];
  const results = await Promise.all(ranges.map(([o, l]) => c.read(o, l)));
  ranges.forEach(([o, l], i) => t.true(results[i].equals(img.raw.subarray(o, o + l)), `read at ${o}`));
  await t.throwsAsync(c.blockStatus(0, MiB), { instanceOf: NbdUsageError });
  await c.disconnect();
});

test('qemu-nbd: block status equals nbdinfo --map for base:allocation and the dirty bitmap', async (t) => {
  const { uri, img } = await servedFixture(t);
  const c = await NbdClient.connect(uri, { metaContexts: ['base:allocation', BITMAP_CONTEXT] });
  t.teardown(() => c.destroy());
  const status = await c.blockStatusRange(0, img.size);
  t.deepEqual(merged(status.get('base:allocation') ?? []), await nbdinfoMap(uri, 'base:allocation'));
  const dirty = merged(status.get(BITMAP_CONTEXT) ?? []);
  t.deepEqual(dirty, await nbdinfoMap(uri, BITMAP_CONTEXT));
  t.deepEqual(
    dirty.filter((e) => e.flags & 1).map((e) => [e.offset / MiB, e.length / 1024]),
    [
      [1, 64],
      [4, 64],
      [20, 3072],
      [40, 128],
    ],
  );
  // A sub-range starting mid-extent is described exactly, clipped at both ends.
  const part = await c.blockStatusRange(MiB + 100, 4 * MiB);
  for (const list of part.values()) {
    t.is(list[0].offset, MiB + 100);
    const last = list[list.length - 1];
    t.is(last.offset + last.length, 5 * MiB + 100);
  }
  await c.disconnect();
});

test('handshake: an export that does not exist is named in the error', async (t) => {
  const { server } = await servedFixture(t);
  const err = await t.throwsAsync(NbdClient.connect(server.uri('nope')), { instanceOf: NbdHandshakeError });
  t.is(err?.reply, 'NBD_REP_ERR_UNKNOWN');
  t.regex(err?.message ?? '', /no export named 'nope'/);
});

test('handshake: a meta context the server does not offer is named, with what it offers', async (t) => {
  const { uri } = await servedFixture(t);
  const err = await t.throwsAsync(NbdClient.connect(uri, { metaContexts: ['base:allocation', 'qemu:dirty-bitmap:missing'] }), {
    instanceOf: NbdHandshakeError,
  });
  t.regex(err?.message ?? '', /does not offer meta context 'qemu:dirty-bitmap:missing' for export 'disk'/);
  t.regex(err?.message ?? '', /offered: .*qemu:dirty-bitmap:b0/);
  // The refused connection was closed politely; the server still serves others.
  const c = await NbdClient.connect(uri);
  await c.disconnect();
});

test('listing exports and meta contexts', async (t) => {
  const { uri } = await servedFixture(t);
  t.deepEqual(await NbdClient.listExports(uri), [{ name: 'disk', description: '' }]);
  t.deepEqual((await NbdClient.listMetaContexts(uri)).sort(), ['base:allocation', BITMAP_CONTEXT]);
  t.deepEqual(await NbdClient.listMetaContexts(uri, ['qemu:dirty-bitmap:']), [BITMAP_CONTEXT]);
});

test('usage errors are refused before anything is sent', async (t) => {
  const { uri, img } = await servedFixture(t);
  const c = await NbdClient.connect(uri);
  t.teardown(() => c.destroy());
  await t.throwsAsync(c.read(img.size - 10, 20), { instanceOf: NbdUsageError, message: /past the end/ });
  await t.throwsAsync(c.read(0, 33 * MiB), { instanceOf: NbdUsageError, message: /maximum request size/ });
  await t.throwsAsync(c.write(0, Buffer.alloc(512)), { instanceOf: NbdUsageError, message: /read-only/ });
  await t.throwsAsync(c.trim(0, 512), { instanceOf: NbdUsageError });
  t.is(c.state, 'transmission');
  t.is((await c.read(0, 1))[0], 0x11);
  await c.disconnect();
  await t.throwsAsync(c.read(0, 1), { instanceOf: NbdConnectionError, message: /connection is dead/ });
});

test('nbdkit memory: writes, zeroes, trim and flush read back as written', async (t) => {
  const s = await NbdScratch.create(t);
  const server = await s.nbdkit(['memory', '64M']);
  const c = await NbdClient.connect(server.uri(), { metaContexts: ['base:allocation'] });
  t.teardown(() => c.destroy());
  t.true(c.canWrite && c.canFlush && c.canTrim && c.canWriteZeroes && c.canFastZero && c.canFua && c.canMultiConn);
  const data = randomBytes(16 * MiB);
  // 64 writes of 256 KiB in flight at once.
  await Promise.all(Array.from({ length: 64 }, (_, i) => c.write(8 * MiB + i * 256 * 1024, data.subarray(i * 256 * 1024, (i + 1) * 256 * 1024))));
  await c.write(0, Buffer.alloc(MiB, 0x5a), { fua: true });
  await c.writeZeroes(8 * MiB + 4096, 8192, { noHole: true });
  await c.writeZeroes(12 * MiB, MiB, { fastZero: true });
  await c.trim(20 * MiB, MiB);
  await c.flush();
  const expect = Buffer.from(data);
  expect.fill(0, 4096, 4096 + 8192);
  expect.fill(0, 4 * MiB, 5 * MiB);
  t.true((await c.read(0, MiB)).equals(Buffer.alloc(MiB, 0x5a)));
  t.true((await c.read(8 * MiB, 12 * MiB)).equals(expect.subarray(0, 12 * MiB)));
  t.true((await c.read(21 * MiB, 3 * MiB)).equals(data.subarray(13 * MiB)));
  // Block status sees the untouched tail as a zero hole.
  const tail = (await c.blockStatus(40 * MiB, MiB)).get('base:allocation') ?? [];
  t.deepEqual(tail, [{ offset: 40 * MiB, length: MiB, flags: 3 }]);
  await c.disconnect();
});

test('nbdkit error filter: an EIO read becomes NbdError EIO naming command and offset', async (t) => {
  const s = await NbdScratch.create(t);
  const server = await s.nbdkit(['--filter=error', 'memory', '16M', 'error=EIO', 'error-pread-rate=100%']);
  const c = await NbdClient.connect(server.uri());
  t.teardown(() => c.destroy());
  const err = await t.throwsAsync(c.read(3 * MiB, 4096), { instanceOf: NbdError });
  t.is(err?.code, 'EIO');
  t.is(err?.errno, 5);
  t.is(err?.command, 'NBD_CMD_READ');
  t.is(err?.offset, 3 * MiB);
  t.regex(err?.message ?? '', /NBD_CMD_READ failed with EIO at offset 3145728/);
  // A command error leaves the connection usable.
  await c.write(0, Buffer.alloc(4096, 1));
  await c.flush();
  t.is(c.state, 'transmission');
  await c.disconnect();
});

test('nbdkit error filter: ENOSPC on write', async (t) => {
  const s = await NbdScratch.create(t);
  const server = await s.nbdkit(['--filter=error', 'memory', '16M', 'error=ENOSPC', 'error-pwrite-rate=100%']);
  const c = await NbdClient.connect(server.uri());
  t.teardown(() => c.destroy());
  const err = await t.throwsAsync(c.write(MiB, Buffer.alloc(8192)), { instanceOf: NbdError });
  t.is(err?.code, 'ENOSPC');
  t.is(err?.command, 'NBD_CMD_WRITE');
  await c.disconnect();
});

test('a lost connection rejects every request in flight at once', async (t) => {
  const s = await NbdScratch.create(t);
  // Reads take 60 s, so they are surely in flight when the server dies.
  const server = await s.nbdkit(['--filter=delay', 'memory', '16M', 'delay-read=60']);
  const c = await NbdClient.connect(server.uri());
  t.teardown(() => c.destroy());
  let closedWith: Error | undefined;
  c.onClose((err) => (closedWith = err));
  const reads = Array.from({ length: 6 }, (_, i) => c.read(i * MiB, 4096));
  const settled = Promise.allSettled(reads);
  t.is(c.inFlight, 6);
  await server.kill('SIGKILL');
  const results = await settled;
  for (const r of results) {
    t.is(r.status, 'rejected');
    if (r.status === 'rejected') {
      t.true(r.reason instanceof NbdConnectionError, String(r.reason));
      t.regex(String(r.reason.message), /closed/);
    }
  }
  t.is(c.state, 'dead');
  t.true(closedWith instanceof NbdConnectionError);
  await t.throwsAsync(c.read(0, 512), { instanceOf: NbdConnectionError });
});

test('disconnect waits for requests in flight', async (t) => {
  const s = await NbdScratch.create(t);
  const server = await s.nbdkit(['memory', '16M']);
  const c = await NbdClient.connect(server.uri());
  t.teardown(() => c.destroy());
  const closed: Array<Error | undefined> = [];
  c.onClose((err) => closed.push(err));
  const writes = Array.from({ length: 16 }, (_, i) => c.write(i * MiB, Buffer.alloc(MiB, i + 1)));
  const done = c.disconnect();
  t.is(c.state, 'closing');
  await t.throwsAsync(c.read(0, 1), { instanceOf: NbdConnectionError, message: /closing/ });
  await Promise.all(writes);
  await done;
  t.is(c.state, 'dead');
  t.deepEqual(closed, [undefined]);
  // The writes reached the server before NBD_CMD_DISC: a new connection reads them.
  const again = await NbdClient.connect(server.uri());
  t.is((await again.read(15 * MiB, 1))[0], 16);
  await again.disconnect();
});

test('TLS: nbds+unix with the certificate directory reads the image', async (t) => {
  const s = await NbdScratch.create(t);
  const certs = await s.tlsCertificates();
  const img = await nbdFixtureImage(s);
  const server = await s.qemuNbd(img.path, [
    '-t', '-e', '4', '-r', '-f', 'qcow2', '-x', 'disk',
    '--object', `tls-creds-x509,id=tls0,dir=${certs.server},endpoint=server`, '--tls-creds', 'tls0',
  ]);
  const tlsUri = `nbds+unix:///disk?socket=${server.socket}&tls-certificates=${certs.client}`;
  const c = await NbdClient.connect(tlsUri, { metaContexts: ['base:allocation'] });
  t.teardown(() => c.destroy());
  t.true(c.tls);
  t.true((await c.read(20 * MiB, 4 * MiB)).equals(img.raw.subarray(20 * MiB, 24 * MiB)));
  t.true((await c.blockStatusRange(0, img.size)).get('base:allocation')!.length > 1);
  await c.disconnect();

  // Without the CA (the system store does not know it): the certificate problem is named.
  const noCa = await t.throwsAsync(NbdClient.connect(`nbds+unix:///disk?socket=${server.socket}`), { instanceOf: NbdHandshakeError });
  t.regex(noCa?.message ?? '', /TLS handshake .*failed: .*certificate/i);
  // With an unrelated CA.
  const otherCa = await t.throwsAsync(NbdClient.connect(`nbds+unix:///disk?socket=${server.socket}`, {
    tls: { ca: await readFile(`${certs.otherCa}/ca-cert.pem`) },
  }), {
    instanceOf: NbdHandshakeError,
  });
  t.regex(otherCa?.message ?? '', /certificate/i);
  // A plain client is told the server requires TLS.
  const plain = await t.throwsAsync(NbdClient.connect(server.uri('disk')), { instanceOf: NbdHandshakeError });
  t.is(plain?.reply, 'NBD_REP_ERR_TLS_REQD');
  t.regex(plain?.message ?? '', /requires TLS/);
  // The server verifies clients: without a client certificate the handshake is refused with a hint.
  const noClientCert = await t.throwsAsync(NbdClient.connect(`nbds+unix:///disk?socket=${server.socket}&tls-certificates=${certs.server}`), {
    instanceOf: NbdHandshakeError,
  });
  t.regex(noClientCert?.message ?? '', /client-cert\.pem/);
});

test('TLS requested but the server does not offer it', async (t) => {
  const s = await NbdScratch.create(t);
  const server = await s.nbdkit(['memory', '1M']);
  const err = await t.throwsAsync(NbdClient.connect(`nbds+unix:///?socket=${server.socket}`), { instanceOf: NbdHandshakeError });
  t.regex(err?.message ?? '', /refused TLS/);
  t.is(err?.option, 'NBD_OPT_STARTTLS');
});

test('NbdPool: requests spread over the connections when the server sets CAN_MULTI_CONN', async (t) => {
  const s = await NbdScratch.create(t);
  const server = await s.nbdkit(['memory', '16M']);
  const pool = await NbdPool.connect(server.uri(), { connections: 4 });
  t.teardown(() => pool.destroy());
  t.is(pool.clients.length, 4);
  const data = randomBytes(8 * MiB);
  const writes = Array.from({ length: 8 }, (_, i) => pool.write(i * MiB, data.subarray(i * MiB, (i + 1) * MiB)));
  t.deepEqual(
    pool.clients.map((c) => c.inFlight),
    [2, 2, 2, 2],
  );
  await Promise.all(writes);
  await pool.flush();
  // Every connection sees what the others wrote.
  for (const c of pool.clients) t.true((await c.read(0, 8 * MiB)).equals(data));
  await pool.disconnect();
  t.true(pool.clients.every((c) => c.state === 'dead'));
});

test('NbdPool: one connection when the server does not allow multi-conn', async (t) => {
  const s = await NbdScratch.create(t);
  const server = await s.nbdkit(['--filter=multi-conn', 'memory', '1M', 'multi-conn-mode=disable']);
  const pool = await NbdPool.connect(server.uri(), { connections: 4 });
  t.teardown(() => pool.destroy());
  t.false(pool.primary.canMultiConn);
  t.is(pool.clients.length, 1);
  await pool.write(0, Buffer.alloc(4096, 7));
  await pool.flush();
  t.true((await pool.read(0, 4096)).equals(Buffer.alloc(4096, 7)));
  await pool.disconnect();
});

test('TCP: nbd:// and nbds:// with host name checks', async (t) => {
  const s = await NbdScratch.create(t);
  const certs = await s.tlsCertificates();
  const img = await nbdFixtureImage(s);
  const plain = await s.qemuNbdTcp(img.path, ['-t', '-e', '4', '-r', '-f', 'qcow2', '-x', 'disk']);
  const c = await NbdClient.connect(`nbd://127.0.0.1:${plain.port}/disk`);
  t.true((await c.read(30 * MiB, MiB)).equals(img.raw.subarray(30 * MiB, 31 * MiB)));
  await c.disconnect();

  const tls = await s.qemuNbdTcp(img.path, [
    '-t', '-e', '4', '-r', '-f', 'qcow2', '-x', 'disk',
    '--object', `tls-creds-x509,id=tls0,dir=${certs.server},endpoint=server`, '--tls-creds', 'tls0',
  ]);
  for (const host of ['localhost', '127.0.0.1']) {
    const ct = await NbdClient.connect(`nbds://${host}:${tls.port}/disk?tls-certificates=${certs.client}`);
    t.true(ct.tls);
    t.true((await ct.read(0, MiB)).equals(img.raw.subarray(0, MiB)));
    await ct.disconnect();
  }
  const wrongName = await t.throwsAsync(
    NbdClient.connect(`nbds://127.0.0.1:${tls.port}/disk?tls-certificates=${certs.client}&tls-hostname=backup.example.org`),
    { instanceOf: NbdHandshakeError },
  );
  t.regex(wrongName?.message ?? '', /backup\.example\.org/);
});
