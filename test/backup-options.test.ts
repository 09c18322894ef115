/**
 * virtnbdbackup's size and job options against a running VM: `-p` prints
 * the bytes changed since the last checkpoint, which equal what the next
 * inc then saves; `-T` above that skips the inc (exit 0, a log line, no
 * file, chain unchanged) and below it runs it; `-s` starts a job whose
 * export nbdinfo reads on the socket, a second backup meanwhile is
 * refused naming that job, and `-k` ends it: no job left.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import test from 'ava';
import { run } from './helpers/exec.js';
import { KiB, MiB, TestHost } from './helpers/host.js';
import { listFiles } from './helpers/peer.js';
import { assertNothingLeft, dataFrameRanges, jobArgs, runBackup, type JobPaths } from './helpers/backup-run.js';
import { peekStream } from './helpers/stream-peek.js';

async function runningVm(host: TestHost): Promise<Awaited<ReturnType<TestHost['defineVm']>>> {
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '128M', writes: [{ pattern: 0x11, offset: 0, length: 2 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  return vm;
}

function jobPaths(host: TestHost): JobPaths {
  return { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
}

test('-p prints what the next inc saves; -T above it skips the inc, below it runs it', async (t) => {
  const host = await TestHost.create(t);
  const vm = await runningVm(host);
  const paths = jobPaths(host);
  const set = host.path('set');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(full.exitCode, 0, full.stderr);

  await vm.writePattern('vda', { pattern: 0x22, offset: 10 * MiB, length: 3 * MiB });
  await vm.writePattern('vda', { pattern: 0x33, offset: 40 * MiB + 64 * KiB, length: 128 * KiB });
  const written = 3 * MiB + 128 * KiB;

  const print = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set, '-p'));
  t.is(print.exitCode, 0, print.stderr);
  const estimate = Number(print.stdout.trim());
  t.is(estimate, written, `stdout: ${print.stdout}`);
  const afterPrint = await listFiles(set);
  t.false(afterPrint.some((f) => f.startsWith('vda.inc.')), '-p saves nothing');

  const skip = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set, '-T', String(estimate + 1)));
  t.is(skip.exitCode, 0, skip.stderr);
  t.regex(skip.stderr, new RegExp(`Backup size \\[${estimate}\\] is below the threshold \\[${estimate + 1}\\]`));
  t.false((await listFiles(set)).some((f) => f.startsWith('vda.inc.')), 'skipped: no inc file');
  t.deepEqual(JSON.parse(await readFile(host.path('set', `${vm.name}.cpt`), 'utf8')), ['virtnbdbackup.0'], 'chain unchanged');
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0']);

  const inc = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set, '-T', String(estimate)));
  t.is(inc.exitCode, 0, inc.stderr);
  const ranges = await dataFrameRanges(host.path('set', 'vda.inc.virtnbdbackup.1.data'));
  t.is(
    ranges.reduce((n, r) => n + r.length, 0),
    estimate,
    'the inc saves the estimated bytes',
  );
  t.deepEqual(ranges, [
    { offset: 10 * MiB, length: 3 * MiB },
    { offset: 40 * MiB + 64 * KiB, length: 128 * KiB },
  ]);
  await assertNothingLeft(t, vm, paths, [set]);
});

test('-s leaves the job exported on the socket, a second backup is refused naming it, -k ends it', async (t) => {
  const host = await TestHost.create(t);
  const vm = await runningVm(host);
  const paths = jobPaths(host);
  const set = host.path('set');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set));
  t.is(full.exitCode, 0, full.stderr);
  await vm.writePattern('vda', { pattern: 0x44, offset: 20 * MiB, length: MiB });

  const start = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set, '-s'));
  t.teardown(async () => {
    if ((await vm.isActive()) && (await vm.jobInfo())['Job type'] !== 'None') await vm.abortJob().catch(() => undefined);
  });
  t.is(start.exitCode, 0, start.stderr);
  const uri = `nbd+unix:///vda?socket=${paths.socket}`;
  t.is(start.stdout.trim(), uri);
  t.true(existsSync(paths.socket), 'the socket stays');
  t.not((await vm.jobInfo())['Job type'], 'None', 'the job runs');
  t.deepEqual(await vm.checkpoints(), ['virtnbdbackup.0'], '-s creates no checkpoint');

  const map = await run('nbdinfo', ['--map=qemu:dirty-bitmap:backup-vda', uri]);
  t.regex(map.stdout, new RegExp(`^\\s*${20 * MiB}\\s+${MiB}\\s+1\\s+dirty`, 'm'), map.stdout);

  const otherPaths = { socket: host.path('other.sock'), scratchDir: paths.scratchDir };
  const second = await runBackup(host, jobArgs(otherPaths, '-d', vm.name, '-l', 'inc', '-o', set));
  t.is(second.exitCode, 1, second.stderr);
  t.regex(second.stderr, new RegExp(`ERROR Domain ${vm.name} is busy with the backup job \\(NBD socket ${paths.socket}\\)`));
  t.false((await listFiles(set)).some((f) => f.startsWith('vda.inc.')));

  const kill = await runBackup(host, jobArgs(paths, '-d', vm.name, '-o', set, '-k'));
  t.is(kill.exitCode, 0, kill.stderr);
  t.regex(kill.stderr, /Stopped the backup job \(NBD socket /);
  await assertNothingLeft(t, vm, paths, [set]);
  const again = await runBackup(host, jobArgs(paths, '-d', vm.name, '-o', set, '-k'));
  t.is(again.exitCode, 0, again.stderr);
  t.regex(again.stderr, /No backup job runs on domain/);
});

test('--pause suspends the domain while the job starts and resumes it', async (t) => {
  const host = await TestHost.create(t);
  const vm = await runningVm(host);
  const paths = jobPaths(host);
  const set = host.path('set');
  const r = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set, '--pause'));
  t.is(r.exitCode, 0, r.stderr);
  const paused = r.stderr.search(/Paused domain \S+ while the backup job starts/);
  const resumed = r.stderr.search(/Resumed domain /);
  t.true(paused >= 0 && resumed > paused, r.stderr);
  t.is(await vm.state(), 'running');
  await assertNothingLeft(t, vm, paths, [set]);
});

test('-q queries extents with nbdinfo: the same frames as our client, zeroed dirty ranges included', async (t) => {
  const host = await TestHost.create(t);
  const vm = await runningVm(host);
  await vm.writePattern('vda', { pattern: 0x5a, offset: 50 * MiB, length: 5 * MiB });
  const paths = jobPaths(host);
  const set = host.path('set');
  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set, '-q'));
  t.is(full.exitCode, 0, full.stderr);
  t.regex(full.stderr, /querying extents with nbdinfo \(-q\)/);
  const copySet = host.path('copy');
  const copy = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'copy', '-o', copySet));
  t.is(copy.exitCode, 0, copy.stderr);
  const frames = async (file: string): Promise<string[]> =>
    peekStream(await readFile(file)).frames.filter((f) => f.kind === 'data' || f.kind === 'zero').map((f) => `${f.kind} ${f.offset} ${f.length}`);
  const withNbdinfo = await frames(host.path('set', 'vda.full.data'));
  t.true(withNbdinfo.length > 1);
  t.deepEqual(withNbdinfo, await frames(host.path('copy', 'vda.copy.data')));

  await vm.writePattern('vda', { pattern: 0x77, offset: 12 * MiB, length: MiB });
  await vm.writeZeroes('vda', 0, 64 * KiB);
  const inc = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set, '-q'));
  t.is(inc.exitCode, 0, inc.stderr);
  t.deepEqual(await dataFrameRanges(host.path('set', 'vda.inc.virtnbdbackup.1.data')), [
    { offset: 0, length: 64 * KiB },
    { offset: 12 * MiB, length: MiB },
  ]);
  await assertNothingLeft(t, vm, paths, [set, copySet]);
});
