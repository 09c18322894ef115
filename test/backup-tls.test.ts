/**
 * The backup job's NBD server with TLS (--tls, --tls-cert DIR) against
 * running VMs. The host must be prepared by scripts/test-host-tls.sh
 * (scripts/test.sh runs it): qemu.conf's backup_tls_x509_cert_dir names a
 * test PKI whose ca-cert.pem and client certificate are also our --tls-cert
 * directory, and libvirt demands client certificates (backup_tls_x509_verify
 * is on by default).
 *
 * Checked: the job XML says tls='yes' and the server refuses plain NBD, so
 * the full and inc (-q: nbdinfo over TLS too) that rebuild the disk crossed
 * TLS; a --tls-cert directory with another CA, one without a client
 * certificate, and a missing one each fail with an error naming the
 * certificate problem, leaving no job, checkpoint or data file.
 */
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { NbdClient } from '../lib/nbd/client.js';
import { NbdHandshakeError } from '../lib/nbd/errors.js';
import { run } from './helpers/exec.js';
import { MiB, TestHost } from './helpers/host.js';
import { compareImages } from './helpers/image.js';
import { listFiles } from './helpers/peer.js';
import { virsh } from './helpers/virsh.js';
import type { TestVm } from './helpers/vm.js';
import { assertNothingLeft, flushDisk, jobArgs, rebuildDisk, runBackup, type JobPaths } from './helpers/backup-run.js';
import { freePort } from './helpers/ports.js';

const MAKE_CERTS = fileURLToPath(new URL('../scripts/make-test-certs.sh', import.meta.url));

/** The certificate directory libvirt's backup jobs use, from qemu.conf; fails the test with what to run when it is not set up. */
async function hostCertDir(t: ExecutionContext): Promise<string> {
  const conf = await readFile('/etc/libvirt/qemu.conf', 'utf8');
  const dir = /^\s*backup_tls_x509_cert_dir\s*=\s*"([^"]+)"/m.exec(conf)?.[1];
  if (dir === undefined) {
    t.fail('qemu.conf sets no backup_tls_x509_cert_dir: prepare the host with scripts/test-host-tls.sh');
    throw new Error('host not ready for TLS backups');
  }
  return dir;
}

