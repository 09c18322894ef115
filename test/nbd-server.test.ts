/**
 * NbdServer against real NBD clients: libnbd (nbdinfo, nbdcopy, and its
 * Python binding for the corners the tools do not reach), QEMU (qemu-img,
 * qemu-io) and, for the few protocol corners no client produces on demand
 * (unknown options, a client that stops reading), a raw socket built from
 * the codecs of lib/nbd/protocol.ts.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile, truncate, open as openFile } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Chunk } from '../lib/chunk.js';
import { ExportError, type Export } from '../lib/nbd/export.js';
import { FileExport } from '../lib/nbd/fileExport.js';
import { MemoryExport } from '../lib/nbd/memoryExport.js';
import { NbdServer, type NbdServerOptions } from '../lib/nbd/server.js';
import { SocketPathError } from '../lib/nbd/server-listen.js';
import { SocketReader } from '../lib/nbd/server-reader.js';
import {
  NBD_CMD_FLAG_DF,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  OPTION_REPLY_HEADER_SIZE,
  SERVER_GREETING_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE,
  decodeOptionReplyHeader,
  decodeReplyHeader,
  decodeServerGreeting,
  decodeServerReply,
  encodeClientFlags,
  encodeGoRequest,
  encodeOptionRequest,
  encodeRequestHeader,
} from '../lib/nbd/protocol.js';
import { run } from './helpers/exec.js';

const MiB = 1024 * 1024;
/** The system Python carries libnbd's binding (python3-libnbd), whatever python3 is first on PATH. */
const PYTHON = '/usr/bin/python3';

// ---- fixtures ---------------------------------------------------------------

interface Served {
  server: NbdServer;
  dir: string;
  socketPath: string;
  uri(name: string): string;
  logs: string[];
}

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'virtnbd-nbdsrv-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A server on a unix socket in a fresh temp dir, closed when the test ends. */
async function serve(t: ExecutionContext, options: NbdServerOptions, dir?: string): Promise<Served> {
  dir ??= await tempDir(t);
  const logs: string[] = [];
  const server = new NbdServer({ logger: (level, msg) => logs.push(`${level}: ${msg}`), ...options });
  const socketPath = join(dir, 'nbd.sock');
  await server.listen({ socketPath });
  t.teardown(() => server.close());
  return { server, dir, socketPath, logs, uri: (name) => server.uri(name) };
}

/** A disk image with data, text-like data and holes, as bytes. */
function sampleDisk(size: number): Buffer {
  const disk = Buffer.alloc(size);
  randomBytes(3 * MiB).copy(disk, 1 * MiB);
  disk.fill('virtnbd ', 6 * MiB, 6 * MiB + 300 * 1024);
  randomBytes(4096).copy(disk, size - 4096);
  return disk;
}

/** Run Python with libnbd's binding; the script prints one JSON value on its last line. */
async function libnbd<T>(script: string, ...args: string[]): Promise<T> {
  const r = await run(PYTHON, ['-c', `import nbd, sys, json\n${script}`, ...args]);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]) as T;
}

/** Resolve-later promise, for exports whose calls the test releases. */
function gate(): { promise: Promise<void>; open(): void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

async function until(what: string, cond: () => boolean | Promise<boolean>, tries = 500): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`gave up waiting for ${what}`);
}

// ---- a raw client for protocol corners ----------------------------------------

interface RawClient {
  socket: net.Socket;
  reader: SocketReader;
}

async function rawConnect(socketPath: string): Promise<RawClient> {
  const socket = net.connect(socketPath);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const reader = new SocketReader(socket);
  decodeServerGreeting(await reader.read(SERVER_GREETING_SIZE, 'greeting'));
  socket.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
  return { socket, reader };
}

async function optionReply(c: RawClient): Promise<{ option: number; reply: number; data: Buffer }> {
  const h = decodeOptionReplyHeader(await c.reader.read(OPTION_REPLY_HEADER_SIZE, 'option reply'));
  return { option: h.option, reply: h.reply, data: await c.reader.read(h.length, 'option reply data') };
}

/** Handshake up to transmission on `name` with structured replies. */
async function rawGo(socketPath: string, name: string): Promise<RawClient> {
  const c = await rawConnect(socketPath);
  c.socket.write(encodeOptionRequest(NBD_OPT_STRUCTURED_REPLY));
  if ((await optionReply(c)).reply !== NBD_REP_ACK) throw new Error('structured replies refused');
  c.socket.write(encodeOptionRequest(NBD_OPT_GO, encodeGoRequest({ name, infos: [] })));
  for (;;) {
    const r = await optionReply(c);
    if (r.reply === NBD_REP_ACK) return c;
    if (r.reply & 0x80000000) throw new Error(`NBD_OPT_GO refused: ${r.data.toString()}`);
  }
}

