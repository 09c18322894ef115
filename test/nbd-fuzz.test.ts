/**
 * A deliberately broken NBD peer: a tiny net.Server in the test speaks a
 * bad handshake or sends malformed replies (bad magic, unknown cookie,
 * chunks outside the request, truncated chunks...). The client must answer
 * with a typed error, never crash and never hang. Then seeded random bytes
 * go through the reply parser and the handshake: only typed errors.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdClient } from '../lib/nbd/client.js';
import { NbdConnectionError, NbdError, NbdHandshakeError, NbdProtocolError } from '../lib/nbd/errors.js';
import { exchangeGreeting, negotiate, type HandshakeIO } from '../lib/nbd/handshake.js';
import { ReplyParser } from '../lib/nbd/replyParser.js';
import { PendingRequest } from '../lib/nbd/request.js';
import * as P from '../lib/nbd/protocol.js';

// ---- a scripted peer --------------------------------------------------------

class Peer {
  private acc = Buffer.alloc(0);
  private wake?: () => void;
  private ended = false;
  constructor(readonly sock: net.Socket) {
    sock.on('data', (b: Buffer) => {
      this.acc = Buffer.concat([this.acc, b]);
      this.wake?.();
    });
    const end = (): void => {
      this.ended = true;
      this.wake?.();
    };
    sock.on('close', end);
    sock.on('error', end);
  }
  async read(n: number): Promise<Buffer> {
    while (this.acc.length < n) {
      if (this.ended) throw new Error('client went away');
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.acc.subarray(0, n);
    this.acc = this.acc.subarray(n);
    return out;
  }
  write(...bufs: Buffer[]): void {
    for (const b of bufs) this.sock.write(b);
  }
  /** Next request header; WRITE payloads are consumed too. */
  async request(): Promise<P.RequestHeader> {
    const h = P.decodeRequestHeader(await this.read(P.REQUEST_HEADER_SIZE));
    if (h.type === P.NBD_CMD_WRITE) await this.read(h.length);
    return h;
  }
}

/** Serve `script` to every connection on a fresh unix socket; everything is closed in teardown. */
async function servePeer(t: ExecutionContext, script: (p: Peer) => Promise<void>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'vnbdtest-fuzz-'));
  const path = join(dir, 'peer.sock');
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    script(new Peer(sock)).catch(() => sock.destroy());
  });
  await new Promise<void>((r) => server.listen(path, r));
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
    await rm(dir, { recursive: true, force: true });
  });
  return `nbd+unix:///disk?socket=${path}`;
}

const SIZE = 1024 * 1024;
const FLAGS = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH;

/** A correct fixed-newstyle handshake: structured replies (if `structured`), base:allocation as context 7, NBD_OPT_GO. */
async function goodHandshake(p: Peer, opts: { structured?: boolean; go?: boolean } = {}): Promise<void> {
  p.write(P.encodeServerGreeting(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES));
  await p.read(4);
  for (;;) {
    const h = P.decodeOptionRequestHeader(await p.read(16));
    const data = await p.read(h.length);
    switch (h.option) {
      case P.NBD_OPT_STRUCTURED_REPLY:
        p.write(P.encodeOptionReply(h.option, opts.structured === false ? P.NBD_REP_ERR_UNSUP : P.NBD_REP_ACK));
        break;
      case P.NBD_OPT_SET_META_CONTEXT:
        p.write(P.encodeOptionReply(h.option, P.NBD_REP_META_CONTEXT, P.encodeMetaContextReply(7, 'base:allocation')));
        p.write(P.encodeOptionReply(h.option, P.NBD_REP_ACK));
        break;
      case P.NBD_OPT_GO:
        if (opts.go === false) {
          p.write(P.encodeOptionReply(h.option, P.NBD_REP_ERR_UNSUP));
          break;
        }
        p.write(P.encodeOptionReply(h.option, P.NBD_REP_INFO, P.encodeInfoExport(SIZE, FLAGS)));
        p.write(P.encodeOptionReply(h.option, P.NBD_REP_ACK));
        return;
      case P.NBD_OPT_EXPORT_NAME:
        p.write(P.encodeExportNameReply(SIZE, FLAGS, true));
        return;
      default:
        p.write(P.encodeOptionReply(h.option, P.NBD_REP_ERR_UNSUP));
        void data;
    }
  }
}

function structured(cookie: bigint, type: number, payload: Buffer, done = true): Buffer {
  return Buffer.concat([
    P.encodeStructuredReplyHeader({ flags: done ? P.NBD_REPLY_FLAG_DONE : 0, type, cookie, length: payload.length }),
    payload,
  ]);
}