function jobPaths(host: TestHost): JobPaths {
  return { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
}

async function runningVm(host: TestHost): Promise<TestVm> {
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '128M', writes: [{ pattern: 0x61, offset: MiB, length: 3 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  return vm;
}

async function assertRebuilds(t: ExecutionContext, vm: TestVm, set: string, raw: string, files: string[]): Promise<void> {
  await flushDisk(vm, 'vda');
  t.deepEqual(await rebuildDisk(set, 'vda', raw), files, 'chain order');
  const cmp = await compareImages(vm.disk('vda').image.path, raw, { formatA: 'qcow2', formatB: 'raw' });
  t.true(cmp.identical, `${files.join(' + ')} rebuild the disk: ${cmp.message}`);
}

test('--tls: the job serves TLS only, and full + inc (-q too) over it rebuild the disk', async (t) => {
  const certs = await hostCertDir(t);
  const host = await TestHost.create(t);
  const vm = await runningVm(host);
  const paths = jobPaths(host);
  const set = host.path('set');
  const port = String(await freePort());
  const tls = ['-P', port, '--tls', '--tls-cert', certs];

  // -s: the running job's XML says tls, and the server refuses a client without TLS.
  const start = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'copy', '-o', host.path('started'), '-s', ...tls));
  t.teardown(async () => {
    if ((await vm.isActive()) && (await vm.jobInfo())['Job type'] !== 'None') await vm.abortJob().catch(() => undefined);
  });
  t.is(start.exitCode, 0, start.stderr);
  const jobXml = await virsh(['backup-dumpxml', vm.name]);
  t.regex(jobXml, new RegExp(`<server transport='tcp' tls='yes' name='[^']+' port='${port}'/>`), jobXml);
  const uri = start.stdout.trim();
  t.regex(uri, new RegExp(`^nbds://[^/]+:${port}/vda\\?tls-certificates=${certs}$`));
  const plain = await t.throwsAsync(NbdClient.connect(uri, { tls: false }), { instanceOf: NbdHandshakeError });
  t.is(plain?.reply, 'NBD_REP_ERR_TLS_REQD', 'a plain NBD client is refused: the server requires TLS');
  const secure = await run('nbdinfo', ['--size', uri]);
  t.is(Number(secure.stdout.trim()), 128 * MiB, 'nbdinfo reads the printed nbds URI');
  const kill = await runBackup(host, jobArgs(paths, '-d', vm.name, '-o', set, '-k'));
  t.is(kill.exitCode, 0, kill.stderr);

  const full = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set, '-v', ...tls));
  t.is(full.exitCode, 0, full.stderr);
  t.regex(full.stderr, new RegExp(`NBD server on TCP \\S+:${port} with TLS \\(certificates in ${certs}`));
  t.regex(full.stderr, /<server transport="tcp" name="[^"]+" port="\d+" tls="yes"\/>|<server transport='tcp' name='[^']+' port='\d+' tls='yes'\/>/, 'the logged job XML asks for TLS');
  await assertRebuilds(t, vm, set, host.path('full.raw'), ['vda.full.data']);
  await assertNothingLeft(t, vm, paths, [set]);

  await vm.writePattern('vda', { pattern: 0x62, offset: 70 * MiB, length: 2 * MiB });
  const inc = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'inc', '-o', set, '-q', ...tls));
  t.is(inc.exitCode, 0, inc.stderr);
  t.regex(inc.stderr, /querying extents with nbdinfo \(-q\)/);
  await assertRebuilds(t, vm, set, host.path('inc.raw'), ['vda.full.data', 'vda.inc.virtnbdbackup.1.data']);
  await assertNothingLeft(t, vm, paths, [set]);
});

test('--tls-cert without the right CA, without a client certificate, or missing: the certificate problem is named', async (t) => {
  const certs = await hostCertDir(t);
  const host = await TestHost.create(t);
  const vm = await runningVm(host);
  const paths = jobPaths(host);
  const port = String(await freePort());

  // Another CA: our client cannot verify the server's certificate.
  const otherCa = host.path('other-ca');
  await run('bash', [MAKE_CERTS, otherCa]);
  // The right CA but no client certificate: libvirt's server refuses us.
  const noClient = host.path('no-client-cert');
  await mkdir(noClient);
  await copyFile(join(certs, 'ca-cert.pem'), join(noClient, 'ca-cert.pem'));
  const missing = host.path('missing');

  const cases: Array<[string, RegExp]> = [
    [otherCa, new RegExp(`TLS handshake with the NBD server failed: the server certificate is not signed by the CA in ${otherCa}/ca-cert\\.pem`)],
    [noClient, /closed the connection during the handshake right after TLS was set up; .*needs client-cert\.pem and client-key\.pem/],
    [missing, new RegExp(`TLS certificate directory ${missing} has no ca-cert\\.pem`)],
  ];
  for (const [dir, why] of cases) {
    const set = host.path(`set-${dir.split('/').pop()}`);
    const r = await runBackup(host, jobArgs(paths, '-d', vm.name, '-l', 'full', '-o', set, '-P', port, '--tls', '--tls-cert', dir));
    t.is(r.exitCode, 1, r.stderr);
    t.regex(r.stderr, new RegExp(`ERROR Cannot connect to the NBD export of disk vda at TCP \\S+:${port} with TLS \\(certificates in ${dir}, --tls-cert\\): `), dir);
    t.regex(r.stderr, why);
    t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
    t.deepEqual(await vm.checkpoints(), [], 'the failed run deleted its checkpoint');
    t.false((await listFiles(set)).some((f) => f.endsWith('.data') || f.endsWith('.cpt')), 'no data file, no checkpoint list');
    await assertNothingLeft(t, vm, paths, [set]);
  }
});