/** Read one structured reply chunk. */
async function rawChunk(c: RawClient): Promise<{ cookie: bigint; type: number; flags: number; payload: Buffer }> {
  const h = decodeReplyHeader(await c.reader.read(STRUCTURED_REPLY_HEADER_SIZE, 'reply header'));
  if (h.kind !== 'structured') throw new Error('expected a structured reply');
  return { cookie: h.cookie, type: h.type, flags: h.flags, payload: await c.reader.read(h.length, 'reply payload') };
}

// ---- the basics, seen by nbdinfo ----------------------------------------------

test('nbdinfo sees the export; the unix socket is mode 0600 and gone after close()', async (t) => {
  const disk = new MemoryExport(64 * MiB, { description: 'a test disk' });
  const s = await serve(t, { exports: { vda: disk } });
  t.is((await stat(s.socketPath)).mode & 0o777, 0o600);

  const info = JSON.parse((await run('nbdinfo', ['--json', s.uri('vda')])).stdout) as {
    protocol: string;
    exports: Array<Record<string, unknown>>;
  };
  t.is(info.protocol, 'newstyle-fixed');
  const e = info.exports[0];
  t.is(e['export-name'], 'vda');
  t.is(e['export-size'], 64 * MiB);
  t.is(e['description'], 'a test disk');
  t.is(e['is_read_only'], false);
  t.is(e['can_flush'], true);
  t.is(e['can_zero'], true);
  t.is(e['can_trim'], true);
  t.deepEqual(e['contexts'], ['base:allocation']);

  await s.server.close();
  await t.throwsAsync(stat(s.socketPath), { code: 'ENOENT' });
});

test('nbdinfo --map shows holes as holes and data as data', async (t) => {
  const disk = new MemoryExport(16 * MiB);
  await disk.write(4 * MiB, Buffer.alloc(128 * 1024, 0x61));
  await disk.write(10 * MiB, Buffer.alloc(64 * 1024, 0x62));
  const s = await serve(t, { exports: { vda: disk } });

  const map = JSON.parse((await run('nbdinfo', ['--json', '--map', s.uri('vda')])).stdout) as Array<{
    offset: number;
    length: number;
    type: number;
    description: string;
  }>;
  t.deepEqual(
    map.map((m) => [m.offset, m.length, m.description]),
    [
      [0, 4 * MiB, 'hole,zero'],
      [4 * MiB, 128 * 1024, 'data'],
      [4 * MiB + 128 * 1024, 6 * MiB - 128 * 1024, 'hole,zero'],
      [10 * MiB, 64 * 1024, 'data'],
      [10 * MiB + 64 * 1024, 6 * MiB - 64 * 1024, 'hole,zero'],
    ],
  );
});

test('nbdinfo --list lists every export with its description', async (t) => {
  const s = await serve(t, {
    exports: {
      vda: new MemoryExport(MiB, { description: 'system disk' }),
      vdb: new MemoryExport(2 * MiB, { readOnly: true }),
    },
  });
  const list = JSON.parse((await run('nbdinfo', ['--json', '--list', s.uri('')])).stdout) as {
    exports: Array<Record<string, unknown>>;
  };
  const byName = new Map(list.exports.map((e) => [e['export-name'], e]));
  t.deepEqual([...byName.keys()].sort(), ['vda', 'vdb']);
  t.is(byName.get('vda')!['description'], 'system disk');
  t.is(byName.get('vdb')!['export-size'], 2 * MiB);
  t.is(byName.get('vdb')!['is_read_only'], true);
});

test('the empty export name reaches the only export; unknown names are refused', async (t) => {
  const s = await serve(t, { exports: { vda: new MemoryExport(3 * MiB) } });
  t.is((await run('nbdinfo', ['--size', s.uri('')])).stdout.trim(), String(3 * MiB));
  const err = await t.throwsAsync(run('nbdinfo', ['--size', s.uri('nosuch')]));
  t.regex(err!.message, /nosuch/);
});

// ---- QEMU ---------------------------------------------------------------------

