// Hypervisor against the real libvirtd (qemu:///system), virsh as the oracle:
// versions, lookups, errors, many calls in flight, keepalive, lost
// connections, storage pools. No VM is started here.
import test from 'ava';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  Hypervisor,
  LibvirtError,
  VIR_ERR_INVALID_CONN,
  VIR_ERR_NO_CONNECT,
  VIR_ERR_NO_DOMAIN,
  VIR_ERR_NO_STORAGE_POOL,
  VIR_ERR_OPERATION_DENIED,
  VIR_ERR_RPC,
  spawnTransport,
  versionToString,
  type Transport,
} from '../lib/libvirt/index.js';

const run = promisify(execFile);

async function virsh(...args: string[]): Promise<string> {
  const { stdout } = await run('virsh', ['-c', 'qemu:///system', ...args]);
  return stdout;
}

function uniqueName(prefix: string): string {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}

async function connected(t: { teardown(fn: () => Promise<void>): void }, uri = 'qemu:///system'): Promise<Hypervisor> {
  const hv = new Hypervisor(uri);
  await hv.connect();
  t.teardown(() => hv.close());
  return hv;
}

test('versions, hostname and type match virsh', async (t) => {
  const hv = await connected(t);
  const version = await virsh('version', '--daemon');
  const daemon = /Running against daemon: (\S+)/.exec(version)![1];
  const hypervisor = /Running hypervisor: QEMU (\S+)/.exec(version)![1];
  t.is(versionToString(await hv.getLibVersion()), daemon);
  t.is(versionToString(await hv.getVersion()), hypervisor);
  t.is(await hv.getHostname(), (await virsh('hostname')).trim());
  t.is(await hv.getType(), 'QEMU');
  t.is(await hv.getUri(), 'qemu:///system');
  t.regex(await hv.getCapabilities(), /<capabilities>[\s\S]*<guest>/);
});

test('looking up a missing domain gives libvirt\'s error naming the domain', async (t) => {
  const hv = await connected(t);
  const name = uniqueName('vnbdlv-missing');
  const err = await t.throwsAsync(hv.lookupDomainByName(name), { instanceOf: LibvirtError });
  t.is(err!.code, VIR_ERR_NO_DOMAIN);
  t.is(err!.codeName, 'VIR_ERR_NO_DOMAIN');
  t.is(err!.message, `Domain not found: no domain with matching name '${name}'`);
  await t.throwsAsync(hv.lookupDomainByUUID('0badc0de-0000-4000-8000-000000000000'), { instanceOf: LibvirtError, code: VIR_ERR_NO_DOMAIN });
});

test('twenty calls in flight at once are all answered, each with its own reply', async (t) => {
  const hv = await connected(t);
  const hostname = (await virsh('hostname')).trim();
  const missing = Array.from({ length: 10 }, (_, i) => uniqueName(`vnbdlv-none${i}`));
  const results = await Promise.all([
    ...missing.map((name) =>
      hv.lookupDomainByName(name).then(
        () => 'found?!',
        (e: LibvirtError) => e.message,
      ),
    ),
    ...Array.from({ length: 5 }, () => hv.getHostname()),
    ...Array.from({ length: 5 }, () => hv.getLibVersion().then(versionToString)),
  ]);
  t.is(results.length, 20);
  // Each error names the domain of its own call: replies were not mixed up.
  missing.forEach((name, i) => t.is(results[i], `Domain not found: no domain with matching name '${name}'`));
  t.deepEqual(results.slice(10, 15), Array(5).fill(hostname));
  const daemon = /Running against daemon: (\S+)/.exec(await virsh('version', '--daemon'))![1];
  t.deepEqual(results.slice(15), Array(5).fill(daemon));
});

test('calls in flight when the socket dies are rejected, and later calls fail at once', async (t) => {
  const hv = await connected(t);
  await hv.getHostname();
  const calls = Array.from({ length: 20 }, () => hv.getHostname());
  hv.connection.transport.destroy();
  const results = await Promise.allSettled(calls);
  for (const r of results) {
    t.is(r.status, 'rejected');
    const e = (r as PromiseRejectedResult).reason;
    t.true(e instanceof LibvirtError);
    t.is((e as LibvirtError).code, VIR_ERR_RPC);
    t.regex((e as LibvirtError).message, /^REMOTE_PROC_CONNECT_GET_HOSTNAME got no reply: connection to libvirt at unix socket/);
  }
  t.false(hv.isConnected);
  t.throws(() => hv.connection, { instanceOf: LibvirtError, code: VIR_ERR_INVALID_CONN, message: /not connected to qemu:\/\/\/system/ });
  await t.throwsAsync(hv.getHostname(), { instanceOf: LibvirtError, code: VIR_ERR_INVALID_CONN });
});

test('over a child process (virt-ssh-helper, as qemu+ssh uses): works, and its death rejects calls in flight', async (t) => {
  let transport: Transport | undefined;
  const hv = new Hypervisor('qemu:///system', {
    transport: async (u) => (transport = await spawnTransport('virt-ssh-helper', [u.remoteName])),
  });
  await hv.connect();
  t.teardown(() => hv.close());
  t.is(await hv.getHostname(), (await virsh('hostname')).trim());
  t.truthy(transport?.pid);

  // Stopped first, the helper relays nothing: all 20 calls are surely in flight when it dies.
  process.kill(transport!.pid!, 'SIGSTOP');
  const calls = Array.from({ length: 20 }, () => hv.getHostname());
  await new Promise((resolve) => setTimeout(resolve, 100));
  process.kill(transport!.pid!, 'SIGKILL');
  const results = await Promise.allSettled(calls);
  const rejected = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  t.is(rejected.length, 20);
  for (const r of rejected) {
    t.true(r.reason instanceof LibvirtError);
    t.is(r.reason.code, VIR_ERR_RPC);
    t.regex(r.reason.message, /got no reply: connection to libvirt at virt-ssh-helper qemu:\/\/\/system (was closed by the other end|failed)/);
  }
  t.false(hv.isConnected);
});

