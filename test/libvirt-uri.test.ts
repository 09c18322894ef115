// Libvirt URI parsing: pure, small inputs.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
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
  // libvirt's default proxy (auto): virt-ssh-helper where the far side has it, run by sh.
  t.is(args[args.length - 2], 'kvm1.example.org');
  t.regex(args[args.length - 1], /^sh -c '.*virt-ssh-helper .*qemu:\/\/\/system/);
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

test('proxy=native runs virt-ssh-helper, with -r when read-only; netcat is refused with it', (t) => {
  const u = parseLibvirtUri('qemu+ssh://h/system?proxy=native');
  t.is(sshCommand(u).args.at(-1), "virt-ssh-helper 'qemu:///system'");
  t.is(sshCommand(u, true).args.at(-1), "virt-ssh-helper -r 'qemu:///system'");
  t.throws(() => sshCommand(parseLibvirtUri('qemu+ssh://h/system?proxy=native&netcat=/opt/nc')), {
    instanceOf: LibvirtError,
    message: /netcat is not valid with proxy=native/,
  });
});

/**
 * Runs the far-side command of an ssh URI the way sshd does (a shell's -c),
 * with PATH holding only `sh` and stub programs that print their arguments,
 * one [bracketed] argument each.
 */
function runFarSide(t: ExecutionContext, uri: string, stubs: readonly string[]): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnbdlv-farside-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.symlinkSync('/bin/sh', path.join(dir, 'sh'));
  for (const name of stubs) {
    fs.writeFileSync(path.join(dir, name), `#!/bin/sh\nprintf '%s' ${name}; printf ' [%s]' "$@"; echo\n`, { mode: 0o755 });
  }
  const command = sshCommand(parseLibvirtUri(uri)).args.at(-1)!;
  return execFileSync('/bin/sh', ['-c', command], { env: { PATH: dir }, encoding: 'utf8' }).trim();
}

test('proxy=auto on the far side: virt-ssh-helper when present, else nc -U on the socket; quoting survives', (t) => {
  const uri = "qemu+ssh://h/system?name=qemu:///it's here";
  t.is(runFarSide(t, uri, ['virt-ssh-helper', 'nc']), "virt-ssh-helper [qemu:///it's here]");
  t.is(runFarSide(t, uri, ['nc']), 'nc [-U] [/var/run/libvirt/libvirt-sock]');
});

test('?netcat= or proxy=netcat pipes through nc -U, as libvirt does', (t) => {
  t.is(sshCommand(parseLibvirtUri('qemu+ssh://h/system?netcat=/opt/bin/nc')).args.at(-1), "/opt/bin/nc -U '/var/run/libvirt/libvirt-sock'");
  t.is(sshCommand(parseLibvirtUri('qemu+ssh://h/system?proxy=netcat')).args.at(-1), "nc -U '/var/run/libvirt/libvirt-sock'");
});

test('host key options: no_verify, known_hosts, known_hosts_verify; bad values are refused', (t) => {
  const opts = (uri: string): string[] => {
    const { args } = sshCommand(parseLibvirtUri(uri));
    return args.flatMap((a, i) => (args[i - 1] === '-o' ? [a] : []));
  };
  t.deepEqual(opts('qemu+ssh://h/system'), ['BatchMode=yes']);
  t.deepEqual(opts('qemu+ssh://h/system?no_verify=1'), ['BatchMode=yes', 'StrictHostKeyChecking=no']);
  t.deepEqual(opts('qemu+ssh://h/system?no_verify=0'), ['BatchMode=yes']);
  t.deepEqual(opts('qemu+ssh://h/system?known_hosts=/tmp/k%20h&known_hosts_verify=auto'), [
    'BatchMode=yes',
    'UserKnownHostsFile="/tmp/k h"',
    'StrictHostKeyChecking=accept-new',
  ]);
  t.deepEqual(opts('qemu+ssh://h/system?known_hosts_verify=ignore'), ['BatchMode=yes', 'StrictHostKeyChecking=no']);
  t.throws(() => sshCommand(parseLibvirtUri('qemu+ssh://h/system?no_verify=yes')), { instanceOf: LibvirtError, message: /no_verify='yes' must be an integer/ });
  t.throws(() => sshCommand(parseLibvirtUri('qemu+ssh://h/system?known_hosts_verify=maybe')), {
    instanceOf: LibvirtError,
    message: /known_hosts_verify 'maybe' is not one of normal, auto, ignore/,
  });
});
