/**
 * lib/remote against a real OpenSSH server on loopback (test/helpers/sshd.ts):
 * commands and their failures (named host, exit status, what was said),
 * file transfer both ways byte for byte, no clobbering of existing names,
 * and a qemu-nbd started over ssh on TCP that serves the image, refuses a
 * taken port with qemu-nbd's own message, and does not outlive the ssh
 * process that started it, even when that process, or the shell it runs
 * there, is killed.
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { NbdClient } from '../lib/nbd/client.js';
import { FileExistsError } from '../lib/remote/hostFiles.js';
import { SshHostFiles } from '../lib/remote/sshHostFiles.js';
import { RemoteQemuNbd } from '../lib/remote/remoteQemuNbd.js';
import { SshError, SshHost } from '../lib/remote/ssh.js';
import { MiB, TestHost } from './helpers/host.js';
import { processesMentioning } from './helpers/restore-check.js';
import { startSshd, type Sshd } from './helpers/sshd.js';
import { freePort } from './helpers/ports.js';

function hostOf(sshd: Sshd, extra: { knownHosts?: string | null } = {}): SshHost {
  return new SshHost({
    host: sshd.host,
    port: sshd.port,
    user: 'root',
    privateKey: sshd.clientKey,
    ...(extra.knownHosts === null ? {} : { knownHosts: extra.knownHosts ?? sshd.knownHosts }),
  });
}


/** Waits (bounded) until no process mentions `needle`; returns what is still there. */
async function gone(needle: string): Promise<string[]> {
  for (let i = 0; i < 200; i++) {
    const left = await processesMentioning(needle);
    if (left.length === 0) return [];
    await sleep(50);
  }
  return processesMentioning(needle);
}

test('commands run there; failures name the host, the status and what was said', async (t) => {
  const sshd = await startSshd(t);
  const ssh = hostOf(sshd);
  t.is((await ssh.run(['printf', '%s', "it's a b"])).stdout.toString(), "it's a b");
  const failed = await t.throwsAsync(ssh.run(['ls', '/no/such/dir']), { instanceOf: SshError });
  t.regex(failed!.message, new RegExp(`^ls /no/such/dir failed on root@127\\.0\\.0\\.1:${sshd.port} \\(exit 2\\): .*No such file`));
  // Without the known_hosts file the host key is unknown: BatchMode refuses at once instead of asking.
  const unknown = await t.throwsAsync(hostOf(sshd, { knownHosts: '/dev/null' }).run(['true']), { instanceOf: SshError });
  t.regex(unknown!.message, /^ssh to root@127\.0\.0\.1:\d+ failed: .*Host key verification failed/);
});

test('files go both ways byte for byte, and existing names are never clobbered', async (t) => {
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const files = new SshHostFiles(hostOf(sshd));
  const bytes = randomBytes(3 * MiB + 17);
  const there = host.path('there.bin');
  await files.writeNew(there, bytes);
  t.deepEqual(await readFile(there), bytes);
  t.deepEqual(await files.readFile(there, 4 * MiB), bytes);
  const streamed: Buffer[] = [];
  for await (const chunk of await files.openRead(there)) streamed.push(chunk as Buffer);
  t.deepEqual(Buffer.concat(streamed), bytes);
  await t.throwsAsync(files.readFile(there, MiB), { message: /printed more than/ });
  await t.throwsAsync(files.openRead(host.path('missing')), { message: /missing cannot be read on root@127\.0\.0\.1/ });

  await t.throwsAsync(files.writeNew(there, 'other'), { instanceOf: SshError });
  t.deepEqual(await readFile(there), bytes, 'writeNew refused an existing file');
  const temp = host.path('temp');
  await writeFile(temp, 'new');
  await t.throwsAsync(files.commit(temp, there, false), { instanceOf: FileExistsError });
  t.deepEqual(await readFile(there), bytes, 'commit without overwrite refused an existing name');
  await files.commit(temp, there, true);
  t.is(await readFile(there, 'utf8'), 'new');
  t.false(await files.exists(temp));
});

test('qemu-nbd over ssh serves on TCP, refuses a taken port, and dies with the ssh that started it', async (t) => {
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const ssh = hostOf(sshd);
  const image = await host.createImage('disk.qcow2', { format: 'qcow2', size: '8M', writes: [{ pattern: 0x5a, offset: MiB, length: 64 * 1024 }] });
  const port = await freePort();
  const server = await RemoteQemuNbd.start(ssh, { image: image.path, format: 'qcow2', exportName: 'sda', bind: '127.0.0.1', port, readOnly: true, persistent: true });
  t.teardown(() => server.stop());
  const client = await NbdClient.connect({ host: '127.0.0.1', port }, { exportName: 'sda' });
  t.is(client.size, 8 * MiB);
  t.deepEqual(await client.read(MiB, 4096), Buffer.alloc(4096, 0x5a));
  await client.disconnect();

  const other = host.path('other.qcow2');
  await host.createImage('other.qcow2', { format: 'qcow2', size: '1M' });
  const taken = await t.throwsAsync(RemoteQemuNbd.start(ssh, { image: other, format: 'qcow2', exportName: 'x', bind: '127.0.0.1', port, readOnly: true }), { instanceOf: SshError });
  t.regex(taken!.message, /qemu-nbd .* failed on root@127\.0\.0\.1:\d+ \(exit 1\): .*(Address already in use|Failed to bind)/);
  t.deepEqual(await gone(other), []);

  await server.stop();
  t.deepEqual(await gone(image.path), [], 'stop() ended qemu-nbd there');

  // Our process dying (its ssh killed with SIGKILL) must not leave qemu-nbd behind.
  const second = await RemoteQemuNbd.start(ssh, { image: image.path, format: 'qcow2', exportName: 'sda', bind: '127.0.0.1', port: await freePort(), readOnly: true, persistent: true });
  t.true((await processesMentioning(image.path)).some((p) => /qemu-nbd/.test(p)));
  // Only the ssh started with this test's key (other test files run ssh sessions at the same time).
  const sshPid = (await processesMentioning(sshd.clientKey)).filter((p) => /^\d+: ssh [\s\S]*qemu-nbd/.test(p)).map((p) => Number(p.split(':')[0]));
  t.is(sshPid.length, 1, "one ssh session runs qemu-nbd");
  for (const pid of sshPid) process.kill(pid, 'SIGKILL');
  t.deepEqual(await gone(image.path), [], 'qemu-nbd ended with the session');
  await second.stop();

  // The session's shell there signalled (sshd stopping, an admin): it still stops qemu-nbd first.
  const third = await RemoteQemuNbd.start(ssh, { image: image.path, format: 'qcow2', exportName: 'sda', bind: '127.0.0.1', port: await freePort(), readOnly: true, persistent: true });
  const shells = (await processesMentioning(image.path)).filter((p) => /^\d+: sh -c /.test(p)).map((p) => Number(p.split(':')[0]));
  t.is(shells.length, 1, 'one remote shell runs qemu-nbd');
  for (const pid of shells) process.kill(pid, 'SIGTERM');
  t.deepEqual(await gone(image.path), [], 'qemu-nbd ended with its shell');
  await third.stop();
});