test('our keepalive PING is answered by the daemon with PONG', async (t) => {
  const hv = new Hypervisor('qemu:///system', { keepaliveInterval: 1, keepaliveCount: 30 });
  await hv.connect();
  t.teardown(() => hv.close());
  const kind = await new Promise((resolve) => hv.connection.on('keepalive', resolve));
  t.is(kind, 'pong');
  t.truthy(await hv.getHostname());
});

test('the daemon\'s keepalive PING is answered, so the connection stays up', async (t) => {
  // Our own PINGs seldom; the daemon (keepalive_interval 5 s) pings an idle client.
  const hv = new Hypervisor('qemu:///system', { keepaliveInterval: 600 });
  await hv.connect();
  t.teardown(() => hv.close());
  const pings: string[] = [];
  await new Promise<void>((resolve) =>
    hv.connection.on('keepalive', (kind) => {
      pings.push(kind);
      if (pings.length === 2) resolve();
    }),
  );
  t.deepEqual(pings, ['ping', 'ping']);
  t.truthy(await hv.getHostname());
  t.true(hv.isConnected);
});

test('a socket nobody listens on gives a clear connect error', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnbdlv-nosock-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'libvirt-sock');
  const hv = new Hypervisor(`qemu:///system?socket=${socket}`);
  const err = await t.throwsAsync(hv.connect(), { instanceOf: LibvirtError });
  t.is(err!.code, VIR_ERR_NO_CONNECT);
  t.true(err!.message.includes(`cannot connect to libvirt at unix socket ${socket}`), err!.message);
  t.false(hv.isConnected);
});

test('a read-only connection reads, and the daemon refuses its writes', async (t) => {
  const hv = new Hypervisor('qemu:///system', { readOnly: true });
  await hv.connect();
  t.teardown(() => hv.close());
  t.is(await hv.getHostname(), (await virsh('hostname')).trim());
  const err = await t.throwsAsync(hv.defineXML(`<domain type='qemu'><name>${uniqueName('vnbdlv-ro')}</name></domain>`), { instanceOf: LibvirtError });
  t.is(err!.code, VIR_ERR_OPERATION_DENIED);
  t.regex(err!.message, /read only/i);
});

test('a URI naming the socket explicitly connects there', async (t) => {
  const hv = await connected(t, 'qemu:///system?socket=/var/run/libvirt/libvirt-sock');
  t.is(await hv.getUri(), 'qemu:///system');
});

/** Ids of libvirtd's clients that are this process, per virt-admin. */
async function ourDaemonClients(): Promise<string[]> {
  const { stdout } = await run('virt-admin', ['srv-clients-list', 'libvirtd']);
  const ours: string[] = [];
  for (const m of stdout.matchAll(/^\s*(\d+)\s+unix/gm)) {
    const info = await run('virt-admin', ['client-info', 'libvirtd', m[1]]).catch(() => ({ stdout: '' }));
    if (new RegExp(`unix_process_id\\s*:\\s*${process.pid}\\b`).test(info.stdout)) ours.push(m[1]);
  }
  return ours;
}

// Serial: no other connection of this process may be open meanwhile.
test.serial('close() says goodbye and is idempotent; the daemon forgets the client', async (t) => {
  const hv = new Hypervisor();
  await hv.connect();
  await hv.getHostname();
  t.is((await ourDaemonClients()).length, 1, 'virt-admin sees our connection');
  await hv.close();
  await hv.close();
  t.false(hv.isConnected);
  await t.throwsAsync(hv.getHostname(), { instanceOf: LibvirtError, code: VIR_ERR_INVALID_CONN });
  // The daemon drops the client as it sees the socket close; wait for that.
  while ((await ourDaemonClients()).length > 0) await new Promise((r) => setTimeout(r, 50));
  t.pass();
});

test('storage pool lookup by target path and refresh, checked with virsh vol-list', async (t) => {
  const hv = await connected(t);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnbdlv-pool-'));
  const pool = uniqueName('vnbdlv-pool');
  t.teardown(async () => {
    await virsh('pool-destroy', pool).catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const err = await t.throwsAsync(hv.storagePoolLookupByTargetPath(dir), { instanceOf: LibvirtError });
  t.is(err!.code, VIR_ERR_NO_STORAGE_POOL);

  await virsh('pool-create-as', pool, 'dir', '--target', dir);
  const found = await hv.storagePoolLookupByTargetPath(dir);
  t.is(found.getName(), pool);
  t.is(found.getUUID(), (await virsh('pool-uuid', pool)).trim());
  t.regex(await found.getXMLDesc(), new RegExp(`<path>${dir}</path>`));

  await run('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(dir, 'restored.qcow2'), '1M']);
  t.false((await virsh('vol-list', pool)).includes('restored.qcow2'), 'libvirt does not see the file before a refresh');
  await found.refresh();
  t.true((await virsh('vol-list', pool)).includes('restored.qcow2'));
});
