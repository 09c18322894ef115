import test from 'ava';
import { NbdUriError, formatNbdUri, isNbdUri, parseNbdUri, type NbdUri } from '../lib/nbd/uri.js';

test('unix socket URI: export name and socket path', (t) => {
  t.deepEqual(parseNbdUri('nbd+unix:///vda?socket=/run/backup/vda.sock'), {
    transport: 'unix',
    tls: false,
    exportName: 'vda',
    socket: '/run/backup/vda.sock',
  });
});

test('unix socket URI without export name selects the default export', (t) => {
  t.is(parseNbdUri('nbd+unix://?socket=/s').exportName, '');
  t.is(parseNbdUri('nbd+unix:///?socket=/s').exportName, '');
});

test('tcp URI: host, port, export', (t) => {
  t.deepEqual(parseNbdUri('nbd://backup.example.org:10810/sda'), {
    transport: 'tcp',
    tls: false,
    exportName: 'sda',
    host: 'backup.example.org',
    port: 10810,
  });
  const noPort = parseNbdUri('nbd://10.0.0.1/x');
  t.is(noPort.port, undefined);
  t.is(noPort.host, '10.0.0.1');
});

test('IPv6 literal host', (t) => {
  const u = parseNbdUri('nbd://[::1]:10809/disk');
  t.is(u.host, '::1');
  t.is(u.port, 10809);
  t.is(formatNbdUri(u), 'nbd://[::1]:10809/disk');
});

test('nbds and nbds+unix require TLS and carry the certificate directory', (t) => {
  const u = parseNbdUri('nbds+unix:///vda?socket=/tmp/s.sock&tls-certificates=/etc/pki/qemu');
  t.true(u.tls);
  t.is(u.transport, 'unix');
  t.is(u.tlsCertificates, '/etc/pki/qemu');
  const v = parseNbdUri('nbds://host/vda?tls-certificates=/certs&tls-verify-peer=false&tls-hostname=backup.local');
  t.true(v.tls);
  t.is(v.transport, 'tcp');
  t.false(v.tlsVerifyPeer);
  t.is(v.tlsHostname, 'backup.local');
});

test('percent-encoded export names and paths are decoded, and encoded back', (t) => {
  const u = parseNbdUri('nbd+unix:///my%20disk/part%3A1?socket=/tmp/a%20b.sock');
  t.is(u.exportName, 'my disk/part:1');
  t.is(u.socket, '/tmp/a b.sock');
  t.deepEqual(parseNbdUri(formatNbdUri(u)), u);
});

test('a + in a socket path stays a plus', (t) => {
  t.is(parseNbdUri('nbd+unix:///x?socket=/tmp/a+b.sock').socket, '/tmp/a+b.sock');
});

test('format round-trips every scheme', (t) => {
  const cases: NbdUri[] = [
    { transport: 'unix', tls: false, exportName: 'vda', socket: '/run/x.sock' },
    { transport: 'unix', tls: true, exportName: 'sdb', socket: '/run/y.sock', tlsCertificates: '/pki' },
    { transport: 'tcp', tls: false, exportName: '', host: 'h' },
    { transport: 'tcp', tls: true, exportName: 'e', host: 'h', port: 1234, tlsVerifyPeer: false, tlsHostname: 'n' },
  ];
  for (const u of cases) t.deepEqual(parseNbdUri(formatNbdUri(u)), u, formatNbdUri(u));
  t.is(formatNbdUri(cases[0]), 'nbd+unix:///vda?socket=/run/x.sock');
  t.is(formatNbdUri(cases[1]), 'nbds+unix:///sdb?socket=/run/y.sock&tls-certificates=/pki');
});

test('bad URIs are refused with a message naming the problem', (t) => {
  const bad: Array<[string, RegExp]> = [
    ['/dev/nbd0', /expected scheme/],
    ['http://host/x', /unknown scheme 'http'/],
    ['nbd+unix:///vda', /missing socket=PATH/],
    ['nbd+unix://host/vda?socket=/s', /has no host/],
    ['nbd:///vda', /missing host/],
    ['nbd://host:99999/x', /bad port/],
    ['nbd://host/x?socket=/s', /only valid with nbd\+unix/],
    ['nbd://host/x?frobnicate=1', /unknown query parameter 'frobnicate'/],
    ['nbds://host/x?tls-verify-peer=maybe', /tls-verify-peer must be true or false/],
    ['nbd://host/%zz', /bad percent-encoding in export name/],
    ['nbd://user@host/x', /user information/],
  ];
  for (const [uri, message] of bad) {
    const err = t.throws(() => parseNbdUri(uri), { instanceOf: NbdUriError }, uri);
    t.regex(err?.message ?? '', message, uri);
    t.is(err?.uri, uri);
  }
});

test('isNbdUri tells NBD URIs from paths and other URIs', (t) => {
  t.true(isNbdUri('nbd+unix:///x?socket=/s'));
  t.true(isNbdUri('NBDS://h/x'));
  t.false(isNbdUri('/var/lib/libvirt/images/x.qcow2'));
  t.false(isNbdUri('qemu+ssh://host/system'));
});