test('qemu-img convert copies the export into a sparse qcow2 that compares equal to the source', async (t) => {
  const dir = await tempDir(t);
  const bytes = sampleDisk(32 * MiB);
  const source = join(dir, 'source.raw');
  await writeFile(source, bytes);
  const s = await serve(t, { exports: { vda: MemoryExport.from(bytes) } }, dir);

  const target = join(dir, 'copy.qcow2');
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', s.uri('vda'), target]);
  await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', target, source]);

  // Holes stayed holes: only the data ranges are allocated in the qcow2.
  const map = JSON.parse((await run('qemu-img', ['map', '--output=json', target])).stdout) as Array<{
    start: number;
    length: number;
    data: boolean;
  }>;
  const allocated = map.filter((m) => m.data).reduce((sum, m) => sum + m.length, 0);
  t.true(allocated <= 4 * MiB + 512 * 1024, `qcow2 allocates ${allocated} bytes`);
});

test('qemu-img compare reads the export directly, and notices a changed byte', async (t) => {
  const dir = await tempDir(t);
  const bytes = sampleDisk(16 * MiB);
  const source = join(dir, 'source.raw');
  await writeFile(source, bytes);
  const disk = MemoryExport.from(bytes);
  const s = await serve(t, { exports: { vda: disk } }, dir);

  const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.uri('vda'), source]);
  t.regex(same.stdout, /identical/);

  await disk.write(5 * MiB + 17, Buffer.from([0xff]));
  const differ = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.uri('vda'), source], { okCodes: [1] });
  t.regex(differ.stdout, new RegExp(`mismatch at offset ${5 * MiB}`));
});

test('qemu-io writes, zeroes, discards and flushes through a writable export', async (t) => {
  const disk = new MemoryExport(8 * MiB);
  await disk.write(0, Buffer.alloc(2 * MiB, 0x11));
  const s = await serve(t, { exports: { vda: disk } });

  await run('qemu-io', [
    '-f', 'raw',
    '-c', 'write -P 0xab 3M 64k',
    '-c', 'write -z -u 0 1M', // zero with unmap: may become a hole
    '-c', 'write -z 1M 64k', // zero, stays allocated
    '-c', 'discard 6M 1M',
    '-c', 'write -f -P 0xcd 7M 4k', // FUA
    '-c', 'flush',
    '-c', 'read -P 0xab 3M 64k',
    s.uri('vda'),
  ]);
  const after = disk.toBuffer();
  t.true(after.subarray(0, MiB + 64 * 1024).equals(Buffer.alloc(MiB + 64 * 1024)));
  t.true(after.subarray(MiB + 64 * 1024, 2 * MiB).equals(Buffer.alloc(MiB - 64 * 1024, 0x11)));
  t.true(after.subarray(3 * MiB, 3 * MiB + 64 * 1024).equals(Buffer.alloc(64 * 1024, 0xab)));
  t.true(after.subarray(7 * MiB, 7 * MiB + 4096).equals(Buffer.alloc(4096, 0xcd)));
  // The unmapped zero range is a hole again.
  const status = await disk.blockStatus(0, MiB);
  t.deepEqual(status, [{ offset: 0, length: MiB, flags: 3 }]);
});

test('a read-only export refuses writes: qemu-io cannot write, libnbd gets EPERM, data unchanged', async (t) => {
  const bytes = Buffer.alloc(4 * MiB, 0x5a);
  const disk = MemoryExport.from(bytes, { readOnly: true });
  const s = await serve(t, { exports: { ro: disk } });

  const rw = await t.throwsAsync(run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4k', s.uri('ro')]));
  t.regex(rw!.message, /Permission denied|read-only/i);
  const ro = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'write -P 1 0 4k', s.uri('ro')], { okCodes: [0, 1] });
  t.regex(ro.stdout + ro.stderr, /read-only|Permission denied/i);

  // Bypass libnbd's own checks so the request reaches our server.
  const errors = await libnbd<Record<string, string | null>>(
    `h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
out = {}
for name, call in [('write', lambda: h.pwrite(b'x' * 4096, 0)),
                   ('zero', lambda: h.zero(4096, 0)),
                   ('trim', lambda: h.trim(4096, 0))]:
    try:
        call(); out[name] = None
    except nbd.Error as e:
        out[name] = e.errno
h.shutdown()
print(json.dumps(out))`,
    s.uri('ro'),
  );
  t.deepEqual(errors, { write: 'EPERM', zero: 'EPERM', trim: 'EPERM' });
  t.true(disk.toBuffer().equals(bytes));
});

