/**
 * The backup job's NBD server on TCP (-P/--nbd-port, -I/--nbd-ip), as
 * remote backups use it, against running VMs: full + inc over TCP rebuild
 * the disk, no unix socket is made, and -s prints the TCP export (nbdinfo
 * reads it) until -k ends the job; two VMs backed up at once on distinct
 * ports both rebuild; a port already in use fails with an error naming it,
 * leaving no job, checkpoint, scratch or data file.
 */
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { hostname } from 'node:os';
import test, { type ExecutionContext } from 'ava';
import { run } from './helpers/exec.js';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages } from './helpers/image.js';
import { listFiles } from './helpers/peer.js';
import type { TestVm } from './helpers/vm.js';
import { chooseEndpoint, exportUriString } from '../lib/backup/nbdEndpoint.js';
import { assertNothingLeft, flushDisk, jobArgs, rebuildDisk, runBackup, type JobPaths } from './helpers/backup-run.js';
import { freePort } from './helpers/ports.js';

test('the endpoint: unix socket for a local backup, TCP for a remote one or when -P, -I or --tls is given', async (t) => {
  const host = async (): Promise<string> => 'hv.example';
  const unix = { socketFile: '/var/tmp/virtnbdbackup.1', nbdPort: 10809, given: new Set<string>() };
  t.deepEqual(await chooseEndpoint(unix, false, host), { kind: 'unix', socket: '/var/tmp/virtnbdbackup.1' });
  // The CLI's default port alone does not switch to TCP; giving -P does.
  t.deepEqual(await chooseEndpoint({ ...unix, given: new Set(['--nbd-port']) }, false, host), { kind: 'tcp', host: 'hv.example', port: 10809 });
  t.deepEqual(await chooseEndpoint({ ...unix, nbdIp: '10.0.0.5', nbdPort: 10810 }, false, host), { kind: 'tcp', host: '10.0.0.5', port: 10810 });
  t.deepEqual(await chooseEndpoint(unix, true, host), { kind: 'tcp', host: 'hv.example', port: 10809 });
  const tls = await chooseEndpoint({ ...unix, tls: true, tlsCert: '/etc/pki/qemu/' }, false, host);
  t.deepEqual(tls, { kind: 'tcp', host: 'hv.example', port: 10809, tls: { certDir: '/etc/pki/qemu' } });
  t.is(exportUriString(tls, 'vda'), 'nbds://hv.example:10809/vda?tls-certificates=/etc/pki/qemu');
  t.is(exportUriString({ kind: 'tcp', host: '::1', port: 10811 }, 'sda'), 'nbd://[::1]:10811/sda');
  t.is(exportUriString({ kind: 'unix', socket: '/tmp/s' }, 'vda'), 'nbd+unix:///vda?socket=/tmp/s');
});

function jobPaths(host: TestHost): JobPaths {
  return { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
}

async function runningVm(host: TestHost, pattern: number): Promise<TestVm> {
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '128M', writes: [{ pattern, offset: 0, length: 2 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  return vm;
}

/** Listen on `port` on every address (so QEMU cannot bind it on any). */
function listen(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer((c) => c.destroy());
    server.once('error', reject);
    server.listen(port, () => resolve(server));
  });
}

async function assertRebuilds(t: ExecutionContext, vm: TestVm, set: string, raw: string, files: string[]): Promise<void> {
  await flushDisk(vm, 'vda');
  t.deepEqual(await rebuildDisk(set, 'vda', raw), files, 'chain order');
  const cmp = await compareImages(vm.disk('vda').image.path, raw, { formatA: 'qcow2', formatB: 'raw' });
  t.true(cmp.identical, `${files.join(' + ')} rebuild the disk of ${vm.name}: ${cmp.message}`);
}

test('full and inc over TCP (-P) rebuild the disk; -s prints the TCP export and -k ends it', async (t) => {
  const host = await TestHost.create(t);
  const vm = await runningVm(host, 0x11);
  const paths = jobPaths(host);
  const set = host.path('set');
  const port = await freePort();

  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set, '-P', String(port)));
  t.is(full.exitCode, 0, full.stderr);
  // Without -I, the server binds to the host name libvirt reports (this host's).
  t.regex(full.stderr, new RegExp(`NBD server on TCP ${hostname()}:${port}\\.`));
  await assertRebuilds(t, vm, set, host.path('full.raw'), ['vda.full.data']);
  await assertNothingLeft(t, vm, paths, [set]);

  await vm.writePattern('vda', { pattern: 0x22, offset: 30 * MiB, length: 3 * MiB });
  const inc = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set, '-P', String(port), '-I', '127.0.0.1'));
  t.is(inc.exitCode, 0, inc.stderr);
  t.regex(inc.stderr, new RegExp(`NBD server on TCP 127\\.0\\.0\\.1:${port}\\.`));
  await assertRebuilds(t, vm, set, host.path('inc.raw'), ['vda.full.data', 'vda.inc.virtnbdbackup.1.data']);
  await assertNothingLeft(t, vm, paths, [set]);

  // -s on TCP: the export is printed as an nbd:// URI that other tools read; no socket file.
  await vm.writePattern('vda', { pattern: 0x33, offset: 60 * MiB, length: MiB });
  const start = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set, '-s', '-P', String(port), '-I', '127.0.0.1'));
  t.teardown(async () => {
    if ((await vm.isActive()) && (await vm.jobInfo())['Job type'] !== 'None') await vm.abortJob().catch(() => undefined);
  });
  t.is(start.exitCode, 0, start.stderr);
  const uri = `nbd://127.0.0.1:${port}/vda`;
  t.is(start.stdout.trim(), uri);
  t.false(existsSync(paths.socket), 'no unix socket on TCP');
  const map = await run('nbdinfo', ['--map=qemu:dirty-bitmap:backup-vda', uri]);
  t.regex(map.stdout, new RegExp(`^\\s*${60 * MiB}\\s+${MiB}\\s+1\\s+dirty`, 'm'), map.stdout);
  const kill = await runBackup(host, jobArgs(paths, '-d', vm.name, '-o', set, '-k'));
  t.is(kill.exitCode, 0, kill.stderr);
  t.regex(kill.stderr, new RegExp(`Stopped the backup job \\(NBD port ${port}\\)`));
  await assertNothingLeft(t, vm, paths, [set]);
});

