/**
 * Remote restore: our virtnbdrestore runs as another host (a UTS namespace
 * named backup-host) with -U qemu+ssh:// (our sshd on loopback) and -o a
 * path on the hypervisor. The image is created there by qemu-img over ssh
 * and written through a qemu-nbd there on TCP; -cD writes the adjusted
 * config there and defines the domain through libvirt, the nvram lost
 * with the original VM is put back over ssh, and the domain starts. No
 * qemu-nbd, ssh session or partial file is left, also when the restore
 * fails half-way. With --raw a raw disk is copied onto the hypervisor
 * thin (dd conv=sparse there); a zip read from stdin is restored there as
 * its entries arrive; with --tls the qemu-nbd there serves TLS and our
 * writer verifies it.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { parseDomainXml } from '../lib/xml/domain.js';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages } from './helpers/image.js';
import { allocatedBytes, filesIn, processesMentioning } from './helpers/restore-check.js';
import { jobArgs, runBackup, type JobPaths } from './helpers/backup-run.js';
import { runAsBackupHost } from './helpers/remote-run.js';
import { startSshd } from './helpers/sshd.js';
import { failedWith, virsh } from './helpers/virsh.js';
import { freePort } from './helpers/ports.js';


test('remote restore with -cD: image written through qemu-nbd on the hypervisor, nvram put back there, the domain defined and started', async (t) => {
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: [{ pattern: 0x11, offset: 0, length: MiB }, { pattern: 0x22, offset: 40 * MiB, length: 256 * 1024 }] });
  const vm = await host.defineVm({ disks: [{ image }], firmware: 'efi' });
  await vm.start();
  const original = parseDomainXml(await vm.dumpXml());
  const nvram = original.bootFiles.nvram!;
  t.truthy(nvram, 'an EFI VM has an nvram file');
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  const savedNvram = await readFile(join(set, `${nvram.split('/').pop()}.virtnbdbackup.0`));
  await vm.destroy({ graceful: true });
  // The original VM is gone, and its nvram with it.
  await vm.undefine();

  const name = `${host.id}-rrestored`;
  host.onCleanup(`VM ${name}`, async () => {
    await virsh(['destroy', name]).catch(() => undefined);
    await virsh(['undefine', name, '--nvram']).catch((e: unknown) => (failedWith(e, /failed to get domain|not found/i) ? undefined : Promise.reject(e)));
  });
  const out = host.path('out');
  const port = await freePort();
  const r = await runAsBackupHost('virtnbdrestore', ['-n', '-L', host.path('restore.log'), '-U', sshd.uri(), '--ssh-private-key', sshd.clientKey, '-P', String(port), '-cD', '--name', name, '-i', set, '-o', out]);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stderr, /Restoring to remote host 127\.0\.0\.1 \(root@127\.0\.0\.1:\d+ by ssh\)/);
  t.regex(r.stderr, new RegExp(`Defined domain ${name}`));
  t.regex(r.stderr, /Restoring configured file \[.*\] on root@127\.0\.0\.1/);

  const defined = parseDomainXml(await virsh(['dumpxml', name, '--inactive']));
  t.deepEqual(
    defined.disks.map((d) => [d.target, d.type, d.format, d.path]),
    [['vda', 'file', 'qcow2', join(out, 'vda.qcow2')]],
  );
  t.deepEqual(await readFile(nvram), savedNvram, 'the nvram file was put back from the backup set');
  const cmp = await compareImages(image.path, join(out, 'vda.qcow2'));
  t.true(cmp.identical, cmp.message);
  t.is(parseDomainXml(await readFile(join(out, 'vmconfig.xml'), 'utf8')).name, name, 'the adjusted config is in the output directory');
  t.deepEqual((await filesIn(out)).filter((f) => f.includes('partial')), []);
  t.deepEqual(await processesMentioning(out), [], 'no qemu-nbd left');
  t.deepEqual(sshd.sessionCommands(), [], 'no ssh session left');

  await virsh(['start', name]);
  t.is((await virsh(['domstate', name])).trim(), 'running');
});

test('a remote restore that fails half-way leaves nothing on the hypervisor', async (t) => {
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '32M', writes: [{ pattern: 0x11, offset: 0, length: MiB }] });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  await vm.destroy();
  // Damage the data file after its meta frame: planning passes, writing fails.
  const { open } = await import('node:fs/promises');
  const data = join(set, 'vda.full.data');
  const handle = await open(data, 'r+');
  try {
    const size = (await handle.stat()).size;
    await handle.write(Buffer.from('garbage frame header!!\r\n'), 0, 24, Math.floor(size / 2));
  } finally {
    await handle.close();
  }
  const out = host.path('out');
  const r = await runAsBackupHost('virtnbdrestore', ['-n', '-L', host.path('restore.log'), '-U', sshd.uri(), '-P', String(await freePort()), '-i', set, '-o', out]);
  t.is(r.exitCode, 1, r.stderr);
  // It failed while writing through qemu-nbd there, not while planning.
  t.regex(r.stderr, /Applying data from backup file \[vda\.full\.data\]/);
  t.regex(r.stderr, /vda\.full\.data: /);
  t.deepEqual(await filesIn(out), [], 'no image, no partial file on the hypervisor');
  t.deepEqual(await processesMentioning(out), [], 'no qemu-nbd left');
  t.deepEqual(sshd.sessionCommands(), [], 'no ssh session left');
});

test('remote restore --raw: a raw disk is copied as it is onto the hypervisor, thin', async (t) => {
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '32M', writes: [{ pattern: 0x11, offset: 0, length: MiB }] });
  const vdb = await host.createImage('vdb.img', { format: 'raw', size: '64M', writes: [{ pattern: 0x77, offset: 32 * MiB, length: 2 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }, { image: vdb }] });
  await vm.start();
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '--raw', '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  await vm.destroy();

  const out = host.path('out');
  const r = await runAsBackupHost('virtnbdrestore', ['-n', '-L', host.path('restore.log'), '-U', sshd.uri(), '-P', String(await freePort()), '--raw', '-c', '-i', set, '-o', out]);
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(await filesIn(out), ['vda.qcow2', 'vdb.img', 'vmconfig.xml']);
  const raw = await compareImages(vdb.path, join(out, 'vdb.img'), { formatA: 'raw', formatB: 'raw' });
  t.true(raw.identical, raw.message);
  const [want, got] = await Promise.all([allocatedBytes(vdb.path), allocatedBytes(join(out, 'vdb.img'))]);
  t.true(got <= want * 1.1 && got >= want * 0.9, `the raw copy is thin: ${got} bytes allocated, the source ${want}`);
  const qcow = await compareImages(vda.path, join(out, 'vda.qcow2'));
  t.true(qcow.identical, qcow.message);
  t.deepEqual(sshd.sessionCommands(), [], 'no ssh session left');
});

test('remote restore of a zip archive read from stdin: images built on the hypervisor as the entries arrive', async (t) => {
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '32M', writes: [{ pattern: 0x11, offset: 0, length: MiB }, { pattern: 0x66, offset: 20 * MiB, length: 3 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }] });
  await vm.start();
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const zip = host.path('full.zip');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', '-'), { stdoutFile: zip });
  t.is(full.exitCode, 0, full.stderr);
  await vm.destroy();

  const out = host.path('out');
  const r = await runAsBackupHost('virtnbdrestore', ['-n', '-L', host.path('restore.log'), '-U', sshd.uri(), '-P', String(await freePort()), '-i', '-', '-o', out], { stdinFile: zip });
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stderr, /Restoring to remote host 127\.0\.0\.1/);
  // The qcow2 info arrives after the data: the image is converted there, by qemu-img over ssh.
  t.regex(r.stderr, /Converting .*vda\.partial to the source image's qcow2 options/);
  t.deepEqual(await filesIn(out), ['vda.qcow2', 'vmconfig.xml']);
  const cmp = await compareImages(vda.path, join(out, 'vda.qcow2'));
  t.true(cmp.identical, cmp.message);
  t.deepEqual(await processesMentioning(out), [], 'no qemu-nbd left');
});

test('remote restore --tls: qemu-nbd on the hypervisor serves with TLS, our writer verifies it, the image equals the source', async (t) => {
  const certs = process.env.VIRTNBD_TEST_TLS_DIR ?? '/etc/pki/virtnbd-test/backup';
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '32M', writes: [{ pattern: 0x5e, offset: 3 * MiB, length: 2 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }] });
  await vm.start();
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  await vm.destroy();

  const out = host.path('out');
  const args = ['-n', '-L', host.path('restore.log'), '-U', sshd.uri(), '-P', String(await freePort()), '--tls', '--tls-cert', certs, '-i', set, '-o', out];
  const r = await runAsBackupHost('virtnbdrestore', args);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stderr, new RegExp(`with TLS \\(certificates in ${certs}\\)`));
  const cmp = await compareImages(vda.path, join(out, 'vda.qcow2'));
  t.true(cmp.identical, cmp.message);

  // A certificate directory without the CA: refused before anything is written there.
  const empty = host.path('no-certs');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(empty);
  const out2 = host.path('out2');
  const bad = await runAsBackupHost('virtnbdrestore', ['-n', '-L', host.path('restore2.log'), '-U', sshd.uri(), '-P', String(await freePort()), '--tls', '--tls-cert', empty, '-i', set, '-o', out2]);
  t.is(bad.exitCode, 1, bad.stderr);
  t.regex(bad.stderr, /ca-cert\.pem|certificate/i);
  t.deepEqual(await filesIn(out2), [], 'no image, no partial file on the hypervisor');
  t.deepEqual(await processesMentioning(out2), [], 'no qemu-nbd left');
  t.deepEqual(sshd.sessionCommands(), [], 'no ssh session left');
});