test('qemu-img and nbdinfo work over TLS with x509 certificates; a plain client is told TLS is required', async (t) => {
  const dir = await tempDir(t);
  const pki = await makePki(dir);
  const bytes = sampleDisk(8 * MiB);
  const source = join(dir, 'source.raw');
  await writeFile(source, bytes);
  const s = await serve(t, { exports: { vda: MemoryExport.from(bytes) }, tls: { certDir: pki.server } }, dir);
  t.true(s.uri('vda').startsWith('nbds+unix://'));

  const tlsUri = `nbds+unix:///vda?socket=${s.socketPath}&tls-certificates=${pki.client}`;
  const info = JSON.parse((await run('nbdinfo', ['--json', tlsUri])).stdout) as { TLS: boolean; exports: Array<Record<string, unknown>> };
  t.is(info.TLS, true);
  t.is(info.exports[0]['export-size'], 8 * MiB);

  const object = `tls-creds-x509,id=tls0,dir=${pki.client},endpoint=client`;
  const image = `driver=nbd,server.type=unix,server.path=${s.socketPath},export=vda,tls-creds=tls0,tls-hostname=localhost`;
  const cmp = await run('qemu-img', ['compare', '--object', object, '--image-opts', image, `driver=file,filename=${source}`]);
  t.regex(cmp.stdout, /identical/);

  const plain = `nbd+unix:///vda?socket=${s.socketPath}`;
  const qemu = await t.throwsAsync(run('qemu-img', ['info', plain]));
  t.regex(qemu!.message, /TLS/);
  await t.throwsAsync(run('nbdinfo', [plain]));
  t.true(s.logs.some((l) => l.includes('TLS is required')));
});

test('with verifyPeer, a TLS client without a certificate signed by the CA is refused', async (t) => {
  const dir = await tempDir(t);
  const pki = await makePki(dir);
  const s = await serve(t, { exports: { vda: new MemoryExport(MiB) }, tls: { certDir: pki.server, verifyPeer: true } }, dir);

  const ok = await run('nbdinfo', ['--size', `nbds+unix:///vda?socket=${s.socketPath}&tls-certificates=${pki.client}`]);
  t.is(ok.stdout.trim(), String(MiB));
  await t.throwsAsync(run('nbdinfo', ['--size', `nbds+unix:///vda?socket=${s.socketPath}&tls-certificates=${pki.caOnly}`]));
});

// ---- nbdcopy and files ----------------------------------------------------------

test('nbdcopy writes a file into a writable export and copies it back out', async (t) => {
  const dir = await tempDir(t);
  const bytes = sampleDisk(24 * MiB);
  const source = join(dir, 'source.raw');
  await writeFile(source, bytes);
  const disk = new MemoryExport(bytes.length);
  const s = await serve(t, { exports: { vda: disk } }, dir);

  await run('nbdcopy', ['--requests=32', source, s.uri('vda')]);
  t.true(disk.toBuffer().equals(bytes));
  t.true(disk.allocatedBytes < bytes.length, 'zeros were not stored');

  const back = join(dir, 'back.raw');
  await run('nbdcopy', [s.uri('vda'), back]);
  t.true((await readFile(back)).equals(bytes));
});

test('FileExport serves a raw file: reads compare equal, writes land in the file, flush syncs', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'disk.raw');
  const bytes = sampleDisk(8 * MiB);
  await writeFile(path, bytes);
  const file = await FileExport.open(path);
  t.teardown(() => file.close());
  const s = await serve(t, { exports: { vda: file } }, dir);

  const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.uri('vda'), path]);
  t.regex(same.stdout, /identical/);
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 2M 128k', '-c', 'write -z 5M 64k', '-c', 'flush', s.uri('vda')]);
  const now = await readFile(path);
  t.true(now.subarray(2 * MiB, 2 * MiB + 128 * 1024).equals(Buffer.alloc(128 * 1024, 0x77)));
  t.true(now.subarray(5 * MiB, 5 * MiB + 64 * 1024).equals(Buffer.alloc(64 * 1024)));
  t.true(now.subarray(0, 2 * MiB).equals(bytes.subarray(0, 2 * MiB)));
});

test('FileExport with detectZeroes maps zero blocks of a sparse file as holes; read-only files refuse writes', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'sparse.raw');
  await writeFile(path, '');
  await truncate(path, 16 * MiB);
  const fh = await openFile(path, 'r+');
  await fh.write(Buffer.alloc(256 * 1024, 0x42), 0, 256 * 1024, 8 * MiB);
  await fh.close();
  const file = await FileExport.open(path, { readOnly: true, detectZeroes: true });
  t.teardown(() => file.close());
  const s = await serve(t, { exports: { vda: file } }, dir);

  const map = JSON.parse((await run('nbdinfo', ['--json', '--map', s.uri('vda')])).stdout) as Array<{
    offset: number;
    length: number;
    description: string;
  }>;
  t.deepEqual(
    map.map((m) => [m.offset, m.length, m.description]),
    [
      [0, 8 * MiB, 'hole,zero'],
      [8 * MiB, 256 * 1024, 'data'],
      [8 * MiB + 256 * 1024, 8 * MiB - 256 * 1024, 'hole,zero'],
    ],
  );
  const back = join(dir, 'back.raw');
  await run('nbdcopy', [s.uri('vda'), back]);
  t.true((await readFile(back)).equals(await readFile(path)));
  await t.throwsAsync(run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4k', s.uri('vda')]));
});

