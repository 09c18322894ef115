// Hostile bytes from "libvirtd": seeded random and mutated messages fed to
// the packet decoder, the XDR reader and its libvirt codecs, and the whole
// client (Hypervisor, Domain, Checkpoint, StoragePool calls) over an
// in-memory peer. Every input must end in a value or a typed error
// (PacketError, XdrError, LibvirtError), never another exception, a hang, or
// an allocation larger than the input. The seed is fixed so a failure
// reproduces; the failing input is printed in hex.
import test from 'ava';
import { PassThrough } from 'node:stream';
import {
  Checkpoint,
  Domain,
  Hypervisor,
  LibvirtError,
  StoragePool,
  VIR_ERR_RPC,
  type Transport,
} from '../lib/libvirt/index.js';
import { MessageStatus, MessageType, PacketDecoder, PacketError, encodePacket, type Packet, type PacketHeader } from '../lib/libvirt/packet.js';
import { KEEPALIVE_PROGRAM, QEMU_PROGRAM, QemuProcedure, REMOTE_PROGRAM, RemoteProcedure } from '../lib/libvirt/procedures.js';
import {
  REMOTE_DOMAIN_LIST_MAX,
  REMOTE_STRING_MAX,
  readCheckpointRef,
  readDomainRef,
  readRemoteError,
  readStoragePoolRef,
  readString,
} from '../lib/libvirt/remote-types.js';
import { readTypedParams } from '../lib/libvirt/typed-params.js';
import { XdrError, XdrReader, XdrWriter } from '../lib/libvirt/xdr.js';

const INPUTS = 5000;

/** xorshift32: small, fast, and the same sequence on every run for a seed. */
class Rng {
  private x: number;

  constructor(seed: number) {
    this.x = seed >>> 0 || 1;
  }

  u32(): number {
    let x = this.x;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.x = x >>> 0;
    return this.x;
  }

  /** 0 <= n < bound */
  below(bound: number): number {
    return this.u32() % bound;
  }

  chance(p: number): boolean {
    return this.u32() / 0x100000000 < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)];
  }

  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

/** Values at the edges of the protocol's limits, where length checks live. */
const EDGES = [
  0, 1, 2, 3, 4, 5, 16, 27, 28, 29, 64, 0x7fffffff, 0x80000000, 0xfffffffc, 0xffffffff,
  16 * 1024 * 1024, 16 * 1024 * 1024 + 4, REMOTE_STRING_MAX, REMOTE_STRING_MAX + 1, REMOTE_DOMAIN_LIST_MAX + 1,
];