test('two VMs backed up at once on distinct ports both rebuild', async (t) => {
  const host = await TestHost.create(t);
  const a = await runningVm(host, 0xa1);
  const imageB = await host.createImage('vdb-of-b.qcow2', { format: 'qcow2', size: '128M', writes: [{ pattern: 0xb2, offset: 8 * MiB, length: 4 * MiB }] });
  const b = await host.defineVm({ disks: [{ image: imageB }] });
  await b.start();
  const [portA, portB] = [await freePort(), await freePort()];
  const pathsA = { socket: host.path('a.sock'), scratchDir: host.path('scratch-a') };
  const pathsB = { socket: host.path('b.sock'), scratchDir: host.path('scratch-b') };
  const [ra, rb] = await Promise.all([
    runBackup(host, jobArgs(pathsA, '-d', a.name, '-l', 'full', '-o', host.path('set-a'), '-P', String(portA), '-I', '127.0.0.1')),
    runBackup(host, jobArgs(pathsB, '-d', b.name, '-l', 'full', '-o', host.path('set-b'), '-P', String(portB), '-I', '127.0.0.1')),
  ]);
  t.is(ra.exitCode, 0, ra.stderr);
  t.is(rb.exitCode, 0, rb.stderr);
  t.regex(ra.stderr, new RegExp(`TCP 127\\.0\\.0\\.1:${portA}\\.`));
  t.regex(rb.stderr, new RegExp(`TCP 127\\.0\\.0\\.1:${portB}\\.`));
  await assertRebuilds(t, a, host.path('set-a'), host.path('a.raw'), ['vda.full.data']);
  await assertRebuilds(t, b, host.path('set-b'), host.path('b.raw'), ['vda.full.data']);
  await assertNothingLeft(t, a, pathsA, [host.path('set-a')]);
  await assertNothingLeft(t, b, pathsB, [host.path('set-b')]);
});

test('a port in use: the error names it, and no job, checkpoint or file is left', async (t) => {
  const host = await TestHost.create(t);
  const vm = await runningVm(host, 0x44);
  const paths = jobPaths(host);
  const set = host.path('set');
  const busy = await listen(await freePort());
  t.teardown(() => new Promise((resolve) => busy.close(resolve)));
  const address = busy.address();
  const port = address !== null && typeof address === 'object' ? address.port : 0;

  const r = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set, '-P', String(port), '-I', '127.0.0.1'));
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stderr, new RegExp(`ERROR Cannot start the backup job of domain ${vm.name}: NBD port ${port} on 127\\.0\\.0\\.1 is already in use .*-P/--nbd-port`));
  t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
  t.is((await vm.jobInfo())['Job type'], 'None');
  t.deepEqual(await vm.checkpoints(), [], 'the checkpoint the job would have created is not there');
  t.false((await listFiles(set)).some((f) => f.endsWith('.data') || f.endsWith('.cpt')), 'no data file, no checkpoint list');
  await assertNothingLeft(t, vm, paths, [set]);
});