// ---- protocol details through libnbd ---------------------------------------------

test('simple replies and the old NBD_OPT_EXPORT_NAME handshake still read holes and data correctly', async (t) => {
  const bytes = sampleDisk(8 * MiB);
  const s = await serve(t, { exports: { vda: MemoryExport.from(bytes) } });
  const result = await libnbd<{ structured: boolean; digest: string }>(
    `import hashlib
h = nbd.NBD()
h.set_handshake_flags(0)          # no fixed newstyle: libnbd falls back to NBD_OPT_EXPORT_NAME
h.set_request_structured_replies(False)
h.connect_uri(sys.argv[1])
d = hashlib.sha256()
for off in range(0, h.get_size(), 1 << 20):
    d.update(h.pread(1 << 20, off))
print(json.dumps({'structured': h.get_structured_replies_negotiated(), 'digest': d.hexdigest()}))`,
    s.uri('vda'),
  );
  t.false(result.structured);
  const { createHash } = await import('node:crypto');
  t.is(result.digest, createHash('sha256').update(bytes).digest('hex'));
});

test('block status honours REQ_ONE; out-of-range requests get EINVAL (writes ENOSPC)', async (t) => {
  const disk = new MemoryExport(4 * MiB);
  await disk.write(MiB, Buffer.alloc(MiB, 1));
  const s = await serve(t, { exports: { vda: disk } });
  const r = await libnbd<{ all: number[]; one: number[]; errors: Record<string, string | null> }>(
    `h = nbd.NBD()
h.add_meta_context('base:allocation')
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
got = {}
def cb(name, key):
    def f(meta, offset, entries, err):
        got[key] = entries
        return 0
    return f
h.block_status(4 << 20, 0, cb('base:allocation', 'all'))
h.block_status(4 << 20, 0, cb('base:allocation', 'one'), nbd.CMD_FLAG_REQ_ONE)
errors = {}
size = h.get_size()
for name, call in [('read', lambda: h.pread(4096, size - 2048)),
                   ('write', lambda: h.pwrite(b'y' * 4096, size)),
                   ('status', lambda: h.block_status(4096, size, cb('x', 'x')))]:
    try:
        call(); errors[name] = None
    except nbd.Error as e:
        errors[name] = e.errno
print(json.dumps({'all': got['all'], 'one': got['one'], 'errors': errors}))`,
    s.uri('vda'),
  );
  t.deepEqual(r.all, [MiB, 3, MiB, 0, 2 * MiB, 3]);
  t.deepEqual(r.one, [MiB, 3]);
  t.deepEqual(r.errors, { read: 'EINVAL', write: 'ENOSPC', status: 'EINVAL' });
});

test('errors thrown by an Export reach the client as NBD errnos', async (t) => {
  const failing: Export = {
    size: MiB,
    async read(offset) {
      if (offset === 0) throw new ExportError('EIO', 'bad sector');
      return Buffer.alloc(4096);
    },
    async write(offset) {
      if (offset === 0) throw new ExportError('ENOSPC', 'backing store full');
      if (offset === 4096) throw Object.assign(new Error('quota exceeded'), { code: 'EDQUOT' });
      if (offset === 8192) throw Object.assign(new Error('read-only file system'), { code: 'EROFS' });
      if (offset === 12288) throw new ExportError('EINVAL', 'unaligned');
      throw new Error('something unexpected');
    },
  };
  const s = await serve(t, { exports: { vda: failing } });
  const errors = await libnbd<Record<string, string | number>>(
    `h = nbd.NBD()
h.connect_uri(sys.argv[1])
out = {}
for name, call in [('read0', lambda: h.pread(4096, 0)),
                   ('w0', lambda: h.pwrite(b'z' * 4096, 0)),
                   ('w4096', lambda: h.pwrite(b'z' * 4096, 4096)),
                   ('w8192', lambda: h.pwrite(b'z' * 4096, 8192)),
                   ('w12288', lambda: h.pwrite(b'z' * 4096, 12288)),
                   ('w16384', lambda: h.pwrite(b'z' * 4096, 16384))]:
    try:
        call(); out[name] = 'ok'
    except nbd.Error as e:
        out[name] = e.errno
out['read4096'] = len(h.pread(4096, 4096))
print(json.dumps(out))`,
    s.uri('vda'),
  );
  t.deepEqual(errors, {
    read0: 'EIO',
    w0: 'ENOSPC',
    w4096: 'ENOSPC',
    w8192: 'EPERM',
    w12288: 'EINVAL',
    w16384: 'EIO',
    read4096: 4096,
  });
  t.true(s.logs.some((l) => l.startsWith('warn:') && l.includes('something unexpected')));
});

