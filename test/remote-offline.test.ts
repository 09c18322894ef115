/**
 * Remote offline backup: our virtnbdbackup runs as another host (a UTS
 * namespace named backup-host, test/helpers/remote-run.ts) against libvirtd
 * through qemu+ssh:// (our own sshd on loopback). The domain is shut off,
 * so qemu-nbd is started on the hypervisor over ssh, on TCP, exporting the
 * newest checkpoint's bitmap: the inc holds exactly the ranges qemu-io
 * wrote into the stopped domain's image, its image info comes from
 * qemu-img run over ssh, qemu-nbd is gone afterwards, and the set rebuilds
 * to the image. Wrong ssh logins fail clearly, naming the host.
 */
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import test from 'ava';
import { KiB, MiB, TestHost } from './helpers/host.js';
import { compareImages, writeImagePattern } from './helpers/image.js';
import { listFiles } from './helpers/peer.js';
import { ourRestore, processesMentioning } from './helpers/restore-check.js';
import { assertNothingLeft, dataFrameRanges, jobArgs, runBackup, streamMeta, type JobPaths } from './helpers/backup-run.js';
import { runAsBackupHost } from './helpers/remote-run.js';
import { startSshd } from './helpers/sshd.js';
import { freePort } from './helpers/ports.js';

/** A port per test file run, so parallel runs of other files do not collide with ours. */

test('remote offline inc over ssh holds exactly the writes made while the domain was off, and restores to the image', async (t) => {
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '96M', writes: [{ pattern: 0x11, offset: 0, length: 2 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }] });
  await vm.start();
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');

  // The chain starts with a local full backup (it creates checkpoint virtnbdbackup.0 and its bitmap).
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  await vm.destroy({ graceful: true });
  await writeImagePattern(vda.path, 'qcow2', { pattern: 0x33, offset: 30 * MiB, length: MiB });
  await writeImagePattern(vda.path, 'qcow2', { pattern: 0x44, offset: 70 * MiB + 64 * KiB, length: 192 * KiB });

  const port = await freePort();
  const inc = await runAsBackupHost('virtnbdbackup', [
    ...jobArgs(paths, '-U', sshd.uri(), '--ssh-private-key', sshd.clientKey, '-P', String(port), '-d', vm.name, '-l', 'inc', '-o', set),
  ]);
  t.is(inc.exitCode, 0, inc.stderr);
  // It really was remote: ssh login, qemu-nbd on the hypervisor on TCP.
  t.regex(inc.stderr, /is remote: its files are read over ssh as root@127\.0\.0\.1/);
  t.regex(inc.stderr, /through qemu-nbd on root@127\.0\.0\.1/);
  t.regex(sshd.log(), /Accepted publickey for root/);

  const incFile = (await listFiles(set)).find((f) => /^vda\.inc\.virtnbdbackup\.0\.\d+\.data$/.test(f));
  t.truthy(incFile, (await listFiles(set)).join(' '));
  t.deepEqual(await dataFrameRanges(join(set, incFile!)), [
    { offset: 30 * MiB, length: MiB },
    { offset: 70 * MiB + 64 * KiB, length: 192 * KiB },
  ]);
  t.like(await streamMeta(join(set, incFile!)), { checkpointName: 'virtnbdbackup.0', incremental: true });
  // The image info was read on the hypervisor by qemu-img over ssh.
  const qcowJson = (await listFiles(set)).filter((f) => /^vda\.virtnbdbackup\.0\.\d+\.qcow\.json$|^vda\..*\.qcow\.json$/.test(f));
  t.true(qcowJson.length >= 2, qcowJson.join(' '));
  for (const f of qcowJson) t.is(JSON.parse(await readFile(join(set, f), 'utf8')).format, 'qcow2');

  t.deepEqual(await processesMentioning(vda.path), [], 'no qemu-nbd left serving the image');
  t.deepEqual(sshd.sessionCommands(), [], 'no ssh session left on the hypervisor');
  await assertNothingLeft(t, vm, paths, [set]);

  const restored = host.path('restored');
  const r = await ourRestore(host.dir, ['-i', set, '-o', restored]);
  t.is(r.exitCode, 0, r.stderr);
  const cmp = await compareImages(vda.path, join(restored, 'vda.qcow2'));
  t.true(cmp.identical, cmp.message);
});

test('a remote backup whose ssh login fails says so, naming the host and what ssh said', async (t) => {
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '16M' });
  const vm = await host.defineVm({ disks: [{ image: vda }] });
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');
  // libvirt's own login uses the URI's key; ours is told to use another one, which sshd does not accept.
  const wrongKey = host.path('wrong_key');
  const { execFile } = await import('node:child_process');
  await new Promise<void>((resolve, reject) => execFile('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', wrongKey], (e) => (e ? reject(e) : resolve())));
  const r = await runAsBackupHost('virtnbdbackup', jobArgs(paths, '-U', sshd.uri(), '--ssh-private-key', wrongKey, '-d', vm.name, '-l', 'copy', '-o', set));
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stderr, /ssh to root@127\.0\.0\.1:\d+ failed: .*Permission denied/);
  t.regex(r.stderr, /--ssh-private-key/);
  t.deepEqual((await listFiles(set).catch(() => [])).filter((f) => f.endsWith('.data')), []);
});

test('Ctrl-C during a remote offline backup stops qemu-nbd on the hypervisor and removes what the run wrote', async (t) => {
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '16M', writes: [{ pattern: 0x11, offset: 0, length: MiB }] });
  const vdb = await host.createImage('vdb.qcow2', { format: 'qcow2', size: '256M', writes: [{ pattern: 0x22, offset: 0, length: 192 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }, { image: vdb }] });
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');
  let signalled = false;
  // One disk at a time: once vda is saved, vdb's qemu-nbd is starting or serving when SIGINT arrives.
  const r = await runAsBackupHost('virtnbdbackup', jobArgs(paths, '-U', sshd.uri(), '-P', String(await freePort()), '-w', '1', '-d', vm.name, '-l', 'copy', '-o', set), {
    onStderr: (stderr, child) => {
      if (!signalled && /Backup of disk \[vda\] finished/.test(stderr)) {
        signalled = true;
        child.kill('SIGINT');
      }
    },
  });
  t.true(signalled, r.stderr);
  t.is(r.exitCode, 130, r.stderr);
  t.regex(r.stderr, /Caught signal SIGINT/);
  t.deepEqual((await listFiles(set)).filter((f) => /\.data|\.partial|\.chksum/.test(f)), [], 'the run removed its files');
  t.deepEqual(await processesMentioning(vdb.path), [], 'no qemu-nbd left on the hypervisor');
  t.deepEqual(sshd.sessionCommands(), [], 'no ssh session left');
});
