/**
 * Our virtnbdbackup refusing what it cannot do, the way a sysadmin needs
 * it: exit code 1, a message on stderr naming the problem, and nothing
 * left behind (no job, socket, scratch or partial file; the domain's
 * checkpoints and the backup set as before the run).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { MiB, TestHost } from './helpers/host.js';
import { run } from './helpers/exec.js';
import { virsh } from './helpers/virsh.js';
import { assertNothingLeft, jobArgs, runBackup, type JobPaths } from './helpers/backup-run.js';
import type { TestVm } from './helpers/vm.js';

function jobPaths(host: TestHost): JobPaths {
  return { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
}

/** A tmpfs at `dir` (read-only, or of `size`), unmounted in teardown. */
async function mountTmpfs(host: TestHost, dir: string, options: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await run('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir]);
  host.onCleanup(
    `tmpfs ${dir}`,
    async () => void (await run('umount', [dir])),
    () => void spawnSync('umount', [dir]),
  );
}

async function runningVm(host: TestHost): Promise<TestVm> {
  const image = await host.createImage('vda.qcow2', {
    format: 'qcow2',
    size: '128M',
    writes: [
      { pattern: 0x11, offset: 0, length: MiB },
      { pattern: 0x22, offset: 32 * MiB, length: 16 * MiB },
    ],
  });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  return vm;
}

test('an unknown domain, and options of later versions, are refused with exit 1', async (t) => {
  const host = await TestHost.create(t);
  const paths = jobPaths(host);
  const set = host.path('set');
  const missing = `${host.id}-missing`;
  const r = await runBackup(host, jobArgs(paths, '-d', missing, '-l', 'full', '-o', set));
  t.is(r.exitCode, 1);
  t.regex(r.stderr, new RegExp(`ERROR Domain ${missing} not found`));
  t.notRegex(r.stderr, /\n\s+at /, 'no stack trace without -v');
  await assertNothingLeft(t, undefined, paths, [set]);

  const later = await runBackup(host, jobArgs(paths, '-d', missing, '-l', 'full', '-o', set, '--tls', '-P', '10900'));
  t.is(later.exitCode, 1);
  // -P and --tls work now: the missing domain is what fails.
  t.regex(later.stderr, new RegExp(`ERROR Domain ${missing} not found`));
  t.notRegex(later.stderr, /not yet/);

  const usage = await runBackup(host, ['-d', missing, '-l', 'weekly', '-o', set]);
  t.is(usage.exitCode, 2);
  t.regex(usage.stderr, /argument -l\/--level: invalid choice: 'weekly'/);
});

test('a shut-off domain cannot serve -s/--startonly: refused, and the domain stays shut off', async (t) => {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '64M' });
  const vm = await host.defineVm({ disks: [{ image }] });
  const paths = jobPaths(host);
  const set = host.path('set');
  const r = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'copy', '-o', set, '-s'));
  t.is(r.exitCode, 1);
  t.regex(r.stderr, /ERROR -s\/--startonly needs a running domain/);
  t.is(await vm.state(), 'shut off');
  t.deepEqual(await vm.checkpoints(), []);
  await assertNothingLeft(t, vm, paths, [set]);
});

