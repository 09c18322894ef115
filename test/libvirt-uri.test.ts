// Libvirt URI parsing: pure, small inputs.
import test from 'ava';
import { parseLibvirtUri, sshCommand, tcpPort } from '../lib/libvirt/uri.js';
import { LibvirtError } from '../lib/libvirt/errors.js';

test('qemu:///system is the local unix transport and opens "qemu:///system"', (t) => {
  const u = parseLibvirtUri('qemu:///system');
  t.is(u.driver, 'qemu');
  t.is(u.transport, 'unix');
  t.is(u.host, undefined);
  t.is(u.path, '/system');
  t.is(u.remoteName, 'qemu:///system');
});

test('qemu:///session keeps its path', (t) => {
  const u = parseLibvirtUri('qemu:///session');
  t.is(u.transport, 'unix');
  t.is(u.remoteName, 'qemu:///session');
});

test('?socket= overrides the socket and is not passed to the daemon', (t) => {
  const u = parseLibvirtUri('qemu:///system?socket=/tmp/x/libvirt-sock');
  t.is(u.params.socket, '/tmp/x/libvirt-sock');
  t.is(u.remoteName, 'qemu:///system');
});

test('qemu+ssh://user@host:port/system', (t) => {
  const u = parseLibvirtUri('qemu+ssh://backup@kvm1.example.org:2222/system?keyfile=/root/.ssh/id_backup');
  t.is(u.transport, 'ssh');
  t.is(u.user, 'backup');
  t.is(u.host, 'kvm1.example.org');
  t.is(u.port, 2222);
  t.is(u.path, '/system');
  t.is(u.remoteName, 'qemu:///system');
  const { command, args } = sshCommand(u);
  t.is(command, 'ssh');
  t.deepEqual(args.slice(-2), ['kvm1.example.org', "virt-ssh-helper 'qemu:///system'"]);
  t.true(args.includes('-p') && args.includes('2222'));
  t.true(args.includes('-l') && args.includes('backup'));
  t.true(args.includes('-i') && args.includes('/root/.ssh/id_backup'));
});

test('qemu+ssh with ?socket= pipes through nc -U on the far side', (t) => {
  const { args } = sshCommand(parseLibvirtUri('qemu+ssh://h/system?socket=/run/libvirt/virtqemud-sock'));
  t.is(args[args.length - 1], "nc -U '/run/libvirt/virtqemud-sock'");
});

test('qemu+tcp:// and IPv6 hosts; default ports', (t) => {
  const a = parseLibvirtUri('qemu+tcp://10.0.0.5/system');
  t.is(a.transport, 'tcp');
  t.is(a.host, '10.0.0.5');
  t.is(tcpPort(a), 16509);
  const b = parseLibvirtUri('qemu+tcp://[fe80::1]:16000/system');
  t.is(b.host, 'fe80::1');
  t.is(tcpPort(b), 16000);
  const c = parseLibvirtUri('qemu://host/system');
  t.is(c.transport, 'tls');
  t.is(tcpPort(c), 16514);
});

test('daemon-side query parameters are passed on in the open name', (t) => {
  t.is(parseLibvirtUri('qemu+ssh://h/system?mode=legacy&foo=bar').remoteName, 'qemu:///system?foo=bar');
  t.is(parseLibvirtUri('qemu:///system?name=qemu:///embed').remoteName, 'qemu:///embed');
});

test('bad URIs are refused with a message naming the URI and the problem', (t) => {
  const cases: [string, RegExp][] = [
    ['system', /expected driver\[\+transport\]:\/\//],
    ['qemu+carrier-pigeon://h/system', /transport 'carrier-pigeon' is not supported/],
    ['qemu+ssh:///system', /the ssh transport needs a host/],
    ['qemu+unix://host/system', /the unix transport takes no host/],
    ['qemu://', /missing path/],
  ];
  for (const [uri, message] of cases) {
    const err = t.throws(() => parseLibvirtUri(uri), { instanceOf: LibvirtError });
    t.true(err!.message.includes(`'${uri}'`), err!.message);
    t.regex(err!.message, message);
  }
});