test('requests are served concurrently and answered out of order by cookie', async (t) => {
  const pending: Array<() => void> = [];
  let maxConcurrent = 0;
  let released = false;
  const blockOf = (offset: number): Buffer => Buffer.alloc(64 * 1024, offset / (64 * 1024) + 1);
  const reversing: Export = {
    size: 8 * 64 * 1024,
    read(offset) {
      return new Promise<Buffer>((resolve) => {
        pending.push(() => resolve(blockOf(offset)));
        maxConcurrent = Math.max(maxConcurrent, pending.length);
        const releaseAll = (): void => {
          if (released) return;
          released = true;
          // Newest first: replies leave in the reverse order of the requests.
          for (const done of pending.reverse()) done();
        };
        if (pending.length === 8) releaseAll();
        // Never hang the test if the server serialised the requests: fail the assertion instead.
        else setTimeout(releaseAll, 3000).unref();
      });
    },
  };
  const s = await serve(t, { exports: { vda: reversing } });
  const ok = await libnbd<boolean>(
    `h = nbd.NBD()
h.connect_uri(sys.argv[1])
bufs = [nbd.Buffer(65536) for _ in range(8)]
cookies = [h.aio_pread(bufs[i], i * 65536) for i in range(8)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    h.aio_command_completed(c)
print(json.dumps(all(bytes(bufs[i].to_bytearray()) == bytes([i + 1]) * 65536 for i in range(8))))`,
    s.uri('vda'),
  );
  t.is(maxConcurrent, 8);
  t.true(ok);
});

test('at most maxInFlight requests run at once', async (t) => {
  let running = 0;
  let maxRunning = 0;
  const slow: Export = {
    size: 64 * MiB,
    async read(_offset, length) {
      running++;
      maxRunning = Math.max(maxRunning, running);
      await new Promise((r) => setTimeout(r, 2));
      running--;
      return Buffer.alloc(length, 9);
    },
  };
  const s = await serve(t, { exports: { vda: slow }, maxInFlight: 4 });
  const dir = s.dir;
  await run('nbdcopy', ['--requests=64', '--connections=1', '--request-size=65536', s.uri('vda'), join(dir, 'out.raw')]);
  t.true(maxRunning <= 4, `max ${maxRunning} reads at once`);
  t.true(maxRunning >= 2, 'requests did overlap');
  t.true((await readFile(join(dir, 'out.raw'))).equals(Buffer.alloc(64 * MiB, 9)));
});

// ---- raw protocol corners ---------------------------------------------------------

test('unknown options get NBD_REP_ERR_UNSUP and the handshake carries on', async (t) => {
  const s = await serve(t, { exports: { vda: new MemoryExport(MiB) } });
  const c = await rawConnect(s.socketPath);
  t.teardown(() => c.socket.destroy());
  c.socket.write(encodeOptionRequest(4242, Buffer.from('whatever')));
  const unsup = await optionReply(c);
  t.is(unsup.option, 4242);
  t.is(unsup.reply >>> 0, NBD_REP_ERR_UNSUP);

  c.socket.write(encodeOptionRequest(NBD_OPT_LIST));
  const server = await optionReply(c);
  t.is(server.reply, NBD_REP_SERVER);
  t.is(decodeServerReply(server.data).name, 'vda');
  t.is((await optionReply(c)).reply, NBD_REP_ACK);
});

