// XDR (RFC 4506), typed params, packet framing and UUIDs: pure code, small inputs.
import test from 'ava';
import { XdrError, XdrReader, XdrWriter } from '../lib/libvirt/xdr.js';
import {
  VIR_NET_MESSAGE_MAX,
  PacketDecoder,
  PacketError,
  encodePacket,
  type PacketHeader,
} from '../lib/libvirt/packet.js';
import {
  VIR_TYPED_PARAM_BOOLEAN,
  VIR_TYPED_PARAM_DOUBLE,
  VIR_TYPED_PARAM_INT,
  VIR_TYPED_PARAM_LLONG,
  VIR_TYPED_PARAM_STRING,
  VIR_TYPED_PARAM_UINT,
  VIR_TYPED_PARAM_ULLONG,
  readTypedParams,
  typedParamsToObject,
  writeTypedParam,
  type TypedParam,
} from '../lib/libvirt/typed-params.js';
import { formatUuid, parseUuid, readRemoteError } from '../lib/libvirt/remote-types.js';
import { LibvirtError } from '../lib/libvirt/errors.js';

test('integers are 4 or 8 bytes big-endian, as RFC 4506 lays them out', (t) => {
  const buf = new XdrWriter(4).int(-2).uint(0xdeadbeef).hyper(-3n).uhyper(2n ** 64n - 1n).bool(true).finish();
  t.is(
    buf.toString('hex'),
    'fffffffe' + 'deadbeef' + 'fffffffffffffffd' + 'ffffffffffffffff' + '00000001',
  );
  const r = new XdrReader(buf);
  t.is(r.int(), -2);
  t.is(r.uint(), 0xdeadbeef);
  t.is(r.hyper(), -3n);
  t.is(r.uhyper(), 2n ** 64n - 1n);
  t.true(r.bool());
  r.assertEnd('test');
});

test('strings and opaques are length-prefixed and zero-padded to 4 bytes', (t) => {
  const buf = new XdrWriter().string('abcde').opaque(Buffer.from([1])).fixedOpaque(Buffer.from([9, 8, 7, 6, 5]), 5).finish();
  t.is(buf.toString('hex'), '00000005' + '6162636465000000' + '00000001' + '01000000' + '0908070605000000');
  const r = new XdrReader(buf);
  t.is(r.string(), 'abcde');
  t.deepEqual([...r.opaque()], [1]);
  t.deepEqual([...r.fixedOpaque(5)], [9, 8, 7, 6, 5]);
  t.is(r.remaining, 0);
});

test('multi-byte UTF-8 strings count bytes, not characters', (t) => {
  const buf = new XdrWriter().string('é€').finish();
  t.is(buf.readUInt32BE(0), 5);
  t.is(buf.length, 12);
  t.is(new XdrReader(buf).string(), 'é€');
});

test('optional data and arrays', (t) => {
  const buf = new XdrWriter()
    .optional<string>(null, (w, v) => w.string(v))
    .optional('x', (w, v) => w.string(v))
    .array([1, 2, 3], (w, v) => w.int(v))
    .finish();
  const r = new XdrReader(buf);
  t.is(r.optional((rr) => rr.string()), null);
  t.is(r.optional((rr) => rr.string()), 'x');
  t.deepEqual(r.array((rr) => rr.int()), [1, 2, 3]);
});

test('reading past the end throws XdrError naming the item, never returns garbage', (t) => {
  const r = new XdrReader(Buffer.from('0000000a6162', 'hex'));
  const err = t.throws(() => r.string(), { instanceOf: XdrError });
  t.regex(err!.message, /truncated data: string<10>/);
});

test('an array count larger than the data left is refused before allocating', (t) => {
  const r = new XdrReader(Buffer.from('7fffffff00000001', 'hex'));
  t.throws(() => r.array((rr) => rr.int()), { instanceOf: XdrError, message: /claims 2147483647 items/ });
});

test('limits from the .x file are enforced both ways', (t) => {
  t.throws(() => new XdrWriter().string('abcdef', 5), { instanceOf: XdrError, message: /exceeds its limit of 5/ });
  t.throws(() => new XdrReader(new XdrWriter().string('abcdef').finish()).string(5), { message: /exceeds its limit of 5/ });
});

test('out-of-range values are refused, not wrapped', (t) => {
  t.throws(() => new XdrWriter().uint(-1), { instanceOf: XdrError });
  t.throws(() => new XdrWriter().uint(2 ** 32), { instanceOf: XdrError });
  t.throws(() => new XdrWriter().int(2 ** 31), { instanceOf: XdrError });
  t.throws(() => new XdrWriter().uint(1.5), { instanceOf: XdrError });
  t.throws(() => new XdrWriter().uhyper(-1n), { instanceOf: XdrError });
  t.throws(() => new XdrReader(Buffer.from('00000002', 'hex')).bool(), { message: /bool must be 0 or 1/ });
});

test('unsigned hypers beyond 2^53 are refused where a number is promised', (t) => {
  const r = new XdrReader(new XdrWriter().uhyper(2n ** 60n).finish());
  t.throws(() => r.uhyperNumber('capacity'), { message: /capacity 1152921504606846976 does not fit/ });
});