function dataChunk(cookie: bigint, offset: number, data: Buffer, done = false): Buffer {
  return structured(cookie, P.NBD_REPLY_TYPE_OFFSET_DATA, Buffer.concat([P.encodeOffsetDataPrefix(offset), data]), done);
}

// ---- broken transmission replies ----------------------------------------------

async function brokenReply(t: ExecutionContext, reply: (p: Peer, req: P.RequestHeader) => void, opts: { structured?: boolean } = {}) {
  const uri = await servePeer(t, async (p) => {
    await goodHandshake(p, opts);
    const req = await p.request();
    reply(p, req);
  });
  const c = await NbdClient.connect(uri, opts.structured === false ? { structuredReplies: false } : {});
  t.teardown(() => c.destroy());
  return c;
}

const transmissionCases: Array<[string, (p: Peer, req: P.RequestHeader) => void, RegExp]> = [
  ['bad reply magic', (p) => p.write(Buffer.from('deadbeef00000000000000000000000000000000', 'hex')), /bad magic 0xdeadbeef/],
  ['unknown cookie', (p, req) => p.write(structured(req.cookie + 1000n, P.NBD_REPLY_TYPE_NONE, Buffer.alloc(0))), /unknown cookie/],
  ['data outside the request', (p, req) => p.write(dataChunk(req.cookie, req.offset + 4096, Buffer.alloc(4096), true)), /outside NBD_CMD_READ/],
  [
    'overlapping data chunks',
    (p, req) => p.write(dataChunk(req.cookie, 0, Buffer.alloc(2048)), dataChunk(req.cookie, 1024, Buffer.alloc(2048))),
    /overlaps/,
  ],
  ['done without all the data', (p, req) => p.write(dataChunk(req.cookie, 0, Buffer.alloc(1024), true)), /ended with 1024 of 4096 bytes/],
  ['NONE chunk with a payload', (p, req) => p.write(structured(req.cookie, P.NBD_REPLY_TYPE_NONE, Buffer.alloc(3))), /NBD_REPLY_TYPE_NONE chunk with length 3/],
  ['NONE chunk without DONE', (p, req) => p.write(structured(req.cookie, P.NBD_REPLY_TYPE_NONE, Buffer.alloc(0), false)), /without DONE/],
  ['unknown chunk type', (p, req) => p.write(structured(req.cookie, 77, Buffer.alloc(8))), /unknown structured reply type 77/],
  ['block status chunk in a read', (p, req) => p.write(structured(req.cookie, P.NBD_REPLY_TYPE_BLOCK_STATUS, P.encodeBlockStatus(7, [{ length: 4096, flags: 0 }]))), /block status chunk in NBD_CMD_READ/],
  ['hole chunk of the wrong size', (p, req) => p.write(structured(req.cookie, P.NBD_REPLY_TYPE_OFFSET_HOLE, Buffer.alloc(11))), /hole chunk of length 11/],
  [
    'error message longer than its chunk',
    (p, req) => {
      const payload = P.encodeErrorChunk(P.NBD_EIO, 'boom');
      payload.writeUInt16BE(400, 4);
      p.write(structured(req.cookie, P.NBD_REPLY_TYPE_ERROR, payload));
    },
    /message length 400 does not fit/,
  ],
  ['error offset outside the request', (p, req) => p.write(structured(req.cookie, P.NBD_REPLY_TYPE_ERROR_OFFSET, P.encodeErrorChunk(P.NBD_EIO, '', 999999))), /error offset 999999 outside/],
  [
    'simple reply to a read after structured replies were negotiated',
    (p, req) => p.write(P.encodeSimpleReply(req.cookie, 0), Buffer.alloc(4096)),
    /simple reply to NBD_CMD_READ although structured/,
  ],
];

for (const [name, reply, message] of transmissionCases) {
  test(`broken peer: ${name} -> NbdProtocolError, connection dead`, async (t) => {
    const c = await brokenReply(t, reply);
    const err = await t.throwsAsync(c.read(0, 4096), { instanceOf: NbdProtocolError });
    t.regex(err?.message ?? '', message);
    t.is(c.state, 'dead');
    t.is(c.error, err);
    await t.throwsAsync(c.read(0, 512), { instanceOf: NbdConnectionError });
  });
}

