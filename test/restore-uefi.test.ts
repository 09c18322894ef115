/**
 * UEFI boot files through a backup and a restore: our virtnbdbackup of a
 * running UEFI VM saves both the firmware (loader) and the VM's nvram
 * (variable store) into the set as `<basename>.<ident>`, and
 * `virtnbdrestore -c` puts each one back at the path the domain config
 * names when it is missing there, with the same bytes, and never replaces
 * a file that exists. The system's OVMF is never touched: the test of a
 * missing loader uses a VM whose <loader> is a copy in the test's dir.
 */
import { copyFile, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { parseDomainXml } from '../lib/xml/domain.js';
import { jobArgs, runBackup } from './helpers/backup-run.js';
import { domainXml, xmlEscape } from './helpers/domain-xml.js';
import { MiB, TestHost } from './helpers/host.js';
import type { Image } from './helpers/image.js';
import { ourRestore } from './helpers/restore-check.js';
import { virsh } from './helpers/virsh.js';
import { TestVm } from './helpers/vm.js';

/** Debian's OVMF without Secure Boot (so the VM needs no SMM), and its variable store template. */
const SYSTEM_LOADER = '/usr/share/OVMF/OVMF_CODE_4M.fd';
const SYSTEM_VARS_TEMPLATE = '/usr/share/OVMF/OVMF_VARS_4M.fd';
const IDENT = 'virtnbdbackup.0';

/** The set's copy of a boot file, by the name the set layout gives it. */
function setCopy(set: string, hostPath: string): string {
  return join(set, `${basename(hostPath)}.${IDENT}`);
}

/** Our virtnbdbackup full of `vm` into `set`; the loader and nvram paths its live XML names. */
async function fullBackup(t: ExecutionContext, host: TestHost, vm: TestVm, set: string): Promise<{ loader: string; nvram: string }> {
  const info = parseDomainXml(await vm.dumpXml());
  const { loader, nvram } = info.bootFiles;
  if (loader === undefined || nvram === undefined) throw new Error(`VM ${vm.name} names no loader or nvram: ${JSON.stringify(info.bootFiles)}`);
  const paths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const r = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(r.exitCode, 0, r.stderr);
  return { loader, nvram };
}

test('a running UEFI VM: loader and nvram are in the set; -c puts the missing nvram back and leaves the existing loader alone', async (t) => {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: [{ pattern: 0x21, offset: 0, length: MiB }] });
  const vm = await host.defineVm({ disks: [{ image }], firmware: 'efi' });
  await vm.start();
  const set = host.path('set');
  const { loader, nvram } = await fullBackup(t, host, vm, set);
  // libvirt's firmware autoselection picks one of Debian's OVMF builds (which one depends on the descriptors).
  t.regex(loader, /^\/usr\/share\/OVMF\/OVMF_CODE\S*\.fd$/);
  const systemLoader = await readFile(loader);
  t.deepEqual(await readFile(setCopy(set, loader)), systemLoader, 'the loader is in the set, byte for byte');
  const savedNvram = await readFile(setCopy(set, nvram));

  // The VM's nvram is lost (the VM stays defined: teardown undefines it with --nvram).
  await vm.destroy();
  t.is(savedNvram.length, (await readFile(nvram)).length, 'the nvram in the set is a whole variable store');
  await rm(nvram);
  const r = await ourRestore(host.dir, ['-c', '-i', set, '-o', host.path('out')]);
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(await readFile(nvram), savedNvram, 'the nvram is back at its path with the bytes of the set');
  t.deepEqual(await readFile(loader), systemLoader, 'the system loader is untouched');
  t.regex(r.stderr, new RegExp(`File \\[${escapeRe(loader)}\\]: for boot option \\[loader\\] already exists, skipping`));
  t.regex(r.stderr, new RegExp(`Restoring configured file \\[${escapeRe(nvram)}\\] for boot option \\[nvram\\]`));
});

