// The qemu+ssh:// transport through a real OpenSSH server on loopback (our
// own sshd, its own keys, test/helpers/sshd.ts) to the real libvirtd, virsh
// as the oracle: the same calls as over the unix socket, a running VM, the
// far-side program libvirt uses (virt-ssh-helper), read-only, close, and
// ssh's refusals (unknown host key, unauthorized key) as clear errors.
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  Hypervisor,
  LibvirtError,
  VIR_ERR_NO_DOMAIN,
  VIR_ERR_OPERATION_DENIED,
  VIR_ERR_RPC,
  versionToString,
  type HypervisorOptions,
} from '../lib/libvirt/index.js';
import { domainXml } from './helpers/domain-xml.js';
import { startSshd, type Sshd } from './helpers/sshd.js';

const run = promisify(execFile);

async function virsh(...args: string[]): Promise<string> {
  const { stdout } = await run('virsh', ['-c', 'qemu:///system', ...args]);
  return stdout;
}

function uniqueName(prefix: string): string {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}

async function daemonVersions(): Promise<{ daemon: string; hypervisor: string }> {
  const out = await virsh('version', '--daemon');
  return {
    daemon: /Running against daemon: (\S+)/.exec(out)![1],
    hypervisor: /Running hypervisor: QEMU (\S+)/.exec(out)![1],
  };
}

async function overSsh(t: ExecutionContext, sshd: Sshd, params: Record<string, string | null> = {}, options: HypervisorOptions = {}): Promise<Hypervisor> {
  const hv = new Hypervisor(sshd.uri(params), options);
  t.teardown(() => hv.close());
  await hv.connect();
  return hv;
}

/** A defined (not started) domain, undefined with virsh in teardown whatever happens. */
function undefineLater(t: ExecutionContext, name: string): void {
  t.teardown(async () => {
    await virsh('destroy', name).catch(() => {});
    await virsh('undefine', name, '--checkpoints-metadata').catch(() => {});
  });
}

test('through sshd: versions, hostname, define, list and lookups answer as virsh does', async (t) => {
  const sshd = await startSshd(t);
  const hv = await overSsh(t, sshd);
  const { daemon, hypervisor } = await daemonVersions();
  t.is(versionToString(await hv.getLibVersion()), daemon);
  t.is(versionToString(await hv.getVersion()), hypervisor);
  t.is(await hv.getHostname(), (await virsh('hostname')).trim());
  t.is(await hv.getUri(), 'qemu:///system');
  // It really went through our sshd, and the far side runs libvirt's own proxy.
  t.regex(sshd.log(), /Accepted publickey for root from 127\.0\.0\.1/);
  t.true(sshd.sessionCommands().some((c) => c === 'virt-ssh-helper qemu:///system'), sshd.sessionCommands().join('\n'));

  const missing = uniqueName('vnbdssh-missing');
  const err = await t.throwsAsync(hv.lookupDomainByName(missing), { instanceOf: LibvirtError });
  t.is(err!.code, VIR_ERR_NO_DOMAIN);
  t.is(err!.message, `Domain not found: no domain with matching name '${missing}'`);

  const name = uniqueName('vnbdssh-def');
  undefineLater(t, name);
  const dom = await hv.defineXML(domainXml({ name, disks: [], memoryMiB: 32 }));
  t.true((await virsh('list', '--all', '--name')).split('\n').includes(name));
  t.is(dom.getUUID(), (await virsh('domuuid', name)).trim());
  const listed = (await hv.listAllDomains()).find((d) => d.getName() === name);
  t.is(listed?.getUUID(), dom.getUUID());
  t.is((await hv.lookupDomainByUUID(dom.getUUID())).getName(), name);
  t.false(await dom.isActive());

  // Many calls in flight through ssh, each answer matched to its own question.
  const hostname = (await virsh('hostname')).trim();
  const others = Array.from({ length: 10 }, (_, i) => uniqueName(`vnbdssh-none${i}`));
  const answers = await Promise.all([
    ...others.map((n) => hv.lookupDomainByName(n).then(() => 'found?!', (e: LibvirtError) => e.message)),
    ...others.map(() => hv.lookupDomainByName(name).then((d) => d.getUUID())),
    ...others.map(() => hv.getHostname()),
  ]);
  others.forEach((n, i) => t.is(answers[i], `Domain not found: no domain with matching name '${n}'`));
  t.deepEqual(answers.slice(10, 20), Array(10).fill(dom.getUUID()));
  t.deepEqual(answers.slice(20), Array(10).fill(hostname));
});