test('inc without a full backup, an unwritable target, a full disk and a second full into one set are refused; nothing is left behind', async (t) => {
  const host = await TestHost.create(t);
  const vm = await runningVm(host);
  const paths = jobPaths(host);

  const empty = host.path('empty');
  const inc = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', empty));
  t.is(inc.exitCode, 1);
  t.regex(inc.stderr, /ERROR Cannot run an incremental backup: target directory .*empty holds no full backup.*Run a full backup first/);
  t.deepEqual(await vm.checkpoints(), []);
  await assertNothingLeft(t, vm, paths, [empty]);

  const readOnly = host.path('ro');
  await mountTmpfs(host, readOnly, 'ro,size=1m');
  const ro = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', join(readOnly, 'set')));
  t.is(ro.exitCode, 1);
  t.regex(ro.stderr, /ERROR Cannot create target directory .*ro\/set: .*ro: .*read-only file system/i);
  const roDir = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', readOnly));
  t.is(roDir.exitCode, 1);
  t.regex(roDir.stderr, /ERROR Cannot write to target directory .*ro: cannot create log file .*read-only file system/i);
  t.deepEqual(await vm.checkpoints(), []);

  // Room for the log and a few MiB, not for the 17 MiB of data: the run fails mid-way and is undone.
  const tiny = host.path('tiny');
  await mountTmpfs(host, tiny, 'size=4m');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', join(tiny, 'set')));
  t.is(full.exitCode, 1);
  t.regex(full.stderr, /ERROR Backup of disk vda failed: Cannot write .*vda\.full\.data: no space left on device/);
  t.deepEqual(await vm.checkpoints(), [], 'the checkpoint of the failed full backup is deleted again');
  t.deepEqual((await readdir(join(tiny, 'set'))).filter((f) => !f.startsWith('backup.full.')), ['checkpoints'], 'only the log is left');
  await assertNothingLeft(t, vm, paths, [tiny]);

  const set = host.path('set');
  const first = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(first.exitCode, 0, first.stderr);
  const checkpointXml = await vm.checkpointXml('virtnbdbackup.0');
  const second = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(second.exitCode, 1);
  t.regex(second.stderr, /ERROR Target directory .*set already contains a backup \(vda\.full\.data\): a full backup needs an empty directory/);
  t.is(await vm.checkpointXml('virtnbdbackup.0'), checkpointXml, 'the chain is untouched');
  t.is(await readFile(join(set, `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0"]');
  await assertNothingLeft(t, vm, paths, [set]);
});

test("another domain's backup directory is refused", async (t) => {
  const host = await TestHost.create(t);
  const vm1 = await runningVm(host);
  const image2 = await host.createImage('other.qcow2', { format: 'qcow2', size: '64M' });
  const vm2 = await host.defineVm({ disks: [{ image: image2 }] });
  await vm2.start();
  const paths = jobPaths(host);
  const set = host.path('set');
  const first = await runBackup(host, jobArgs(paths, '-d', vm1.name, '-l', 'full', '-o', set));
  t.is(first.exitCode, 0, first.stderr);
  const before = (await readdir(set)).sort();

  for (const level of ['full', 'inc', 'auto']) {
    const r = await runBackup(host, jobArgs(paths, '-d', vm2.name, '-l', level, '-o', set));
    t.is(r.exitCode, 1, `level ${level}`);
    t.regex(r.stderr, new RegExp(`holds backups of another domain .*not of ${vm2.name}`), `level ${level}`);
  }
  t.deepEqual(await vm2.checkpoints(), []);
  t.deepEqual(
    (await readdir(set)).filter((f) => !f.startsWith('backup.')).sort(),
    before.filter((f) => !f.startsWith('backup.')),
  );
  await assertNothingLeft(t, vm2, paths, [set]);
});

/** Remove a checkpoint's bitmap from the running QEMU, as if the image had lost it. */
async function dropBitmap(vm: TestVm, bitmap: string): Promise<void> {
  const nodes = JSON.parse(await virsh(['qemu-monitor-command', vm.name, '{"execute":"query-named-block-nodes","arguments":{"flat":true}}'])) as {
    return: Array<{ 'node-name': string; 'dirty-bitmaps'?: Array<{ name: string }> }>;
  };
  const node = nodes.return.find((n) => n['dirty-bitmaps']?.some((b) => b.name === bitmap));
  if (!node) throw new Error(`no block node of ${vm.name} holds bitmap ${bitmap}`);
  await virsh(['qemu-monitor-command', vm.name, JSON.stringify({ execute: 'block-dirty-bitmap-remove', arguments: { node: node['node-name'], name: bitmap } })]);
}

test('a foreign checkpoint stops a full backup; a lost bitmap stops an inc with advice to run a full backup', async (t) => {
  const host = await TestHost.create(t);
  const vm = await runningVm(host);
  const paths = jobPaths(host);
  const set = host.path('set');

  await vm.createCheckpoint('manual');
  const foreign = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(foreign.exitCode, 1);
  t.regex(foreign.stderr, /ERROR Domain .* has checkpoint manual, which was not created by virtnbdbackup/);
  t.deepEqual(await vm.checkpoints(), ['manual']);
  await vm.deleteCheckpoint('manual');

  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  await dropBitmap(vm, 'virtnbdbackup.0');
  await vm.writePattern('vda', { pattern: 0x33, offset: 8 * MiB, length: MiB });
  const inc = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set));
  t.is(inc.exitCode, 1);
  t.regex(inc.stderr, /ERROR .*missing or broken bitmap 'virtnbdbackup\.0'.*run a full backup/);
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0'], 'no new checkpoint');
  t.false((await readdir(set)).some((f) => /\.inc\..*\.data/.test(f)), 'no incremental data file');
  t.is(await readFile(join(set, `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0"]');
  t.false(existsSync(join(set, 'checkpoints', 'virtnbdbackup.1.xml')));
  await assertNothingLeft(t, vm, paths, [set]);

  // The advice works: a full backup starts a new chain.
  const fresh = host.path('fresh');
  const again = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', fresh));
  t.is(again.exitCode, 0, again.stderr);
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0']);
});

/** Resolves once `file` exists (the backup job's socket: the job runs), polling; rejects after `ms`. */
async function appears(file: string, ms = 120_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!existsSync(file)) {
    if (Date.now() > deadline) throw new Error(`${file} did not appear within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test('Ctrl-C (SIGINT) and SIGTERM mid-backup stop the job, remove the run\'s files and checkpoint, and exit 130 / 143', async (t) => {
  const host = await TestHost.create(t);
  // Enough data that the run is still reading when the signal comes (a few seconds here).
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '1G', writes: [{ pattern: 0x77, offset: 0, length: 256 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  const paths = jobPaths(host);
  const set = host.path('set');

  const interrupted = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set), {
    onSpawn: (child) => void appears(paths.socket).then(() => child.kill('SIGINT')),
  });
  t.is(interrupted.exitCode, 130, interrupted.stderr);
  t.regex(interrupted.stderr, /Caught signal SIGINT: stopping the backup job/);
  t.deepEqual(await vm.checkpoints(), [], 'the checkpoint of the interrupted full backup is deleted');
  t.deepEqual((await readdir(set)).filter((f) => !f.startsWith('backup.full.')), ['checkpoints']);
  await assertNothingLeft(t, vm, paths, [set]);

  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  await vm.writePattern('vda', { pattern: 0x78, offset: 300 * MiB, length: 256 * MiB });
  const terminated = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set), {
    onSpawn: (child) => void appears(paths.socket).then(() => child.kill('SIGTERM')),
  });
  t.is(terminated.exitCode, 143, terminated.stderr);
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0'], 'the chain is as before the inc');
  t.is(await readFile(join(set, `${vm.name}.cpt`), 'utf8'), '["virtnbdbackup.0"]');
  t.false((await readdir(set)).some((f) => /\.inc\..*\.data/.test(f)), 'no incremental data file');
  await assertNothingLeft(t, vm, paths, [set]);

  // The next inc still sees every change since the full backup.
  const inc = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set));
  t.is(inc.exitCode, 0, inc.stderr);
  t.regex(inc.stderr, new RegExp(`Disk vda: \\d+ extents, \\d+ bytes virtual size, ${256 * MiB} bytes of data to save`));
});
