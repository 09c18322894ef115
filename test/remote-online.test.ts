/**
 * Remote online backup: our virtnbdbackup runs as another host (a UTS
 * namespace named backup-host) against a running domain through
 * qemu+ssh://. The backup job's NBD server listens on TCP, the image info
 * and boot files come over ssh; full then inc: the inc holds exactly the
 * range written into the running VM, and the set rebuilds to the disk as
 * it was at the inc.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { parseDomainXml } from '../lib/xml/domain.js';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages } from './helpers/image.js';
import { listFiles } from './helpers/peer.js';
import { ourRestore, snapshotDisk } from './helpers/restore-check.js';
import { assertNothingLeft, dataFrameRanges, jobArgs, type JobPaths } from './helpers/backup-run.js';
import { runAsBackupHost } from './helpers/remote-run.js';
import { startSshd } from './helpers/sshd.js';
import { freePort } from './helpers/ports.js';


test('remote online full and inc of a running VM: NBD over TCP, files over ssh, the inc holds exactly the new write', async (t) => {
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const vda = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: [{ pattern: 0x11, offset: 0, length: 2 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image: vda }], firmware: 'efi' });
  await vm.start();
  const nvram = parseDomainXml(await vm.dumpXml()).bootFiles.nvram!;
  const paths: JobPaths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');
  const remote = async (level: string): Promise<import('./helpers/cli.js').CliResult> =>
    runAsBackupHost('virtnbdbackup', jobArgs(paths, '-U', sshd.uri(), '-P', String(await freePort()), '-d', vm.name, '-l', level, '-o', set));

  const full = await remote('full');
  t.is(full.exitCode, 0, full.stderr);
  t.regex(full.stderr, /is remote: its files are read over ssh/);
  t.regex(full.stderr, /NBD server on TCP /);
  t.regex(full.stderr, /Saved boot file \[nvram\] .* on root@127\.0\.0\.1/);
  t.deepEqual(await readFile(join(set, `${nvram.split('/').pop()}.virtnbdbackup.0`)), await readFile(nvram), 'nvram copied over ssh');
  t.is(JSON.parse(await readFile(join(set, 'vda.virtnbdbackup.0.qcow.json'), 'utf8')).format, 'qcow2');

  await vm.writePattern('vda', { pattern: 0x33, offset: 20 * MiB, length: MiB });
  const inc = await remote('inc');
  t.is(inc.exitCode, 0, inc.stderr);
  t.deepEqual(await dataFrameRanges(join(set, 'vda.inc.virtnbdbackup.1.data')), [{ offset: 20 * MiB, length: MiB }]);
  t.true((await listFiles(set)).includes('vda.virtnbdbackup.1.qcow.json'));
  await assertNothingLeft(t, vm, paths, [set]);
  t.deepEqual(sshd.sessionCommands().filter((c) => !c.includes('virt-ssh-helper')), [], 'no ssh session of ours left');

  const snapshot = host.path('snapshot.qcow2');
  await snapshotDisk(vm, 'vda', snapshot);
  const restored = host.path('restored');
  const r = await ourRestore(host.dir, ['-i', set, '-o', restored]);
  t.is(r.exitCode, 0, r.stderr);
  const cmp = await compareImages(snapshot, join(restored, 'vda.qcow2'));
  t.true(cmp.identical, cmp.message);
});

test('two remote backups of two VMs at once, on distinct --nbd-port: both sets restore to their disks', async (t) => {
  const host = await TestHost.create(t);
  const sshd = await startSshd(t);
  const vms = await Promise.all(
    [0x41, 0x42].map(async (pattern, i) => {
      const image = await host.createImage(`vm${i}.qcow2`, { format: 'qcow2', size: '64M', writes: [{ pattern, offset: i * 8 * MiB, length: 3 * MiB }] });
      const vm = await host.defineVm({ disks: [{ image }] });
      await vm.start();
      return vm;
    }),
  );
  const ports = [await freePort(), await freePort()];
  const runs = await Promise.all(
    vms.map((vm, i) =>
      runAsBackupHost(
        'virtnbdbackup',
        jobArgs({ socket: host.path(`b${i}.sock`), scratchDir: host.path(`scratch${i}`) }, '-U', sshd.uri(), '-P', String(ports[i]), '-d', vm.name, '-l', 'full', '-o', host.path(`set${i}`)),
      ),
    ),
  );
  for (const [i, r] of runs.entries()) {
    t.is(r.exitCode, 0, r.stderr);
    t.regex(r.stderr, new RegExp(`NBD server on TCP \\S*:${ports[i]}`));
  }
  for (const [i, vm] of vms.entries()) {
    const snapshot = host.path(`snapshot${i}.qcow2`);
    await snapshotDisk(vm, 'vda', snapshot);
    const restored = host.path(`restored${i}`);
    const r = await ourRestore(host.dir, ['-i', host.path(`set${i}`), '-o', restored]);
    t.is(r.exitCode, 0, r.stderr);
    const cmp = await compareImages(snapshot, join(restored, `vm${i}.qcow2`));
    t.true(cmp.identical, `VM ${i}: ${cmp.message}`);
  }
  t.deepEqual(sshd.sessionCommands().filter((c) => !c.includes('virt-ssh-helper')), [], 'no ssh session of ours left');
});