test('structured READ sends OFFSET_HOLE for holes, and one data chunk with DF', async (t) => {
  const disk = new MemoryExport(MiB);
  await disk.write(128 * 1024, Buffer.alloc(64 * 1024, 7));
  const s = await serve(t, { exports: { vda: disk } });
  const c = await rawGo(s.socketPath, 'vda');
  t.teardown(() => c.socket.destroy());

  c.socket.write(encodeRequestHeader({ flags: 0, type: NBD_CMD_READ, cookie: 77n, offset: 0, length: 256 * 1024 }));
  const chunks = [await rawChunk(c), await rawChunk(c), await rawChunk(c)];
  t.deepEqual(
    chunks.map((ch) => [ch.cookie, ch.type, ch.flags]),
    [
      [77n, NBD_REPLY_TYPE_OFFSET_HOLE, 0],
      [77n, NBD_REPLY_TYPE_OFFSET_DATA, 0],
      [77n, NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REPLY_FLAG_DONE],
    ],
  );
  t.is(chunks[0].payload.readUInt32BE(8), 128 * 1024);
  t.true(chunks[1].payload.subarray(8).equals(Buffer.alloc(64 * 1024, 7)));

  c.socket.write(encodeRequestHeader({ flags: NBD_CMD_FLAG_DF, type: NBD_CMD_READ, cookie: 78n, offset: 0, length: 256 * 1024 }));
  const df = await rawChunk(c);
  t.is(df.type, NBD_REPLY_TYPE_OFFSET_DATA);
  t.is(df.flags, NBD_REPLY_FLAG_DONE);
  t.true(df.payload.subarray(8).equals(disk.toBuffer().subarray(0, 256 * 1024)));
});

test('a client that stops reading replies stops being read from (backpressure)', async (t) => {
  let reads = 0;
  const exp: Export = {
    size: 256 * MiB,
    async read(_offset, length) {
      reads++;
      return Buffer.alloc(length, 3);
    },
  };
  const s = await serve(t, { exports: { vda: exp }, maxInFlight: 4, maxInFlightBytes: 16 * MiB });
  const c = await rawGo(s.socketPath, 'vda');
  t.teardown(() => c.socket.destroy());
  c.socket.pause();
  const requests = 64;
  for (let i = 0; i < requests; i++) {
    c.socket.write(encodeRequestHeader({ flags: 0, type: NBD_CMD_READ, cookie: BigInt(i), offset: i * 4 * MiB, length: 4 * MiB }));
  }
  // Wait until the server has stalled: no new export reads for a while.
  let seen = -1;
  await until('the server to stall', async () => {
    const now = reads;
    const stalled = now === seen && now > 0;
    seen = now;
    await new Promise((r) => setTimeout(r, 200));
    return stalled;
  });
  t.true(reads < 16, `${reads} of ${requests} 4 MiB reads were served to a client that reads nothing`);

  // Once the client reads, everything arrives.
  c.socket.resume();
  let replies = 0;
  while (replies < requests) {
    const ch = await rawChunk(c);
    if (ch.flags & NBD_REPLY_FLAG_DONE) replies++;
  }
  t.is(reads, requests);
});

test('a client vanishing mid-request or mid-payload does not hurt the server', async (t) => {
  const release = gate();
  const called = gate();
  const exp: Export = {
    size: 16 * MiB,
    async read(_offset, length) {
      called.open();
      await release.promise;
      return Buffer.alloc(length, 1);
    },
    async write() {},
  };
  const s = await serve(t, { exports: { vda: exp } });

  const c1 = await rawGo(s.socketPath, 'vda');
  c1.socket.write(encodeRequestHeader({ flags: 0, type: NBD_CMD_READ, cookie: 1n, offset: 0, length: MiB }));
  await called.promise;
  c1.socket.destroy();

  const c2 = await rawGo(s.socketPath, 'vda');
  c2.socket.write(encodeRequestHeader({ flags: 0, type: NBD_CMD_WRITE, cookie: 2n, offset: 0, length: MiB }));
  c2.socket.write(Buffer.alloc(MiB / 2));
  c2.socket.destroy();

  release.open();
  await until('both connections to end', () => s.server.connectionCount === 0);
  t.is((await run('nbdinfo', ['--size', s.uri('vda')])).stdout.trim(), String(16 * MiB));
});

test('close() answers in-flight requests, hangs up on everyone and removes the socket', async (t) => {
  const release = gate();
  const called = gate();
  const exp: Export = {
    size: MiB,
    async read(_offset, length) {
      called.open();
      await release.promise;
      return Buffer.alloc(length, 0x3c);
    },
  };
  const s = await serve(t, { exports: { vda: exp } });
  const idle = await rawConnect(s.socketPath); // still in the handshake
  const busy = await rawGo(s.socketPath, 'vda');
  t.teardown(() => {
    idle.socket.destroy();
    busy.socket.destroy();
  });
  busy.socket.write(encodeRequestHeader({ flags: 0, type: NBD_CMD_READ, cookie: 9n, offset: 0, length: 4096 }));
  await called.promise;

  const closing = s.server.close();
  release.open();
  const reply = await rawChunk(busy);
  t.is(reply.cookie, 9n);
  t.true(reply.payload.subarray(8).equals(Buffer.alloc(4096, 0x3c)));
  await closing;
  await t.throwsAsync(busy.reader.read(1, 'after close'), { message: /closed/ });
  await t.throwsAsync(idle.reader.read(1, 'after close'), { message: /closed/ });
  await t.throwsAsync(stat(s.socketPath), { code: 'ENOENT' });
});

