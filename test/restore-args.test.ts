/**
 * virtnbdrestore's command line (pure): the flags of virtnbdrestore 1.9.15
 * and 2.x parse as they do there (`-o dump`/`-o verify` name the action,
 * `-cD` clusters, -D implies -c), errors read as argparse's and exit 2, and
 * the help lists every flag with examples.
 */
import test from 'ava';
import { ArgumentError } from '../lib/cli/argParser.js';
import { parseRestoreArgs, restoreNotYetGiven, type RestoreCliOptions } from '../lib/cli/restoreArgs.js';

const env = { user: 'root', home: '/root', pid: 4242 };

function run(argv: string[]): RestoreCliOptions {
  const r = parseRestoreArgs(argv, env);
  if (r.kind !== 'run') throw new Error(`expected options, got ${r.kind}`);
  return r.options;
}

test('defaults as virtnbdrestore', (t) => {
  const o = run(['-i', '/backup', '-o', '/target']);
  t.like(o, {
    action: 'restore',
    input: '/backup',
    output: '/target',
    raw: false,
    adjustConfig: false,
    define: false,
    configFile: 'vmconfig.xml',
    preallocate: false,
    overwrite: false,
    uri: 'qemu:///system',
    noProgress: false,
    socketFile: '/var/tmp/virtnbdbackup.4242',
    logFile: '/root/virtnbdrestore.log',
    noColor: false,
    verbose: false,
  });
  t.is(o.until, undefined);
  t.is(o.sequence, undefined);
});

test('every flag, short and long', (t) => {
  const o = run([
    '-a', 'restore', '-i', '-', '-o', '/t', '-u', 'virtnbdbackup.2', '-d', 'vda', '-n', '-f', '/run/s.sock', '-r', '-cD',
    '-C', 'my.xml', '-N', 'newvm', '-A', '-U', 'qemu:///session', '-L', '/tmp/r.log', '--nocolor', '-v', '--overwrite', '-B', '8192',
  ]);
  t.like(o, {
    input: '-',
    until: 'virtnbdbackup.2',
    disk: 'vda',
    noProgress: true,
    socketFile: '/run/s.sock',
    raw: true,
    adjustConfig: true,
    define: true,
    configFile: 'my.xml',
    name: 'newvm',
    preallocate: true,
    uri: 'qemu:///session',
    logFile: '/tmp/r.log',
    noColor: true,
    verbose: true,
    overwrite: true,
  });
  const l = run(['--action=restore', '--input', 'x', '--output', 'y', '--until', 'u', '--sequence', 'a.full.data,a.inc.b.data', '--disk', 'vdb', '--raw', '--adjust-config', '--config-file', 'c.xml', '--preallocate']);
  t.deepEqual(l.sequence, ['a.full.data', 'a.inc.b.data']);
  t.like(l, { disk: 'vdb', raw: true, adjustConfig: true, define: false, configFile: 'c.xml', preallocate: true });
});

test('-o dump and -o verify name the action (1.9.15 spelling), as does -a', (t) => {
  t.is(run(['-i', 'x', '-o', 'dump']).action, 'dump');
  t.is(run(['-i', 'x', '-o', 'verify']).action, 'verify');
  t.is(run(['-a', 'verify', '-i', 'x', '-o', '/t']).action, 'verify');
  t.is(run(['-a', 'dump', '-i', 'x', '-o', '/t']).action, 'dump');
});

test('-D implies -c', (t) => {
  t.true(run(['-D', '-i', 'x', '-o', 'y']).adjustConfig);
});

test('bad command lines: argparse messages, exit 2', (t) => {
  const missing = t.throws(() => parseRestoreArgs(['-i', 'x'], env), { instanceOf: ArgumentError });
  t.is(missing.exitCode, 2);
  t.regex(missing.format(), /^usage: virtnbdrestore /);
  t.regex(missing.format(), /virtnbdrestore: error: the following arguments are required: -o\/--output\n$/);
  t.regex(t.throws(() => parseRestoreArgs(['-a', 'copy', '-i', 'x', '-o', 'y'], env))!.message, /invalid choice: 'copy' \(choose from 'dump', 'restore', 'verify'\)/);
  t.regex(t.throws(() => parseRestoreArgs(['-i', 'x', '-o', 'y', '--bogus'], env))!.message, /unrecognized arguments: --bogus/);
  t.regex(t.throws(() => parseRestoreArgs(['-i', 'x', '-o', 'y', '-s', ','], env))!.message, /--sequence: expected a comma-separated list/);
});

test('help lists every flag and examples; -V asks for the version', (t) => {
  const help = parseRestoreArgs(['-h'], env);
  if (help.kind !== 'help') return t.fail();
  for (const flag of ['-a', '--action', '-i', '-o', '-u', '-s', '-d', '-n', '-f', '-r', '-c', '-D', '-C', '-N', '-A', '-U', '-L', '--nocolor', '-v', '-V', '-h', '--overwrite']) {
    t.true(help.text.includes(flag), flag);
  }
  t.regex(help.text, /Examples:\n/);
  t.regex(help.text, /virtnbdrestore -i \/backup\/ -o \/target --until virtnbdbackup\.2/);
  t.regex(help.text, /cat set\.zip \| virtnbdrestore -i - -o \/target/);
  t.is(parseRestoreArgs(['-V'], env).kind, 'version');
});

test('every remote-restore option is implemented: none is reported as "not yet"; --tls and the login reach the options', (t) => {
  const o = run(['-i', 'x', '-o', 'y', '-P', '10810', '--tls', '--tls-cert', '/certs', '--user', 'u', '--password-file', '/pw']);
  t.deepEqual(restoreNotYetGiven(o), []);
  t.like(o, { nbdPort: 10810, tls: true, tlsCert: '/certs', user: 'u', passwordFile: '/pw' });
  t.deepEqual(restoreNotYetGiven(run(['-i', 'x', '-o', 'y'])), []);
});