test('a loader outside the system dirs: -c restores both missing files from the set, and keeps files that exist', async (t) => {
  const host = await TestHost.create(t);
  const fw = host.path('firmware');
  await mkdir(fw);
  const loader = join(fw, 'OVMF_CODE_4M.fd');
  const nvram = join(fw, 'uefi_VARS.fd');
  await copyFile(SYSTEM_LOADER, loader);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: [{ pattern: 0x22, offset: 0, length: MiB }] });
  const vm = await defineLoaderVm(host, image, loader, nvram);
  await vm.start();
  const set = host.path('set');
  const named = await fullBackup(t, host, vm, set);
  t.deepEqual(named, { loader, nvram }, 'the live XML names our copies');
  const savedLoader = await readFile(setCopy(set, loader));
  const savedNvram = await readFile(setCopy(set, nvram));
  t.deepEqual(savedLoader, await readFile(SYSTEM_LOADER), 'the loader is in the set, byte for byte');

  await vm.destroy();
  t.is(savedNvram.length, (await readFile(nvram)).length, 'the nvram in the set is a whole variable store');
  await rm(loader);
  await rm(nvram);
  const first = await ourRestore(host.dir, ['-c', '-i', set, '-o', host.path('out1')]);
  t.is(first.exitCode, 0, first.stderr);
  t.deepEqual(await readFile(loader), savedLoader, 'the loader is back at its path');
  t.deepEqual(await readFile(nvram), savedNvram, 'the nvram is back at its path');
  t.regex(first.stderr, new RegExp(`Restoring configured file \\[${escapeRe(loader)}\\] for boot option \\[loader\\]`));

  // Files that exist (say, of a VM that runs again) are never replaced.
  const mine = Buffer.from('this nvram belongs to a running VM\n');
  await writeFile(nvram, mine);
  const second = await ourRestore(host.dir, ['-c', '-i', set, '-o', host.path('out2')]);
  t.is(second.exitCode, 0, second.stderr);
  t.deepEqual(await readFile(nvram), mine, 'the existing nvram is kept');
  t.deepEqual(await readFile(loader), savedLoader, 'the existing loader is kept');
  for (const [kind, path] of [['loader', loader], ['nvram', nvram]]) {
    t.regex(second.stderr, new RegExp(`File \\[${escapeRe(path!)}\\]: for boot option \\[${kind}\\] already exists, skipping`));
  }
  t.deepEqual((await readdir(fw)).sort(), [basename(loader), basename(nvram)].sort(), 'no partial file beside the boot files');
});

/**
 * A firmware-only TCG VM whose pflash loader is `loader` (a copy, not the
 * system file) and whose nvram is made from the system template at
 * `nvram`; named under the host's id, so the sweep of stale test VMs
 * knows it, and undefined in teardown.
 */
async function defineLoaderVm(host: TestHost, image: Image, loader: string, nvram: string): Promise<TestVm> {
  const name = `${host.id}-uefi`;
  const os =
    `<os><type arch='x86_64' machine='q35'>hvm</type>` +
    `<loader readonly='yes' type='pflash'>${xmlEscape(loader)}</loader>` +
    `<nvram template='${xmlEscape(SYSTEM_VARS_TEMPLATE)}'>${xmlEscape(nvram)}</nvram>` +
    `<boot dev='hd'/></os>\n  <features><acpi/></features>`;
  const base = domainXml({ name, disks: [{ target: 'vda', path: image.path, format: image.format }] });
  const xml = base.replace(/<os>[\s\S]*?<\/os>/, os);
  if (xml === base) throw new Error('domainXml has no <os> element to replace');
  const file = host.path(`${name}.xml`);
  await writeFile(file, xml);
  const vm = new TestVm(name, [{ target: 'vda', image }], host.dir, 'efi', host.cleanup);
  host.onCleanup(`VM ${name}`, () => vm.undefine(), () => vm.undefineSync());
  await virsh(['define', file]);
  return vm;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
