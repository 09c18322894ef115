/**
 * Our virtnbdbackup and the QEMU guest agent, on the real Linux test guest
 * (fixtures/guest): the guest's filesystems are frozen right before the
 * backup job starts and thawed right after (logged; the agent reports
 * "thawed" afterwards), also when the job fails to start; -F freezes only
 * the given mountpoint; the agent's OS information is saved as
 * `osinfo.<ident>`; files written inside the guest (through the agent)
 * before an incremental backup are in the image rebuilt from the set,
 * read on the host by debugfs without journal replay (which the freeze
 * makes possible). A domain without an agent gets one warning, which
 * --strict turns into exit code 2. One guest serves the serial tests.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { run } from './helpers/exec.js';
import { agentCommand, bootGuest, guestSync, guestWriteFile, sha256, type Guest } from './helpers/guest.js';
import { KiB, MiB, TestHost } from './helpers/host.js';
import { listFiles } from './helpers/peer.js';
import { assertNothingLeft, jobArgs, rebuildDisk, runBackup, type JobPaths } from './helpers/backup-run.js';

let host: TestHost;
let guest: Guest;
let paths: JobPaths;
let set: string;
const teardowns: (() => void | Promise<void>)[] = [];

test.before(async () => {
  host = await TestHost.create({ teardown: (fn) => teardowns.push(fn) });
  guest = await bootGuest(host);
  paths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  set = host.path('set');
});

test.after.always(async () => {
  for (const fn of teardowns.reverse()) await fn();
});

async function freezeStatus(): Promise<string> {
  return agentCommand<string>(guest.vm, 'guest-fsfreeze-status');
}

/** A file of an ext4 image, read by debugfs (no mount, no journal replay). */
async function debugfsRead(rawImage: string, path: string): Promise<Buffer> {
  const out = host.path(`debugfs-${randomBytes(4).toString('hex')}`);
  await run('debugfs', ['-R', `dump ${path} ${out}`, rawImage]);
  return readFile(out);
}

test.serial('full backup: filesystems frozen before the job starts and thawed after, OS information saved', async (t) => {
  const r = await runBackup(host, jobArgs(paths, '-d', guest.vm.name, '-l', 'full', '-o', set));
  t.is(r.exitCode, 0, r.stderr);
  const froze = r.stderr.search(/Froze \[1\] filesystems/);
  const started = r.stderr.search(/Starting backup job/);
  const thawed = r.stderr.search(/Thawed \[1\] filesystems/);
  t.true(started >= 0 && froze >= 0 && thawed >= 0, r.stderr);
  t.true(started < froze && froze < thawed, 'freeze, job start, thaw, in this order');
  t.notRegex(r.stderr, /WARNING/);
  t.is(await freezeStatus(), 'thawed');
  const osinfo = JSON.parse(await readFile(join(set, 'osinfo.virtnbdbackup.0'), 'utf8')) as Record<string, unknown>;
  t.is(typeof osinfo['os.id'], 'string', JSON.stringify(osinfo));
  t.true((await listFiles(set)).includes('vda.full.data'));
  await assertNothingLeft(t, guest.vm, paths, [set]);
});

test.serial('a backup job that fails to start still thaws the guest', async (t) => {
  // libvirt cannot bind the NBD socket in a directory that does not exist: backupBegin fails after the freeze.
  const badPaths = { socket: host.path('no-such-dir', 'backup.sock'), scratchDir: paths.scratchDir };
  const r = await runBackup(host, jobArgs(badPaths, '-d', guest.vm.name, '-l', 'inc', '-o', set));
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stderr, /Froze \[1\] filesystems/);
  t.regex(r.stderr, /Thawed \[1\] filesystems/);
  t.regex(r.stderr, /ERROR Cannot start the backup job/);
  t.is(await freezeStatus(), 'thawed');
  t.false((await listFiles(set)).some((f) => f.startsWith('vda.inc.')), 'no inc file');
  await assertNothingLeft(t, guest.vm, badPaths, [set]);
});

test.serial('files written in the guest before an inc backup (-F /) are in the image rebuilt from the set', async (t) => {
  const files = new Map<string, Buffer>([
    ['/data/one.bin', randomBytes(300 * KiB)],
    ['/data/two.bin', randomBytes(MiB + 123)],
    ['/data/small.txt', Buffer.from('written through guest-file-write before the inc\n')],
  ]);
  for (const [path, bytes] of files) await guestWriteFile(guest.vm, path, bytes);
  await guestSync(guest.vm);

  const r = await runBackup(host, jobArgs(paths, '-d', guest.vm.name, '-l', 'inc', '-o', set, '-F', '/'));
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stderr, /Froze \[1\] filesystems on \/ /);
  t.regex(r.stderr, /Thawed \[1\] filesystems/);
  t.is(await freezeStatus(), 'thawed');
  t.true((await listFiles(set)).includes('osinfo.virtnbdbackup.1'));

  const raw = host.path('rebuilt.raw');
  const chain = await rebuildDisk(set, 'vda', raw);
  t.deepEqual(chain, ['vda.full.data', 'vda.inc.virtnbdbackup.1.data']);
  for (const [path, bytes] of files) {
    t.is(sha256(await debugfsRead(raw, path)), sha256(bytes), `${path} in the rebuilt image`);
  }
  await assertNothingLeft(t, guest.vm, paths, [set]);
});

test('a domain without a guest agent: one warning, the backup goes on; --strict exits 2', async (t) => {
  const own = await TestHost.create(t);
  const image = await own.createImage('vda.qcow2', { format: 'qcow2', size: '64M', writes: [{ pattern: 0x42, offset: 0, length: MiB }] });
  const vm = await own.defineVm({ disks: [{ image }] });
  await vm.start();
  const ownPaths = { socket: own.path('backup.sock'), scratchDir: own.path('scratch') };
  const ownSet = own.path('set');
  const r = await runBackup(own, jobArgs(ownPaths, '-d', vm.name, '-l', 'full', '-o', ownSet, '--strict'));
  t.is(r.exitCode, 2, r.stderr);
  t.is(r.stderr.match(/WARNING/g)?.length, 1, r.stderr);
  t.regex(r.stderr, /WARNING Guest agent of domain \S+ is not available .*crash-consistent/);
  t.notRegex(r.stderr, /Froze|Thawed/);
  const files = await listFiles(ownSet);
  t.true(files.includes('vda.full.data'));
  t.false(files.some((f) => f.startsWith('osinfo.')));
  await assertNothingLeft(t, vm, ownPaths, [ownSet]);
});