test('broken peer: structured chunk without negotiation -> NbdProtocolError', async (t) => {
  const c = await brokenReply(t, (p, req) => p.write(structured(req.cookie, P.NBD_REPLY_TYPE_NONE, Buffer.alloc(0))), { structured: false });
  await t.throwsAsync(c.read(0, 4096), { instanceOf: NbdProtocolError, message: /structured replies were not negotiated/ });
});

test('broken peer: a truncated chunk then hang-up rejects the read with NbdConnectionError', async (t) => {
  const c = await brokenReply(t, (p, req) => {
    const chunk = dataChunk(req.cookie, 0, Buffer.alloc(4096), true);
    p.sock.end(chunk.subarray(0, 100));
  });
  const err = await t.throwsAsync(c.read(0, 4096), { instanceOf: NbdConnectionError });
  t.regex(err?.message ?? '', /closed/);
  t.is(c.state, 'dead');
});

test('broken peer: one violation rejects every request in flight', async (t) => {
  const uri = await servePeer(t, async (p) => {
    await goodHandshake(p);
    for (let i = 0; i < 5; i++) await p.request();
    p.write(Buffer.alloc(16, 0xff));
  });
  const c = await NbdClient.connect(uri);
  const results = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => c.read(i * 4096, 4096)));
  for (const r of results) {
    t.is(r.status, 'rejected');
    if (r.status === 'rejected') t.true(r.reason instanceof NbdProtocolError);
  }
});

test('peer errors that are not violations keep the connection: simple error, unknown error chunk type', async (t) => {
  const uri = await servePeer(t, async (p) => {
    await goodHandshake(p, {});
    const r1 = await p.request();
    p.write(structured(r1.cookie, P.NBD_REPLY_TYPE_FLAG_ERROR + 99, P.encodeErrorChunk(P.NBD_ENOSPC, 'no room', undefined)));
    const r2 = await p.request();
    p.write(P.encodeSimpleReply(r2.cookie, 1234)); // an error number the spec does not define
    const r3 = await p.request();
    p.write(dataChunk(r3.cookie, 0, Buffer.alloc(2048, 1)));
    p.write(structured(r3.cookie, P.NBD_REPLY_TYPE_OFFSET_HOLE, P.encodeOffsetHole(2048, 2048), true));
  });
  const c = await NbdClient.connect(uri);
  t.teardown(() => c.destroy());
  const e1 = await t.throwsAsync(c.read(0, 4096), { instanceOf: NbdError });
  t.is(e1?.code, 'ENOSPC');
  t.is(e1?.serverMessage, 'no room');
  const e2 = await t.throwsAsync(c.flush(), { instanceOf: NbdError });
  t.is(e2?.code, 'E1234');
  const data = await c.read(0, 4096);
  t.true(data.subarray(0, 2048).equals(Buffer.alloc(2048, 1)));
  t.true(data.subarray(2048).equals(Buffer.alloc(2048)));
  t.is(c.state, 'transmission');
});

// ---- broken handshakes ----------------------------------------------------------