test('listen() refuses a socket path that already exists', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'taken.sock');
  await writeFile(path, 'not a socket');
  const server = new NbdServer({ exports: { vda: new MemoryExport(MiB) } });
  t.teardown(() => server.close());
  await t.throwsAsync(server.listen({ socketPath: path }), { instanceOf: SocketPathError, message: /already exists/ });
  t.is(await readFile(path, 'utf8'), 'not a socket');
});

test('a socket path close to the 107-byte limit is still created with mode 0600', async (t) => {
  const base = await tempDir(t);
  // Long enough that the private staging directory would not fit in sun_path.
  const dir = join(base, 'd'.repeat(99 - base.length - 1));
  await run('mkdir', [dir]);
  const socketPath = join(dir, 'n.sock');
  t.is(Buffer.byteLength(socketPath), 106);
  const server = new NbdServer({ exports: { vda: new MemoryExport(MiB) } });
  t.teardown(() => server.close());
  await server.listen({ socketPath });
  t.is((await stat(socketPath)).mode & 0o777, 0o600);
  t.is((await run('nbdinfo', ['--size', server.uri('vda')])).stdout.trim(), String(MiB));
  await server.close();
  await t.throwsAsync(stat(socketPath), { code: 'ENOENT' });
});

test('TCP listening works too', async (t) => {
  const server = new NbdServer({ exports: { vda: new MemoryExport(2 * MiB) } });
  t.teardown(() => server.close());
  const address = await server.listen({ host: '127.0.0.1', port: 0 });
  t.true('port' in address && address.port > 0);
  t.is((await run('nbdinfo', ['--size', server.uri('vda')])).stdout.trim(), String(2 * MiB));
});

test('an Export returning inconsistent pieces gets EIO, not a malformed reply', async (t) => {
  const broken: Export = {
    size: MiB,
    async read(offset, length): Promise<Chunk[]> {
      return [{ offset, length: length / 2, zero: true }]; // covers only half
    },
  };
  const s = await serve(t, { exports: { vda: broken } });
  const err = await libnbd<string | null>(
    `h = nbd.NBD()
h.connect_uri(sys.argv[1])
try:
    h.pread(65536, 0); print(json.dumps(None))
except nbd.Error as e:
    print(json.dumps(e.errno))`,
    s.uri('vda'),
  );
  t.is(err, 'EIO');
});

// ---- certificates ------------------------------------------------------------------

interface Pki {
  /** ca-cert.pem, server-cert.pem, server-key.pem (QEMU's server layout). */
  server: string;
  /** ca-cert.pem, client-cert.pem, client-key.pem (QEMU's / libnbd's client layout). */
  client: string;
  /** ca-cert.pem only: trusts the server but has no client certificate. */
  caOnly: string;
}

/** A throw-away CA with a server certificate for localhost and a client certificate, made with openssl. */
async function makePki(dir: string): Promise<Pki> {
  const work = join(dir, 'pki-work');
  const pki = { server: join(dir, 'pki-server'), client: join(dir, 'pki-client'), caOnly: join(dir, 'pki-ca') };
  for (const d of [work, ...Object.values(pki)]) await run('mkdir', ['-p', d]);
  const ssl = (...args: string[]): Promise<unknown> => run('openssl', args, { cwd: work });
  await ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2',
    '-subj', '/CN=virtnbd test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const leaf = async (name: string, ext: string): Promise<void> => {
    await writeFile(join(work, `${name}.ext`), ext);
    await ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}-key.pem`, '-out', `${name}.csr`, '-subj', `/CN=${name === 'server' ? 'localhost' : 'virtnbd client'}`);
    await ssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial',
      '-out', `${name}-cert.pem`, '-days', '2', '-extfile', `${name}.ext`);
  };
  await leaf('server', 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n');
  await leaf('client', 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n');
  const copy = async (file: string, to: string): Promise<void> => writeFile(join(to, file), await readFile(join(work, file)));
  for (const d of Object.values(pki)) await copy('ca-cert.pem', d);
  await copy('server-cert.pem', pki.server);
  await copy('server-key.pem', pki.server);
  await copy('client-cert.pem', pki.client);
  await copy('client-key.pem', pki.client);
  return pki;
}