function u32be(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

/**
 * A body made of XDR-looking pieces (small counts, strings, UUIDs, hypers,
 * edge values) so that decoders get past their first field often, then
 * meet something wrong deeper in.
 */
function xdrish(rng: Rng, maxAtoms = 12): Buffer {
  const parts: Buffer[] = [];
  const atoms = rng.below(maxAtoms + 1);
  for (let i = 0; i < atoms; i++) {
    switch (rng.below(8)) {
      case 0:
        parts.push(u32be(rng.below(4)));
        break;
      case 1:
        parts.push(u32be(rng.pick(EDGES)));
        break;
      case 2: {
        parts.push(new XdrWriter().string(printable(rng, rng.below(24))).finish());
        break;
      }
      case 3:
        parts.push(rng.bytes(16));
        break;
      case 4:
        parts.push(rng.bytes(8));
        break;
      case 5:
        parts.push(u32be(rng.u32()));
        break;
      case 6:
        parts.push(rng.bytes(rng.below(7)));
        break;
      default:
        parts.push(u32be(1 + rng.below(7)));
    }
  }
  return Buffer.concat(parts);
}

function printable(rng: Rng, n: number): string {
  return String.fromCharCode(...Array.from({ length: n }, () => 0x20 + rng.below(95)));
}

/** A plausible remote_error, the shape the daemon sends with status ERROR. */
function remoteError(rng: Rng): Buffer {
  const w = new XdrWriter();
  const optString = (): void => {
    w.optional(rng.chance(0.5) ? `msg ${rng.u32()}` : null, (ww, s) => ww.string(s));
  };
  w.int(rng.below(120)).int(rng.below(80));
  optString();
  w.int(rng.below(3));
  w.optional(null, () => {});
  optString();
  optString();
  optString();
  w.int(rng.u32() | 0).int(rng.u32() | 0);
  w.optional(null, () => {});
  return Buffer.from(w.finish());
}

/** A well-formed return value for the procedures whose replies carry structure, so mutations reach deep fields. */
function validRet(rng: Rng, program: number, procedure: number): Buffer | null {
  const w = new XdrWriter();
  const str = (): void => void w.string(printable(rng, rng.below(20)));
  const uhyper = (): void => void w.uhyper(rng.chance(0.9) ? rng.below(1 << 30) : 2n ** 63n + BigInt(rng.u32()));
  const domRef = (): void => {
    str();
    w.fixedOpaque(rng.bytes(16), 16);
    w.int(rng.below(100) - 1);
  };
  const cpRef = (): void => {
    str();
    domRef();
  };
  const typedParams = (max: number): void => {
    const n = rng.below(max);
    w.uint(n);
    for (let i = 0; i < n; i++) {
      str();
      const type = 1 + rng.below(8); // 8: not a type
      w.int(type);
      if (type === 1 || type === 2 || type === 6 || type === 8) w.uint(rng.u32());
      else if (type === 3 || type === 4) uhyper();
      else if (type === 5) w.double(rng.u32() / 7);
      else str();
    }
  };
  const P = RemoteProcedure;
  if (program === QEMU_PROGRAM) {
    if (procedure === QemuProcedure.DOMAIN_AGENT_COMMAND) w.optional(rng.chance(0.5) ? printable(rng, 8) : null, (ww, v) => ww.string(v));
    else str();
    return Buffer.from(w.finish());
  }
  switch (procedure) {
    case P.CONNECT_GET_LIB_VERSION:
    case P.CONNECT_GET_VERSION:
      uhyper();
      break;
    case P.CONNECT_GET_HOSTNAME:
    case P.CONNECT_GET_TYPE:
    case P.CONNECT_GET_URI:
    case P.CONNECT_GET_CAPABILITIES:
    case P.DOMAIN_GET_XML_DESC:
    case P.DOMAIN_BACKUP_GET_XML_DESC:
    case P.DOMAIN_CHECKPOINT_GET_XML_DESC:
    case P.STORAGE_POOL_GET_XML_DESC:
      str();
      break;
    case P.CONNECT_LIST_ALL_DOMAINS: {
      const n = rng.below(4);
      w.uint(n);
      for (let i = 0; i < n; i++) domRef();
      w.uint(n);
      break;
    }
    case P.DOMAIN_LIST_ALL_CHECKPOINTS:
    case P.DOMAIN_CHECKPOINT_LIST_ALL_CHILDREN: {
      const n = rng.below(4);
      w.uint(n);
      for (let i = 0; i < n; i++) cpRef();
      w.int(n);
      break;
    }
    case P.DOMAIN_LOOKUP_BY_NAME:
    case P.DOMAIN_LOOKUP_BY_UUID:
    case P.DOMAIN_LOOKUP_BY_ID:
    case P.DOMAIN_DEFINE_XML_FLAGS:
    case P.DOMAIN_CREATE_XML:
    case P.DOMAIN_CREATE_WITH_FLAGS:
      domRef();
      break;
    case P.DOMAIN_CHECKPOINT_CREATE_XML:
    case P.DOMAIN_CHECKPOINT_LOOKUP_BY_NAME:
    case P.DOMAIN_CHECKPOINT_GET_PARENT:
      cpRef();
      break;
    case P.STORAGE_POOL_LOOKUP_BY_NAME:
    case P.STORAGE_POOL_LOOKUP_BY_TARGET_PATH:
      str();
      w.fixedOpaque(rng.bytes(16), 16);
      break;
    case P.DOMAIN_IS_ACTIVE:
    case P.DOMAIN_IS_PERSISTENT:
    case P.DOMAIN_GET_AUTOSTART:
    case P.DOMAIN_FSFREEZE:
    case P.DOMAIN_FSTHAW:
      w.int(rng.below(3));
      break;
    case P.DOMAIN_GET_STATE:
      w.int(rng.below(8)).int(rng.below(8));
      break;
    case P.DOMAIN_GET_INFO:
      w.uint(rng.below(8));
      uhyper();
      uhyper();
      w.uint(rng.below(4));
      uhyper();
      break;
    case P.DOMAIN_GET_JOB_INFO:
      w.int(rng.below(4));
      for (let i = 0; i < 11; i++) uhyper();
      break;
    case P.DOMAIN_GET_JOB_STATS:
      w.int(rng.below(4));
      typedParams(70);
      break;
    case P.DOMAIN_GET_GUEST_INFO:
      typedParams(20);
      break;
    case P.DOMAIN_GET_BLOCK_INFO:
      uhyper();
      uhyper();
      uhyper();
      break;
    default:
      return null; // no return value
  }
  return Buffer.from(w.finish());
}

/** Flips, overwrites with edge values, truncates or extends a valid buffer. */
function mutate(rng: Rng, input: Buffer): Buffer {
  let b = Buffer.from(input);
  const edits = 1 + rng.below(4);
  for (let i = 0; i < edits && b.length > 0; i++) {
    switch (rng.below(5)) {
      case 0:
        b[rng.below(b.length)] ^= 1 << rng.below(8);
        break;
      case 1:
        if (b.length >= 4) b.writeUInt32BE(rng.pick(EDGES) >>> 0, rng.below(b.length >> 2) * 4);
        break;
      case 2:
        b = b.subarray(0, rng.below(b.length));
        break;
      case 3:
        b = Buffer.concat([b, rng.bytes(rng.below(16))]);
        break;
      default:
        b[rng.below(b.length)] = rng.u32() & 0xff;
    }
  }
  return b;
}

function randomHeader(rng: Rng): PacketHeader {
  return {
    program: rng.pick([REMOTE_PROGRAM, QEMU_PROGRAM, KEEPALIVE_PROGRAM, rng.u32()]),
    version: rng.chance(0.8) ? 1 : rng.u32(),
    procedure: rng.below(500),
    type: rng.below(7),
    serial: rng.below(10),
    status: rng.below(4),
  };
}

/** A byte stream as a broken or hostile daemon might send it. */
function byteStream(rng: Rng): Buffer {
  switch (rng.below(4)) {
    case 0:
      return rng.bytes(rng.below(200));
    case 1: {
      // Well-framed messages, any header, any body.
      const n = 1 + rng.below(4);
      return Buffer.concat(Array.from({ length: n }, () => encodePacket(randomHeader(rng), xdrish(rng))));
    }
    case 2: {
      const n = 1 + rng.below(3);
      return mutate(rng, Buffer.concat(Array.from({ length: n }, () => encodePacket(randomHeader(rng), xdrish(rng)))));
    }
    default:
      // A valid message, then a length word from the edges and whatever follows.
      return Buffer.concat([encodePacket(randomHeader(rng), xdrish(rng)), u32be(rng.pick(EDGES)), rng.bytes(rng.below(64))]);
  }
}

/** Cuts a buffer into chunks of random sizes, empty ones included, as a socket might deliver it. */
function chunks(rng: Rng, input: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let pos = 0;
  while (pos < input.length) {
    const n = rng.chance(0.1) ? 0 : 1 + rng.below(rng.chance(0.5) ? 8 : 128);
    out.push(input.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}

function hex(b: Buffer): string {
  return b.length > 256 ? `${b.subarray(0, 256).toString('hex')}... (${b.length} bytes)` : b.toString('hex');
}

test(`packet decoder: ${INPUTS} hostile byte streams give packets or a PacketError, and consume exactly what they decode`, (t) => {
  const rng = new Rng(0x5eed1);
  const failures: string[] = [];
  const outcomes = { packets: 0, errors: 0, waiting: 0 };
  for (let i = 0; i < INPUTS && failures.length < 5; i++) {
    const input = byteStream(rng);
    const decoder = new PacketDecoder();
    const decoded: Packet[] = [];
    let error: unknown = null;
    try {
      for (const chunk of chunks(rng, input)) decoded.push(...decoder.push(chunk));
    } catch (err) {
      error = err;
    }
    const where = `input ${i}: ${hex(input)}`;
    if (error !== null && !(error instanceof PacketError)) {
      failures.push(`${where}: threw ${String(error)}`);
      continue;
    }
    if (error instanceof PacketError && !/message length \d+ (is shorter than a message header|exceeds libvirt's limit)/.test(error.message)) {
      failures.push(`${where}: unexpected PacketError message ${error.message}`);
    }
    // Re-encoding what came out gives back the input's first bytes, exactly.
    const again = Buffer.concat(decoded.map((p) => encodePacket(p.header, p.body)));
    if (!again.equals(input.subarray(0, again.length))) failures.push(`${where}: decoded packets do not re-encode to the input`);
    // Nothing is held beyond the input (no allocation from a claimed length), nothing lost.
    if (decoder.pending > input.length - again.length) failures.push(`${where}: ${decoder.pending} bytes pending of ${input.length}`);
    if (error === null && again.length + decoder.pending !== input.length) failures.push(`${where}: bytes lost`);
    if (decoded.length > 0) outcomes.packets++;
    if (error !== null) outcomes.errors++;
    else if (decoder.pending > 0) outcomes.waiting++;
  }
  t.log(JSON.stringify(outcomes));
  t.deepEqual(failures, []);
  // The inputs reached every outcome, so the checks above were exercised.
  t.true(outcomes.packets > INPUTS / 10 && outcomes.errors > INPUTS / 20 && outcomes.waiting > INPUTS / 20, JSON.stringify(outcomes));
});

type Read = (r: XdrReader) => unknown;

/** Reads the XDR reader offers, with random limits, as a decoder of some unknown shape would call them. */
function randomRead(rng: Rng): Read {
  const max = rng.pick([0, 1, 16, 256, REMOTE_STRING_MAX, 0xffffffff]);
  const reads: Read[] = [
    (r) => r.int(),
    (r) => r.uint(),
    (r) => r.hyper(),
    (r) => r.uhyper(),
    (r) => r.uhyperNumber('fuzzed'),
    (r) => r.hyperNumber('fuzzed'),
    (r) => r.bool(),
    (r) => r.double(),
    (r) => r.fixedOpaque(rng.pick([0, 1, 3, 16, 4096])),
    (r) => r.opaque(max),
    (r) => r.string(max),
    (r) => r.optional((rr) => rr.string(max)),
    (r) => r.array((rr) => rr.uint(), max),
    (r) => r.array((rr) => rr.string(max), max),
    (r) => r.array((rr) => rr.fixedOpaque(0), max),
  ];
  return rng.pick(reads);
}

/** libvirt's own struct decoders, as the client applies them to replies. */
const CODECS: [string, Read][] = [
  ['remote_error', (r) => readRemoteError(r, 'FUZZ')],
  ['remote_nonnull_domain', readDomainRef],
  ['remote_nonnull_domain_checkpoint', readCheckpointRef],
  ['remote_nonnull_storage_pool', readStoragePoolRef],
  ['remote_typed_param<>', (r) => readTypedParams(r, 64)],
  ['remote_nonnull_domain<>', (r) => r.array(readDomainRef, REMOTE_DOMAIN_LIST_MAX)],
  ['remote_nonnull_string', readString],
];

/** Every string, Buffer and array inside a decoded value is no longer than the input it came from. */
function largest(value: unknown, seen = new Set<unknown>()): number {
  // Invalid UTF-8 decodes to U+FFFD: count UTF-16 units, never more than the bytes read.
  if (typeof value === 'string') return value.length;
  if (Buffer.isBuffer(value)) return value.length;
  if (value === null || typeof value !== 'object' || seen.has(value)) return 0;
  seen.add(value);
  const own = Array.isArray(value) ? value.length : 0;
  return Math.max(own, ...Object.values(value as object).map((v) => largest(v, seen)));
}

test(`XDR reader and libvirt codecs: ${INPUTS} hostile buffers give values or an XdrError, never more than the input`, (t) => {
  const rng = new Rng(0x5eed2);
  const failures: string[] = [];
  let decodedSome = 0;
  let refused = 0;
  for (let i = 0; i < INPUTS && failures.length < 5; i++) {
    const input = rng.chance(0.3) ? rng.bytes(rng.below(96)) : rng.chance(0.5) ? xdrish(rng) : mutate(rng, Buffer.concat([remoteError(rng), xdrish(rng, 3)]));
    const where = `input ${i}: ${hex(input)}`;
    const [codecName, codec] = rng.chance(0.5) ? rng.pick(CODECS) : ['random reads', undefined];
    const r = new XdrReader(input);
    try {
      const values: unknown[] = [];
      if (codec) values.push(codec(r));
      else for (let k = 0; k < 1 + rng.below(10); k++) values.push(randomRead(rng)(r));
      if (r.remaining < 0) failures.push(`${where}: ${codecName} read past the end`);
      if (largest(values) > input.length) failures.push(`${where}: ${codecName} produced ${largest(values)} items/bytes from ${input.length}`);
      if (codecName === 'remote_error' && !(values[0] instanceof LibvirtError)) failures.push(`${where}: remote_error did not decode to a LibvirtError`);
      decodedSome++;
    } catch (err) {
      if (!(err instanceof XdrError)) failures.push(`${where}: ${codecName} threw ${String(err)}`);
      else if (!err.message) failures.push(`${where}: ${codecName} threw an XdrError without a message`);
      refused++;
    }
  }
  t.log(`decoded ${decodedSome}, refused ${refused}`);
  t.deepEqual(failures, []);
  t.true(decodedSome > INPUTS / 10 && refused > INPUTS / 10, `decoded ${decodedSome}, refused ${refused}`);
});

/**
 * An in-memory "daemon": answers the handshake properly, then every call
 * with whatever `answer` makes of it (a reply with a random status and
 * body, maybe after unsolicited messages), or not at all.
 */
class HostileDaemon {
  readonly toDaemon = new PassThrough();
  readonly fromDaemon = new PassThrough();
  private readonly decoder = new PacketDecoder();
  answer: (call: Packet) => Buffer | null = () => null;

  constructor() {
    // Like libvirtd, hang up once the client has finished sending.
    this.toDaemon.on('end', () => this.fromDaemon.end());
    this.toDaemon.on('data', (chunk: Buffer) => {
      for (const call of this.decoder.push(chunk)) {
        if (call.header.program === KEEPALIVE_PROGRAM) continue;
        const bytes = this.handshake(call) ?? this.answer(call);
        if (bytes) this.fromDaemon.write(bytes);
      }
    });
  }

  private handshake(call: Packet): Buffer | null {
    const reply = (body: Buffer): Buffer => encodePacket({ ...call.header, type: MessageType.REPLY, status: MessageStatus.OK }, body);
    if (call.header.program !== REMOTE_PROGRAM) return null;
    if (call.header.procedure === RemoteProcedure.AUTH_LIST) return reply(new XdrWriter().array([0], (w, v) => w.int(v)).finish());
    if (call.header.procedure === RemoteProcedure.CONNECT_OPEN || call.header.procedure === RemoteProcedure.CONNECT_CLOSE) return reply(Buffer.alloc(0));
    return null;
  }

  transport(): Transport {
    return {
      description: 'hostile in-memory daemon',
      readable: this.fromDaemon,
      writable: this.toDaemon,
      end: () => this.toDaemon.end(),
      destroy: () => {
        this.toDaemon.destroy();
        this.fromDaemon.destroy();
      },
      diagnostics: () => '',
    };
  }
}

async function connectTo(daemon: HostileDaemon): Promise<Hypervisor> {
  const hv = new Hypervisor('qemu:///system', { transport: async () => daemon.transport(), keepaliveInterval: 0 });
  await hv.connect();
  return hv;
}

/** Every call of the client's API that decodes a reply (and a few that expect none). */
function apiCalls(hv: Hypervisor): (() => Promise<unknown>)[] {
  const rpc = hv.connection;
  const dom = new Domain(rpc, { name: 'fuzz', uuid: Buffer.alloc(16, 7), id: 3 });
  const cp = new Checkpoint(dom, 'fuzz-cp');
  const pool = new StoragePool(rpc, { name: 'fuzz-pool', uuid: Buffer.alloc(16, 9) });
  return [
    () => hv.getLibVersion(),
    () => hv.getVersion(),
    () => hv.getHostname(),
    () => hv.getType(),
    () => hv.getUri(),
    () => hv.getCapabilities(),
    () => hv.listAllDomains(),
    () => hv.lookupDomainByName('fuzz'),
    () => hv.lookupDomainByUUID('07070707-0707-0707-0707-070707070707'),
    () => hv.lookupDomainById(3),
    () => hv.defineXML('<domain/>'),
    () => hv.createXML('<domain/>'),
    () => hv.storagePoolLookupByName('fuzz-pool'),
    () => hv.storagePoolLookupByTargetPath('/fuzz'),
    () => dom.getID(),
    () => dom.getXMLDesc(),
    () => dom.isActive(),
    () => dom.isPersistent(),
    () => dom.getState(),
    () => dom.getInfo(),
    () => dom.create(),
    () => dom.resume(),
    () => dom.destroy(),
    () => dom.getAutostart(),
    () => dom.backupGetXMLDesc(),
    () => dom.abortJob(),
    () => dom.getJobInfo(),
    () => dom.getJobStats(),
    () => dom.checkpointCreateXML('<domaincheckpoint/>'),
    () => dom.listAllCheckpoints(),
    () => dom.checkpointLookupByName('fuzz-cp'),
    () => dom.fsFreeze(),
    () => dom.fsThaw(['/']),
    () => dom.getGuestInfo(),
    () => dom.qemuAgentCommand('{}'),
    () => dom.qemuMonitorCommand('{}'),
    () => dom.getBlockInfo('vda'),
    () => cp.getXMLDesc(),
    () => cp.getParent(),
    () => cp.listAllChildren(),
    () => cp.delete(),
    () => pool.refresh(),
    () => pool.getXMLDesc(),
  ];
}

test(`client API: ${INPUTS} calls answered with hostile replies each settle with a value or a LibvirtError, and the connection stays in step`, async (t) => {
  const rng = new Rng(0x5eed3);
  const daemon = new HostileDaemon();
  const hv = await connectTo(daemon);
  t.teardown(() => hv.close());
  daemon.answer = (call) => {
    const noise: Buffer[] = [];
    // Unsolicited traffic the client must step over: events, stream data, pings, stray replies.
    if (rng.chance(0.1)) noise.push(encodePacket({ ...randomHeader(rng), type: MessageType.MESSAGE }, xdrish(rng)));
    if (rng.chance(0.05)) noise.push(encodePacket({ ...randomHeader(rng), type: MessageType.STREAM }, xdrish(rng)));
    if (rng.chance(0.05)) noise.push(encodePacket({ program: KEEPALIVE_PROGRAM, version: 1, procedure: 1, type: MessageType.MESSAGE, serial: 0, status: 0 }));
    if (rng.chance(0.05)) noise.push(encodePacket({ ...call.header, type: MessageType.REPLY, serial: (call.header.serial + 100000) >>> 0 }, xdrish(rng)));
    const status = rng.pick([MessageStatus.OK, MessageStatus.OK, MessageStatus.ERROR, MessageStatus.CONTINUE, 7]);
    let body: Buffer;
    if (status === MessageStatus.ERROR && rng.chance(0.7)) {
      body = rng.chance(0.5) ? remoteError(rng) : mutate(rng, remoteError(rng));
    } else {
      const valid = validRet(rng, call.header.program, call.header.procedure) ?? Buffer.alloc(0);
      body = rng.pick([valid, valid, mutate(rng, valid), xdrish(rng)]);
    }
    const reply = encodePacket({ ...call.header, type: MessageType.REPLY, status }, body);
    return Buffer.concat([...noise, reply]);
  };

  const calls = apiCalls(hv);
  const failures: string[] = [];
  let fulfilled = 0;
  let rejected = 0;
  const BATCH = 50;
  for (let done = 0; done < INPUTS && failures.length < 5; done += BATCH) {
    const picked = Array.from({ length: BATCH }, () => rng.below(calls.length));
    const results = await Promise.allSettled(picked.map((k) => calls[k]()));
    results.forEach((res, j) => {
      if (res.status === 'fulfilled') {
        fulfilled++;
        return;
      }
      rejected++;
      if (!(res.reason instanceof LibvirtError)) failures.push(`call #${picked[j]} rejected with ${String(res.reason)}`);
    });
    if (!hv.isConnected) failures.push(`the connection was lost after ${done + BATCH} calls: well-framed replies must never break it`);
  }
  t.log(`fulfilled ${fulfilled}, rejected ${rejected}`);
  t.deepEqual(failures, []);
  t.true(fulfilled > INPUTS / 20 && rejected > INPUTS / 5, `fulfilled ${fulfilled}, rejected ${rejected}`);

  // Still in step: a proper reply reaches the right call.
  daemon.answer = (call) => encodePacket({ ...call.header, type: MessageType.REPLY, status: MessageStatus.OK }, new XdrWriter().string('still-here').finish());
  t.is(await hv.getHostname(), 'still-here');
});

test('client API: hostile framing kills the connection, and every call in flight is rejected, none left hanging', async (t) => {
  const rng = new Rng(0x5eed4);
  const ROUNDS = 300;
  const failures: string[] = [];
  let closedByGarbage = 0;
  let rpcRejected = 0;
  for (let i = 0; i < ROUNDS && failures.length < 5; i++) {
    const daemon = new HostileDaemon();
    const hv = await connectTo(daemon);
    // Calls the daemon never answers properly...
    const rpc = hv.connection;
    const closed = new Promise((resolve) => rpc.once('close', resolve));
    const pending = Array.from({ length: 1 + rng.below(5) }, () => hv.getHostname());
    // ...then hostile bytes, then the end of the stream.
    const garbage = byteStream(rng);
    for (const chunk of chunks(rng, garbage)) {
      // A protocol error tears the pipe down at once; the rest of the garbage has nowhere to go.
      if (daemon.fromDaemon.destroyed) break;
      daemon.fromDaemon.write(chunk);
    }
    await new Promise((resolve) => setImmediate(resolve));
    if (!hv.isConnected) closedByGarbage++;
    if (!daemon.fromDaemon.destroyed) daemon.fromDaemon.end();
    const results = await Promise.allSettled(pending);
    // Stray replies may have settled every call first; the end of the stream must still close the connection.
    await closed;
    for (const res of results) {
      // A garbage reply that happens to carry a call's serial may settle it either way; a LibvirtError it must be.
      if (res.status === 'rejected' && !(res.reason instanceof LibvirtError)) {
        failures.push(`round ${i} (${hex(garbage)}): rejected with ${String(res.reason)}`);
      } else if (res.status === 'rejected' && (res.reason as LibvirtError).code === VIR_ERR_RPC) {
        rpcRejected++;
      }
    }
    if (hv.isConnected) failures.push(`round ${i}: still connected after the daemon's stream ended`);
    await hv.close();
  }
  t.log(`garbage closed ${closedByGarbage} of ${ROUNDS}; ${rpcRejected} calls rejected for the lost connection`);
  t.deepEqual(failures, []);
  t.true(closedByGarbage > ROUNDS / 10, `garbage alone closed ${closedByGarbage} of ${ROUNDS} connections`);
  t.true(rpcRejected > ROUNDS, `${rpcRejected} calls rejected for the lost connection`);
});