const handshakeCases: Array<[string, (p: Peer) => Promise<void>, new (...a: never[]) => Error, RegExp]> = [
  ['not an NBD server', async (p) => p.write(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n')), NbdProtocolError, /not an NBD server/],
  [
    'old-style negotiation',
    async (p) => {
      const b = Buffer.alloc(152);
      b.writeBigUInt64BE(P.NBD_MAGIC, 0);
      b.writeBigUInt64BE(P.NBD_OLDSTYLE_MAGIC, 8);
      p.write(b);
    },
    NbdProtocolError,
    /old-style/,
  ],
  ['greeting cut short', async (p) => void p.sock.end(P.encodeServerGreeting(1).subarray(0, 10)), NbdHandshakeError, /closed the connection during the handshake/],
  [
    'option reply with bad magic',
    async (p) => {
      p.write(P.encodeServerGreeting(P.NBD_FLAG_FIXED_NEWSTYLE));
      await p.read(4);
      await p.read(16);
      p.write(Buffer.alloc(20, 0x41));
    },
    NbdProtocolError,
    /option reply: bad magic/,
  ],
  [
    'reply for another option',
    async (p) => {
      p.write(P.encodeServerGreeting(P.NBD_FLAG_FIXED_NEWSTYLE));
      await p.read(4);
      await p.read(16);
      p.write(P.encodeOptionReply(P.NBD_OPT_LIST, P.NBD_REP_ACK));
    },
    NbdProtocolError,
    /reply for NBD_OPT_LIST while waiting for the reply to NBD_OPT_STRUCTURED_REPLY/,
  ],
  [
    'absurd option reply length',
    async (p) => {
      p.write(P.encodeServerGreeting(P.NBD_FLAG_FIXED_NEWSTYLE));
      await p.read(4);
      await p.read(16);
      const r = P.encodeOptionReply(P.NBD_OPT_STRUCTURED_REPLY, P.NBD_REP_ACK);
      r.writeUInt32BE(0xfffffff0, 16);
      p.write(r);
    },
    NbdProtocolError,
    /claims 4294967280 bytes/,
  ],
  [
    'NBD_OPT_GO accepted without export info',
    async (p) => {
      p.write(P.encodeServerGreeting(P.NBD_FLAG_FIXED_NEWSTYLE));
      await p.read(4);
      for (;;) {
        const h = P.decodeOptionRequestHeader(await p.read(16));
        await p.read(h.length);
        p.write(P.encodeOptionReply(h.option, P.NBD_REP_ACK));
      }
    },
    NbdProtocolError,
    /without sending NBD_INFO_EXPORT/,
  ],
  [
    'malformed NBD_INFO_EXPORT',
    async (p) => {
      p.write(P.encodeServerGreeting(P.NBD_FLAG_FIXED_NEWSTYLE));
      await p.read(4);
      for (;;) {
        const h = P.decodeOptionRequestHeader(await p.read(16));
        await p.read(h.length);
        if (h.option === P.NBD_OPT_GO) p.write(P.encodeOptionReply(h.option, P.NBD_REP_INFO, Buffer.from([0, 0, 1])));
        else p.write(P.encodeOptionReply(h.option, P.NBD_REP_ACK));
      }
    },
    NbdProtocolError,
    /NBD_INFO_EXPORT: length 3/,
  ],
];

for (const [name, script, type, message] of handshakeCases) {
  test(`broken handshake: ${name}`, async (t) => {
    const uri = await servePeer(t, script);
    const err = await t.throwsAsync(NbdClient.connect(uri, { handshakeTimeout: 60_000 }), { instanceOf: type });
    t.regex(err?.message ?? '', message);
  });
}

test('broken handshake: a silent server is given up after handshakeTimeout', async (t) => {
  const uri = await servePeer(t, () => new Promise(() => {}));
  await t.throwsAsync(NbdClient.connect(uri, { handshakeTimeout: 300 }), { instanceOf: NbdHandshakeError, message: /no answer .* within 300 ms/ });
});

test('a server without NBD_OPT_GO is used through NBD_OPT_EXPORT_NAME', async (t) => {
  const uri = await servePeer(t, async (p) => {
    await goodHandshake(p, { go: false });
    const r = await p.request();
    p.write(dataChunk(r.cookie, r.offset, Buffer.alloc(r.length, 9), true));
  });
  const c = await NbdClient.connect(uri);
  t.teardown(() => c.destroy());
  t.is(c.size, SIZE);
  t.true(c.canFlush);
  t.true((await c.read(512, 512)).equals(Buffer.alloc(512, 9)));
});

test('random bytes after a good handshake: a typed error, no hang', async (t) => {
  const rnd = prng(42);
  for (let round = 0; round < 10; round++) {
    const garbage = randomBuffer(rnd, 1 + Math.floor(rnd() * 3000));
    const uri = await servePeer(t, async (p) => {
      await goodHandshake(p);
      await p.request();
      p.sock.end(garbage);
    });
    const c = await NbdClient.connect(uri);
    const err = await t.throwsAsync(c.read(0, 65536));
    t.true(err instanceof NbdProtocolError || err instanceof NbdConnectionError || err instanceof NbdError, String(err));
    c.destroy();
  }
});

// ---- seeded random bytes into the parsers -------------------------------------------

/** mulberry32: a small seeded PRNG, so a failure can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBuffer(rnd: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

/** Random bytes, often behind a plausible reply header so the parser gets past the magic. */
function replyNoise(rnd: () => number): Buffer {
  const tail = randomBuffer(rnd, Math.floor(rnd() * 600));
  const cookie = BigInt(1 + Math.floor(rnd() * 3));
  const pick = rnd();
  if (pick < 0.25) return tail;
  if (pick < 0.5) return Buffer.concat([P.encodeSimpleReply(cookie, rnd() < 0.5 ? 0 : Math.floor(rnd() * 200)), tail]);
  const types = [P.NBD_REPLY_TYPE_NONE, P.NBD_REPLY_TYPE_OFFSET_DATA, P.NBD_REPLY_TYPE_OFFSET_HOLE, P.NBD_REPLY_TYPE_BLOCK_STATUS, P.NBD_REPLY_TYPE_ERROR, P.NBD_REPLY_TYPE_ERROR_OFFSET, Math.floor(rnd() * 65536)];
  const type = types[Math.floor(rnd() * types.length)];
  const length = rnd() < 0.7 ? tail.length : Math.floor(rnd() * 2 ** 32);
  return Buffer.concat([P.encodeStructuredReplyHeader({ flags: Math.floor(rnd() * 4), type, cookie, length }), tail]);
}

test('seeded random bytes into the reply parser: only NbdProtocolError, never anything else', (t) => {
  const rnd = prng(1);
  let protocolErrors = 0;
  for (let round = 0; round < 2000; round++) {
    const inflight = new Map<bigint, PendingRequest<unknown>>();
    const add = (cookie: bigint, type: number, length: number): void => {
      const req = new PendingRequest<unknown>({ cookie, type, offset: 0, length, buffer: type === P.NBD_CMD_READ ? Buffer.alloc(length) : undefined, result: () => undefined });
      req.promise.catch(() => {});
      inflight.set(cookie, req);
    };
    add(1n, P.NBD_CMD_READ, 512);
    add(2n, P.NBD_CMD_BLOCK_STATUS, 65536);
    add(3n, P.NBD_CMD_FLUSH, 0);
    const parser = new ReplyParser({
      structuredReplies: rnd() < 0.8,
      contextIds: new Set([0, 1]),
      lookup: (c) => inflight.get(c),
      done: (r) => inflight.delete(r.cookie),
    });
    const input = Buffer.concat([replyNoise(rnd), replyNoise(rnd), replyNoise(rnd)]);
    try {
      // Split at random points: the parser must not care where bytes arrive.
      let at = 0;
      while (at < input.length) {
        const n = 1 + Math.floor(rnd() * 64);
        parser.feed(input.subarray(at, at + n));
        at += n;
      }
    } catch (err) {
      if (!(err instanceof NbdProtocolError)) {
        t.fail(`round ${round}: ${String(err)}`);
        return;
      }
      protocolErrors++;
    }
  }
  t.true(protocolErrors > 500, `only ${protocolErrors} protocol errors: the noise is too tame`);
});

test('seeded random bytes into the handshake: only typed errors', async (t) => {
  const rnd = prng(7);
  const kinds = new Set<string>();
  for (let round = 0; round < 1000; round++) {
    let input = randomBuffer(rnd, Math.floor(rnd() * 200));
    if (rnd() < 0.7) {
      // Mostly a valid greeting, then option replies with a valid magic and random rest.
      const parts = [P.encodeServerGreeting(Math.floor(rnd() * 4))];
      for (let i = 0; i < 4; i++) {
        const body = randomBuffer(rnd, Math.floor(rnd() * 40));
        const option = [P.NBD_OPT_STRUCTURED_REPLY, P.NBD_OPT_SET_META_CONTEXT, P.NBD_OPT_GO, P.NBD_OPT_LIST_META_CONTEXT][Math.floor(rnd() * 4)];
        const reply = [P.NBD_REP_ACK, P.NBD_REP_INFO, P.NBD_REP_META_CONTEXT, P.NBD_REP_ERR_UNKNOWN, P.NBD_REP_ERR_TLS_REQD, P.NBD_REP_ERR_UNSUP, Math.floor(rnd() * 2 ** 32)][Math.floor(rnd() * 7)];
        parts.push(P.encodeOptionReply(option, reply, body));
      }
      input = Buffer.concat([...parts, input]);
    }
    let at = 0;
    const io: HandshakeIO = {
      readExact: async (n) => {
        if (at + n > input.length) throw new NbdConnectionError('peer closed');
        at += n;
        return input.subarray(at - n, at);
      },
      send: async () => {},
      upgradeTls: async () => {
        throw new NbdHandshakeError('no TLS here');
      },
    };
    try {
      const g = await exchangeGreeting(io);
      await negotiate(io, g, { exportName: 'disk', metaContexts: rnd() < 0.5 ? ['base:allocation'] : [] });
      kinds.add('ok');
    } catch (err) {
      if (!(err instanceof NbdProtocolError || err instanceof NbdHandshakeError || err instanceof NbdConnectionError)) {
        t.fail(`round ${round}: ${String(err)}`);
        return;
      }
      kinds.add((err as Error).name);
    }
  }
  t.true(kinds.has('NbdProtocolError') && kinds.has('NbdHandshakeError') && kinds.has('NbdConnectionError'), [...kinds].join(','));
});
