/**
 * `virtnbdrestore -cD`: the restored domain is defined through our libvirt
 * client, its XML (read back with virsh) points at the restored image and
 * has the new name and uuid, the nvram file that was lost with the original
 * VM is put back from the backup set, and the domain starts.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { parseDomainXml } from '../lib/xml/domain.js';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages } from './helpers/image.js';
import { peerBackup } from './helpers/peer.js';
import { leftovers, ourRestore } from './helpers/restore-check.js';
import { failedWith, virsh } from './helpers/virsh.js';

test('-cD defines the restored domain on the restored image, restores its nvram, and it starts', async (t) => {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: [{ pattern: 0x11, offset: 0, length: MiB }] });
  const vm = await host.defineVm({ disks: [{ image }], firmware: 'efi' });
  await vm.start();
  const original = parseDomainXml(await vm.dumpXml());
  const nvram = original.bootFiles.nvram!;
  t.truthy(nvram, 'an EFI VM has an nvram file');
  const set = host.path('set');
  await peerBackup({ domain: vm.name, level: 'full', output: set, workDir: host.dir });
  const savedNvram = await readFile(join(set, `${nvram.split('/').pop()}.virtnbdbackup.0`));
  // The original VM is gone, and its nvram with it.
  await vm.undefine();

  const name = `${host.id}-restored`;
  host.onCleanup(`VM ${name}`, async () => {
    await virsh(['destroy', name]).catch(() => undefined);
    await virsh(['undefine', name, '--nvram']).catch((e: unknown) => (failedWith(e, /failed to get domain|not found/i) ? undefined : Promise.reject(e)));
  });
  const out = host.path('out');
  const r = await ourRestore(host.dir, ['-cD', '--name', name, '-i', set, '-o', out]);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stderr, new RegExp(`Defined domain ${name}`));

  const defined = parseDomainXml(await virsh(['dumpxml', name, '--inactive']));
  t.is(defined.name, name);
  t.not(defined.uuid, original.uuid, 'a new uuid');
  t.deepEqual(
    defined.disks.map((d) => [d.target, d.type, d.format, d.path]),
    [['vda', 'file', 'qcow2', join(out, 'vda.qcow2')]],
  );
  t.is(defined.bootFiles.nvram, nvram);
  t.deepEqual(await readFile(nvram), savedNvram, 'the nvram file was put back from the backup set');
  const cmp = await compareImages(image.path, join(out, 'vda.qcow2'));
  t.true(cmp.identical, cmp.message);
  const config = parseDomainXml(await readFile(join(out, 'vmconfig.xml'), 'utf8'));
  t.is(config.name, name, 'the adjusted config is in the output directory too');

  await virsh(['start', name]);
  t.is((await virsh(['domstate', name])).trim(), 'running');
  t.deepEqual(await leftovers(host.dir), []);
});