test('through sshd: a running VM answers a QMP command and takes a checkpoint virsh lists', async (t) => {
  const sshd = await startSshd(t);
  const name = uniqueName('vnbdssh-vm');
  const disk = path.join(sshd.dir, 'vda.qcow2');
  undefineLater(t, name);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '1M']);
  const hv = await overSsh(t, sshd);
  const dom = await hv.defineXML(domainXml({ name, disks: [{ target: 'vda', path: disk, format: 'qcow2' }], memoryMiB: 32, machine: 'pc' }));
  await dom.create();
  t.is((await virsh('domstate', name)).trim(), 'running');

  const status = JSON.parse(await dom.qemuMonitorCommand('{"execute":"query-status"}')) as { return: { status: string } };
  t.is(status.return.status, 'running');

  await dom.checkpointCreateXML('<domaincheckpoint><name>vnbdssh-cp1</name></domaincheckpoint>');
  t.deepEqual((await dom.listAllCheckpoints()).map((c) => c.getName()), ['vnbdssh-cp1']);
  t.deepEqual((await virsh('checkpoint-list', name, '--name')).split('\n').filter(Boolean), ['vnbdssh-cp1']);
  // The checkpoint is a dirty bitmap of that name in the running QEMU.
  const nodes = JSON.parse(await dom.qemuMonitorCommand('{"execute":"query-named-block-nodes","arguments":{"flat":true}}')) as {
    return: { 'dirty-bitmaps'?: { name: string }[] }[];
  };
  t.true(nodes.return.some((n) => (n['dirty-bitmaps'] ?? []).some((bm) => bm.name === 'vnbdssh-cp1')));
});

test('through sshd: read-only with proxy=native runs virt-ssh-helper -r, writes are refused, close() ends every process', async (t) => {
  const sshd = await startSshd(t);
  const hv = await overSsh(t, sshd, { proxy: 'native' }, { readOnly: true });
  const pid = hv.connection.transport.pid!;
  t.true(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('ssh\0'));
  t.is(await hv.getHostname(), (await virsh('hostname')).trim());
  t.true(sshd.sessionCommands().includes('virt-ssh-helper -r qemu:///system'), sshd.sessionCommands().join('\n'));
  const err = await t.throwsAsync(hv.defineXML(domainXml({ name: uniqueName('vnbdssh-ro'), disks: [] })), { instanceOf: LibvirtError });
  t.is(err!.code, VIR_ERR_OPERATION_DENIED);

  await hv.close();
  t.false(hv.isConnected);
  // The ssh client exits, and sshd's side of the session winds down after it
  // (waited for: a process that never goes away fails the test by its timeout).
  while (fs.existsSync(`/proc/${pid}`)) await new Promise((r) => setTimeout(r, 50));
  while (sshd.sessionCommands().length > 0) await new Promise((r) => setTimeout(r, 50));
  t.pass();
});

test('through sshd: an unknown host key is refused with ssh\'s words; no_verify=1 accepts and records it', async (t) => {
  const sshd = await startSshd(t);
  const knownHosts = path.join(sshd.dir, 'fresh_known_hosts');
  fs.writeFileSync(knownHosts, '');

  const refused = new Hypervisor(sshd.uri({ known_hosts: knownHosts }));
  const err = await t.throwsAsync(refused.connect(), { instanceOf: LibvirtError });
  t.is(err!.code, VIR_ERR_RPC);
  t.true(err!.message.includes(`ssh root@127.0.0.1:${sshd.port} was closed by the other end`), err!.message);
  t.regex(err!.message, /Host key verification failed/);
  t.false(refused.isConnected);
  t.is(fs.readFileSync(knownHosts, 'utf8'), '');

  const hv = await overSsh(t, sshd, { known_hosts: knownHosts, no_verify: '1' });
  t.is(await hv.getHostname(), (await virsh('hostname')).trim());
  // ssh may hash the host name (Debian's HashKnownHosts): ask ssh-keygen what it recorded.
  const { stdout } = await run('ssh-keygen', ['-F', `[127.0.0.1]:${sshd.port}`, '-f', knownHosts]);
  t.true(stdout.includes(sshd.hostPublicKey), stdout);
});

test('through sshd: a key the server does not know is refused without a prompt, naming the reason', async (t) => {
  const sshd = await startSshd(t);
  const stranger = path.join(sshd.dir, 'stranger_key');
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', stranger]);
  const hv = new Hypervisor(sshd.uri({ keyfile: stranger }));
  const err = await t.throwsAsync(hv.connect(), { instanceOf: LibvirtError });
  t.is(err!.code, VIR_ERR_RPC);
  t.regex(err!.message, /Permission denied \(publickey\)/);
  t.false(hv.isConnected);
});