test('typed params of every type decode to JavaScript values', (t) => {
  const params: TypedParam[] = [
    { field: 'i', type: VIR_TYPED_PARAM_INT, value: -7 },
    { field: 'ui', type: VIR_TYPED_PARAM_UINT, value: 4000000000 },
    { field: 'l', type: VIR_TYPED_PARAM_LLONG, value: -5 },
    { field: 'ul', type: VIR_TYPED_PARAM_ULLONG, value: 1099511627776 },
    { field: 'huge', type: VIR_TYPED_PARAM_ULLONG, value: 2n ** 63n },
    { field: 'd', type: VIR_TYPED_PARAM_DOUBLE, value: 0.25 },
    { field: 'b', type: VIR_TYPED_PARAM_BOOLEAN, value: true },
    { field: 's', type: VIR_TYPED_PARAM_STRING, value: 'debian' },
  ];
  const w = new XdrWriter().array(params, writeTypedParam);
  const decoded = readTypedParams(new XdrReader(w.finish()), 64);
  t.deepEqual(decoded, params);
  t.deepEqual(typedParamsToObject(decoded), {
    i: -7,
    ui: 4000000000,
    l: -5,
    ul: 1099511627776,
    huge: 2n ** 63n,
    d: 0.25,
    b: true,
    s: 'debian',
  });
});

test('a typed param of unknown type is an error naming the field', (t) => {
  const buf = new XdrWriter().uint(1).string('weird').int(99).int(0).finish();
  t.throws(() => readTypedParams(new XdrReader(buf), 64), { instanceOf: XdrError, message: /'weird' has unknown type 99/ });
});

test('remote_error decodes into a LibvirtError with libvirt code, domain and message', (t) => {
  const buf = new XdrWriter()
    .int(42) // code VIR_ERR_NO_DOMAIN
    .int(10) // domain VIR_FROM_QEMU
    .optional("Domain not found: no domain with matching name 'x'", (w, v) => w.string(v))
    .int(2) // level
    .bool(false) // dom
    .optional('x', (w, v) => w.string(v))
    .bool(false)
    .bool(false)
    .int(0)
    .int(0)
    .bool(false) // net
    .finish();
  const r = new XdrReader(buf);
  const err = readRemoteError(r, 'REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME');
  r.assertEnd('remote_error');
  t.true(err instanceof LibvirtError);
  t.is(err.code, 42);
  t.is(err.codeName, 'VIR_ERR_NO_DOMAIN');
  t.is(err.domain, 10);
  t.is(err.message, "Domain not found: no domain with matching name 'x'");
  t.is(err.str1, 'x');
  t.is(err.procedure, 'REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME');
});

const header: PacketHeader = { program: 0x20008086, version: 1, procedure: 59, type: 1, serial: 7, status: 0 };

test('a packet is a length that counts itself, a 24-byte header and the payload', (t) => {
  const p = encodePacket(header, Buffer.from('00000001', 'hex'));
  t.is(p.readUInt32BE(0), 32);
  t.is(p.subarray(4, 28).toString('hex'), '20008086' + '00000001' + '0000003b' + '00000001' + '00000007' + '00000000');
});

test('the decoder reassembles packets split anywhere and separates packets sharing a chunk', (t) => {
  const a = encodePacket(header, Buffer.from('aabbccdd', 'hex'));
  const b = encodePacket({ ...header, serial: 8 }, Buffer.alloc(0));
  const all = Buffer.concat([a, b]);
  for (let cut = 1; cut < all.length; cut++) {
    const d = new PacketDecoder();
    const got = [...d.push(all.subarray(0, cut)), ...d.push(all.subarray(cut))];
    t.is(got.length, 2, `cut at ${cut}`);
    t.is(got[0].header.serial, 7);
    t.is(got[0].body.toString('hex'), 'aabbccdd');
    t.is(got[1].header.serial, 8);
    t.is(got[1].body.length, 0);
    t.is(d.pending, 0);
  }
});

test('the decoder refuses lengths outside the protocol instead of waiting for them', (t) => {
  const huge = Buffer.alloc(4);
  huge.writeUInt32BE(VIR_NET_MESSAGE_MAX + 5);
  t.throws(() => new PacketDecoder().push(huge), { instanceOf: PacketError, message: /exceeds libvirt's limit/ });
  const tiny = Buffer.alloc(4);
  tiny.writeUInt32BE(10);
  t.throws(() => new PacketDecoder().push(tiny), { instanceOf: PacketError, message: /shorter than a message header/ });
});

test('UUIDs format like virsh domuuid and parse back; bad ones are refused', (t) => {
  const raw = Buffer.from('0123456789abcdef0123456789abcdef', 'hex');
  t.is(formatUuid(raw), '01234567-89ab-cdef-0123-456789abcdef');
  t.deepEqual(parseUuid('01234567-89ab-cdef-0123-456789abcdef'), raw);
  t.throws(() => parseUuid('not-a-uuid'), { instanceOf: LibvirtError, message: /invalid UUID 'not-a-uuid'/ });
});
