/**
 * SASL logins to the real libvirtd (scripts/host-setup.sh: TCP 16509 and
 * TLS 16514 on loopback, auth "sasl", mech_list scram-sha-256, users in
 * /etc/libvirt/passwd.db). This file adds its own user with saslpasswd2
 * and removes it at the end. Over TLS, SCRAM-SHA-256 with the right
 * password reaches the daemon; a wrong password, an unknown user or no
 * credentials fail with a LibvirtAuthError that names the user and never
 * the password; plain TCP is explained (libvirtd wants a SASL security
 * layer there). virtnbdbackup logs in with --user and --password-file or
 * VIRTNBD_PASSWORD, and the password shows neither in its output, its log
 * file nor its command line; virtnbdrestore -cD logs in the same way to
 * define the restored domain.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { CredentialsError, PASSWORD_ENV, readPasswordFile, redactArgv, resolveCredentials } from '../lib/cli/credentials.js';
import { LibvirtAuthError, VIR_ERR_AUTH_FAILED, VIR_ERR_AUTH_UNAVAILABLE } from '../lib/libvirt/errors.js';
import { Hypervisor, type HypervisorOptions } from '../lib/libvirt/hypervisor.js';
import { chooseMechanism, parseMechanisms } from '../lib/libvirt/sasl.js';
import { runCli } from './helpers/cli.js';
import { run } from './helpers/exec.js';
import { MiB, TestHost } from './helpers/host.js';
import { virsh } from './helpers/virsh.js';

const SASLDB = '/etc/libvirt/passwd.db';
const TLS_URI = 'qemu+tls://127.0.0.1/system';
const TCP_URI = 'qemu+tcp://127.0.0.1/system';
const USER = `vnbdsasl${process.pid}${randomBytes(3).toString('hex')}`;
// Commas, '=' and a blank: characters SCRAM's wire format treats specially.
const PASSWORD = `Pw,=${randomBytes(6).toString('hex')} x`;

let scratch = '';

test.before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'vnbdtest-sasl-'));
  const listening = await new Promise<boolean>((resolve) => {
    const probe = connect({ host: '127.0.0.1', port: 16514 }, () => resolve(true)).on('error', () => resolve(false));
    probe.on('connect', () => probe.destroy());
  });
  if (!existsSync('/etc/pki/libvirt/clientcert.pem') || !listening) {
    throw new Error('libvirtd does not listen for TLS on 127.0.0.1:16514 with the test PKI: run scripts/host-setup.sh');
  }
  await run('saslpasswd2', ['-p', '-c', '-a', 'libvirt', '-f', SASLDB, USER], { input: PASSWORD });
});

test.after.always(async () => {
  await run('saslpasswd2', ['-d', '-a', 'libvirt', '-f', SASLDB, USER], { okCodes: [0, 1] }).catch(() => undefined);
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

async function connected(uri: string, options: HypervisorOptions): Promise<Hypervisor> {
  const h = new Hypervisor(uri, { keepaliveInterval: 0, ...options });
  await h.connect();
  return h;
}

async function loginError(uri: string, options: HypervisorOptions): Promise<LibvirtAuthError> {
  const h = new Hypervisor(uri, { keepaliveInterval: 0, ...options });
  try {
    await h.connect();
  } catch (e) {
    await h.close();
    if (e instanceof LibvirtAuthError) return e;
    throw e;
  }
  await h.close();
  throw new Error(`connecting to ${uri} unexpectedly worked`);
}

test('SCRAM-SHA-256 over TLS with the right password: the daemon answers as virsh sees it', async (t) => {
  const host = await TestHost.create(t);
  const vm = await host.defineVm({ disks: [{ image: await host.createImage('d.qcow2', { format: 'qcow2', size: '16M' }) }] });
  const h = await connected(TLS_URI, { credentials: { username: USER, password: PASSWORD } });
  t.teardown(() => h.close());
  t.is(await h.getHostname(), (await virsh(['hostname'])).trim());
  const names = (await h.listAllDomains()).map((d) => d.name);
  t.true(names.includes(vm.name), `the defined domain ${vm.name} is listed`);
  const viaVirsh = await virsh(['domuuid', vm.name]);
  t.is((await h.lookupDomainByName(vm.name)).getUUID(), viaVirsh.trim());
});

test('the user name may come from the URI (user@host)', async (t) => {
  const h = await connected(`qemu+tls://${USER}@127.0.0.1/system`, { credentials: { password: PASSWORD } });
  t.teardown(() => h.close());
  t.true((await h.getLibVersion()) > 0);
});

test('a wrong password: an authentication error naming the user, never the password', async (t) => {
  const wrong = `${PASSWORD}-wrong`;
  const e = await loginError(TLS_URI, { credentials: { username: USER, password: wrong } });
  t.is(e.code, VIR_ERR_AUTH_FAILED);
  t.is(e.user, USER);
  t.regex(e.message, new RegExp(`authentication failed for user '${USER}' at tls 127\\.0\\.0\\.1:16514`));
  t.false(e.message.includes(wrong) || e.message.includes(PASSWORD));
});

test('an unknown user fails the same way', async (t) => {
  const e = await loginError(TLS_URI, { credentials: { username: `${USER}nobody`, password: PASSWORD } });
  t.is(e.code, VIR_ERR_AUTH_FAILED);
  t.regex(e.message, /authentication failed for user/);
});

test('no credentials: the error says they are needed and how to pass them', async (t) => {
  const e = await loginError(TLS_URI, {});
  t.is(e.code, VIR_ERR_AUTH_UNAVAILABLE);
  t.regex(e.message, /requires SASL authentication: credentials are needed; pass --user and --password/);
  const noUser = await loginError(TLS_URI, { credentials: { password: PASSWORD } });
  t.regex(noUser.message, /a password was given, but no user name: pass --user/);
  t.false(noUser.message.includes(PASSWORD));
});

test('plain TCP: libvirtd offers SCRAM only with TLS, and the error says so', async (t) => {
  const e = await loginError(TCP_URI, { credentials: { username: USER, password: PASSWORD } });
  t.is(e.code, VIR_ERR_AUTH_UNAVAILABLE);
  t.regex(e.message, /at tcp 127\.0\.0\.1:16509 .*plain TCP.*use qemu\+tls:\/\//);
  t.false(e.message.includes(PASSWORD));
  // The URI's port is the one dialled.
  const explicit = await loginError('qemu+tcp://127.0.0.1:16509/system', { credentials: { username: USER, password: PASSWORD } });
  t.regex(explicit.message, /at tcp 127\.0\.0\.1:16509 /);
  const h = new Hypervisor('qemu+tcp://127.0.0.1:1/system', { credentials: { username: USER, password: PASSWORD } });
  const refused = await t.throwsAsync(() => h.connect());
  t.regex(refused!.message, /cannot connect to libvirt at tcp 127\.0\.0\.1:1: .*ECONNREFUSED/);
});

test('TLS without our client certificate files: the error names the missing file', async (t) => {
  const h = new Hypervisor(`${TLS_URI}?pkipath=${encodeURIComponent(scratch)}`, { credentials: { username: USER, password: PASSWORD } });
  const e = await t.throwsAsync(() => h.connect());
  t.regex(e!.message, new RegExp(`cannot read the CA certificate ${scratch}/cacert\\.pem`));
});

test('virtnbdbackup -U qemu+tls:// --user --password-file: a copy backup, the password nowhere in its output, log or command line', async (t) => {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '32M', writes: [{ pattern: 0x5a, offset: 0, length: 1 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  const passwordFile = host.path('libvirt.pw');
  await writeFile(passwordFile, `${PASSWORD}\n`, { mode: 0o600 });
  const out = host.path('set');
  let cmdline = '';
  const r = await runCli(
    'virtnbdbackup',
    ['-U', TLS_URI, '--user', USER, '--password-file', passwordFile, '-d', vm.name, '-l', 'copy', '-o', out, '-n', '-f', host.path('nbd.sock'), '--scratchdir', host.path('')],
    { onSpawn: (child) => (cmdline = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8')) },
  );
  t.is(r.exitCode, 0, r.stderr);
  t.true(existsSync(join(out, 'vda.copy.data')), 'the disk was saved');
  t.true(cmdline.includes('--password-file'), 'the command line was read');
  t.false(cmdline.includes(PASSWORD), 'no password in /proc/<pid>/cmdline');
  t.false(r.stdout.includes(PASSWORD) || r.stderr.includes(PASSWORD), 'no password in the output');
  const logs = (await readdir(out)).filter((n) => n.endsWith('.log'));
  t.is(logs.length, 1, 'the backup wrote its log file');
  for (const f of logs) {
    const text = await readFile(join(out, f), 'utf8');
    t.regex(text, /--password-file/, `${f} has the command line`);
    t.false(text.includes(PASSWORD), `no password in ${f}`);
  }
});

test('virtnbdbackup with VIRTNBD_PASSWORD: past the login (the domain lookup answers); a wrong one fails naming the user', async (t) => {
  const dir = await mkdtemp(join(scratch, 'env-'));
  const args = ['-U', TLS_URI, '--user', USER, '-d', `${USER}-no-such-domain`, '-l', 'copy', '-o', join(dir, 'set'), '-n'];
  let cmdline = '';
  const ok = await runCli('virtnbdbackup', args, { env: { [PASSWORD_ENV]: PASSWORD }, onSpawn: (c) => (cmdline = readFileSync(`/proc/${c.pid}/cmdline`, 'utf8')) });
  t.is(ok.exitCode, 1);
  t.regex(ok.stderr, /Domain .* not found|no domain with matching name/);
  t.false(cmdline.includes(PASSWORD));
  t.false(ok.stderr.includes(PASSWORD) || ok.stdout.includes(PASSWORD));

  const wrong = `${PASSWORD}-wrong`;
  const bad = await runCli('virtnbdbackup', args, { env: { [PASSWORD_ENV]: wrong } });
  t.is(bad.exitCode, 1);
  t.regex(bad.stderr, new RegExp(`authentication failed for user '${USER}'`));
  t.false(bad.stderr.includes(wrong));

  const none = await runCli('virtnbdbackup', args, { env: { [PASSWORD_ENV]: '' } });
  t.is(none.exitCode, 1);
  t.regex(none.stderr, /credentials are needed; pass --user and --password/);

  // Given as a flag, the password is in the process list (the help says so), but not in the log.
  const flag = await runCli('virtnbdbackup', [...args, '--password', PASSWORD], { env: { [PASSWORD_ENV]: '' } });
  t.is(flag.exitCode, 1);
  t.regex(flag.stderr, /Domain .* not found|no domain with matching name/);
  t.regex(flag.stderr, /arguments: .*--password \*{8}/);
  t.false(flag.stderr.includes(PASSWORD));
});

test('virtnbdrestore -U qemu+tls:// --user with VIRTNBD_PASSWORD -cD: defines the restored domain there; the password nowhere in its log', async (t) => {
  const host = await TestHost.create(t);
  const image = await host.createImage('vda.qcow2', { format: 'qcow2', size: '32M', writes: [{ pattern: 0x3c, offset: 0, length: 1 * MiB }] });
  const vm = await host.defineVm({ disks: [{ image }] });
  await vm.start();
  const set = host.path('set');
  const b = await runCli('virtnbdbackup', ['-d', vm.name, '-l', 'copy', '-o', set, '-n', '-f', host.path('nbd.sock'), '--scratchdir', host.path('')]);
  t.is(b.exitCode, 0, b.stderr);
  const name = `${host.id}-sasl-restored`;
  host.onCleanup(`VM ${name}`, async () => {
    await virsh(['undefine', name]).catch(() => undefined);
  });
  const out = host.path('out');
  const logFile = host.path('restore.log');
  const r = await runCli('virtnbdrestore', ['-U', TLS_URI, '--user', USER, '-cD', '--name', name, '-i', set, '-o', out, '-n', '-L', logFile], { env: { [PASSWORD_ENV]: PASSWORD } });
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stderr, new RegExp(`Defined domain ${name}`));
  t.regex(await virsh(['dumpxml', name]), new RegExp(out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), 'the defined domain uses the restored image');
  t.false((await readFile(logFile, 'utf8')).includes(PASSWORD), 'no password in the log');

  const bad = await runCli('virtnbdrestore', ['-U', TLS_URI, '--user', USER, '-cD', '--name', `${name}-2`, '-i', set, '-o', host.path('out2'), '-n', '-L', logFile], { env: { [PASSWORD_ENV]: `${PASSWORD}-wrong` } });
  t.is(bad.exitCode, 1);
  t.regex(bad.stderr, new RegExp(`authentication failed for user '${USER}'`));
  t.false(existsSync(join(host.path('out2'), 'vda.qcow2')), 'nothing restored under a final name');
});

test('mechanism choice: SCRAM-SHA-256 first, PLAIN only over a confidential pipe', (t) => {
  const tcp = { where: 'tcp h:1', confidential: false, plainTcp: true };
  const tls = { where: 'tls h:2', confidential: true, plainTcp: false };
  t.deepEqual(parseMechanisms('PLAIN,scram-sha-1 SCRAM-SHA-256'), ['PLAIN', 'SCRAM-SHA-1', 'SCRAM-SHA-256']);
  t.deepEqual(chooseMechanism(['PLAIN', 'SCRAM-SHA-1', 'SCRAM-SHA-256'], tcp), { kind: 'scram', hash: 'sha256' });
  t.deepEqual(chooseMechanism(['SCRAM-SHA-1'], tcp), { kind: 'scram', hash: 'sha1' });
  t.deepEqual(chooseMechanism(['PLAIN'], tls), { kind: 'plain' });
  t.throws(() => chooseMechanism(['PLAIN'], tcp), { message: /only SASL PLAIN, which would send the password unencrypted/ });
  t.throws(() => chooseMechanism(['GSSAPI', 'DIGEST-MD5'], tcp), { message: /offers SASL mechanisms GSSAPI, DIGEST-MD5, none of which/ });
});

test('credentials: flag over file over environment; the variable is consumed; bad files are named', async (t) => {
  const file = join(scratch, 'pw');
  await writeFile(file, 'from-file\n');
  const env = (): NodeJS.ProcessEnv => ({ [PASSWORD_ENV]: 'from-env' });
  t.deepEqual(resolveCredentials({ user: 'u', password: 'from-flag', passwordFile: file, env: env() }), { username: 'u', password: 'from-flag' });
  t.deepEqual(resolveCredentials({ user: 'u', passwordFile: file, env: env() }), { username: 'u', password: 'from-file' });
  const e = env();
  t.deepEqual(resolveCredentials({ env: e }), { password: 'from-env' });
  t.false(PASSWORD_ENV in e, 'VIRTNBD_PASSWORD is removed once read');
  t.is(resolveCredentials({ user: 'u', env: {} }), undefined);
  t.throws(() => readPasswordFile(join(scratch, 'missing')), { instanceOf: CredentialsError, message: /cannot read the password file .*missing: no such file/ });
  await writeFile(join(scratch, 'empty'), '\n');
  t.throws(() => readPasswordFile(join(scratch, 'empty')), { instanceOf: CredentialsError, message: /is empty/ });
  await writeFile(join(scratch, 'two'), 'a\nb\n');
  t.throws(() => readPasswordFile(join(scratch, 'two')), { instanceOf: CredentialsError, message: /more than one line/ });
  t.deepEqual(redactArgv(['--user', 'u', '--pass', 's3cret', '--password=s3cret'], 's3cret'), ['--user', 'u', '--pass', '********', '--password=********']);
});
