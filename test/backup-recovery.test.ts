/**
 * Checkpoint recovery: libvirt loses the metadata of every checkpoint of a
 * long chain (as after a host reinstall, or `virsh undefine`/`define` of the
 * domain), while QEMU keeps the dirty bitmaps. Our next inc redefines the
 * twelve checkpoints from the set's checkpoints/*.xml, parents before
 * children (virtnbdbackup.10 and .11 after .9, whatever the files' mtimes
 * or a plain name sort say), and saves only what changed since the last
 * backup; the chain, rebuilt, equals the VM's disk.
 *
 * Not covered: a libvirtd restart (it would disturb every other test
 * talking to the shared daemon).
 */
import { readFile, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { KiB, MiB, TestHost } from './helpers/host.js';
import { compareImages } from './helpers/image.js';
import { peekStream } from './helpers/stream-peek.js';
import { chainFiles, flushDisk, ourBackup, ourBackupInProcess, rebuildRaw } from './helpers/our-backup.js';
import { virsh } from './helpers/virsh.js';

const CHAIN = 12;
const WRITE = 64 * KiB;

test('our inc redefines 12 lost checkpoints parent-first and saves only the new changes', async (t) => {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: [{ pattern: 0x11, offset: 0, length: MiB }] });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  const set = host.path('set');

  // full + 11 inc, each after a small write of its own; the first and last by the CLI, the
  // others by the library call it makes (a Node start per run would double the test's time).
  await ourBackup(host, vm, 'full', set);
  for (let i = 1; i < CHAIN; i++) {
    await vm.writePattern('vda', { pattern: 0x20 + i, offset: (2 + 4 * i) * MiB, length: WRITE });
    if (i < CHAIN - 1) await ourBackupInProcess(host, vm, 'inc', set);
    else await ourBackup(host, vm, 'inc', set);
  }
  const names = Array.from({ length: CHAIN }, (_, i) => `virtnbdbackup.${i}`);
  t.deepEqual(await vm.checkpoints(), names);

  // libvirt forgets all twelve: one metadata-only delete of the root with its children.
  // (Deleting a parent alone with --metadata also works: libvirt reparents its children.)
  await virsh(['checkpoint-delete', vm.name, 'virtnbdbackup.0', '--children', '--metadata']);
  t.deepEqual(await vm.checkpoints(), []);

  // Newest file oldest: neither mtime order nor a name sort (".10" < ".2") gives parents first.
  for (const [i, name] of names.entries()) {
    const when = Date.now() / 1000 - 100 - i;
    await utimes(join(set, 'checkpoints', `${name}.xml`), when, when);
  }

  const write = { pattern: 0x77, offset: 60 * MiB, length: WRITE };
  await vm.writePattern('vda', write);
  const r = await ourBackup(host, vm, 'inc', set);
  const redefined = [...r.stderr.matchAll(/Redefining missing checkpoint \[(virtnbdbackup\.\d+)\]/g)].map((m) => m[1]);
  t.deepEqual(redefined, names, 'redefined, parent first');

  // libvirt's chain is whole again and one longer: each checkpoint's parent is the one before it.
  const all = [...names, `virtnbdbackup.${CHAIN}`];
  t.deepEqual(await vm.checkpoints(), all);
  for (let i = 1; i < all.length; i++) {
    t.is((await virsh(['checkpoint-parent', vm.name, all[i]!])).trim(), all[i - 1], `parent of ${all[i]}`);
  }

  // The new inc holds exactly the range written after the 12th backup.
  const newInc = `vda.inc.virtnbdbackup.${CHAIN}.data`;
  const stream = peekStream(await readFile(join(set, newInc)));
  t.deepEqual(
    stream.frames.filter((f) => f.kind === 'data').map((f) => [f.offset, f.length]),
    [[write.offset, write.length]],
  );
  t.is(stream.meta.parentCheckpoint, `virtnbdbackup.${CHAIN - 1}`);
  t.is(await readFile(join(set, `${vm.name}.cpt`), 'utf8'), JSON.stringify(all).replace(/","/g, '", "'));

  // full + 12 incs rebuild the VM's disk.
  const files = await chainFiles(set);
  t.is(files.length, CHAIN + 1);
  t.is(files.at(-1), newInc);
  const raw = await rebuildRaw(set, host.path('rebuilt.raw'), files);
  await flushDisk(vm);
  const cmp = await compareImages(raw, image.path, { formatA: 'raw' });
  t.true(cmp.identical, `rebuilt chain vs the VM disk: ${cmp.message}`);
});
