import test from 'ava';
import { execFileSync } from 'node:child_process';
import { ArgumentError, parseArguments, type ArgValue } from '../lib/cli/argParser.js';
import {
  BACKUP_OPTIONS_NOT_YET,
  backupHelp,
  backupProgramSpec,
  notYetGiven,
  parseBackupArgs,
  type BackupOptions,
} from '../lib/cli/backupArgs.js';

const ROOT = { user: 'root', pid: 4242 };

function run(argv: string[], env = ROOT): BackupOptions {
  const result = parseBackupArgs(argv, env);
  if (result.kind !== 'run') throw new Error(`expected options, got ${result.kind}`);
  return result.options;
}

function argError(argv: string[]): ArgumentError {
  try {
    parseBackupArgs(argv, ROOT);
  } catch (e) {
    if (e instanceof ArgumentError) return e;
    throw e;
  }
  throw new Error(`no error for ${JSON.stringify(argv)}`);
}

/**
 * Python's argparse is the reference: the same option table is given to
 * python3's argparse and to ours, and every command line must give the same
 * values or the same error message.
 */
const ORACLE_CASES: string[][] = [
  [],
  ['-d', 'vm'],
  ['-o', '/b'],
  ['-d', 'vm', '-o', '/b'],
  ['-d', 'vm', '-o', '-'],
  ['-d', 'vm', '-o', '/b', '-l', 'inc'],
  ['-dvm', '-o/b', '-linc'],
  ['-dvm', '-o', '/b', '-l=inc'],
  ['-d', 'vm', '-o', '/b', '--level=diff'],
  ['-d', 'vm', '-o', '/b', '--lev', 'full'],
  ['--dom=vm', '--out=/b'],
  ['--domain', 'vm', '--output', '/b', '--worker=4', '--threshold', '100'],
  ['-d', 'vm', '-o', '/b', '-l', 'foo'],
  ['-d', 'vm', '-o', '/b', '-l', 'inc', '-l', 'diff'],
  ['-d', 'vm', '-o', '/b', '-d', 'other'],
  ['-d', 'vm', '-o', '/b', '-z'],
  ['-d', 'vm', '-o', '/b', '-z', '5'],
  ['-d', 'vm', '-o', '/b', '-z5'],
  ['-d', 'vm', '-o', '/b', '--compress=7'],
  ['-d', 'vm', '-o', '/b', '--compress'],
  ['-d', 'vm', '-o', '/b', '--compress='],
  ['-d', 'vm', '-o', '/b', '-z', '-n'],
  ['-d', 'vm', '-o', '/b', '-z', 'fast'],
  ['-d', 'vm', '-o', '/b', '-z', '-1'],
  ['-d', 'vm', '-o', '/b', '-nz'],
  ['-d', 'vm', '-o', '/b', '-nz9'],
  ['-d', 'vm', '-o', '/b', '-nvz', '3'],
  ['-d', 'vm', '-o', '/b', '-nvr'],
  ['-d', 'vm', '-o', '/b', '-nx'],
  ['-d', 'vm', '-o', '/b', '-nxvda,vdb'],
  ['-d', 'vm', '-o', '/b', '-nQ'],
  ['-d', 'vm', '-o', '/b', '-Q'],
  ['-d', 'vm', '-o', '/b', '-r=1'],
  ['-d', 'vm', '-o', '/b', '-nl=inc'],
  ['-d', 'vm', '-o', '/b', '-nlinc'],
  ['-d', 'vm', '-o', '/b', '-z=3'],
  ['-d', 'vm', '-o', '/b', '-nz=3'],
  ['-d', 'vm', '-o', '/b', '-n=x'],
  ['-d', 'vm', '-o', '/b', '-n='],
  ['-d', 'vm', '-o', '/b', '-l='],
  ['-d', 'vm', '-o', '/b', '-hv'],
  ['-d', 'vm', '-o', '/b', '-hQ'],
  ['-d', 'vm', '-o', '/b', '--help=x'],
  ['-d', 'vm', '-o', '/b', '-f='],
  ['-d', 'vm', '-o', '/b', '--raw=yes'],
  ['-d', 'vm', '-o', '/b', '-w', '-1'],
  ['-d', 'vm', '-o', '/b', '-w', '1_0'],
  ['-d', 'vm', '-o', '/b', '-w', ' 3 '],
  ['-d', 'vm', '-o', '/b', '-w', 'abc'],
  ['-d', 'vm', '-o', '/b', '-w'],
  ['-d', '-o', '/b'],
  ['-d', 'vm', '-o', '/b', '-x', '-vda'],
  ['-d', 'vm', '-o', '/b', '-x', '-a b'],
  ['-d', 'vm', '-o', '/b', '--no'],
  ['-d', 'vm', '-o', '/b', '--nocol'],
  ['-d', 'vm', '-o', '/b', '--start'],
  ['-d', 'vm', '-o', '/b', '--ssh-p', '2222'],
  ['-d', 'vm', '-o', '/b', '--ssh-po', '2222'],
  ['-d', 'vm', '-o', '/b', '--foo', 'bar'],
  ['-d', 'vm', '-o', '/b', 'extra'],
  ['-d', 'vm', '-o', '/b', '--', '-x'],
  ['-d', 'vm', '-o', '/b', '-S', '--pause', '-P', '10810', '-I', '10.0.0.1', '--tls', '--tls-c=/x'],
  [
    '-d', 'vm', '-o', '/b', '-i', 'vda', '-x', 'vdb', '-F', '/,/var', '-C', '/cp', '--scratchdir', '/s', '-f', '/sock', '-T', '1024',
    '-U', 'qemu+ssh://h/system', '--user', 'u', '--password', 'p', '--ssh-user', 'su', '--ssh-port', '2222', '--ssh-private-key', '/k',
    '-e', '--no-sparse-detection', '-L', '--quiet', '--nocolor', '-q', '-s', '-k', '-p', '-v', '-t', 'raw', '-r', '-w', '3',
  ],
  ['-h'],
  ['-d', 'vm', '--help'],
  ['-d', 'vm', '-o', '/b', '-vh'],
  ['-V'],
  ['-l', 'foo', '-h'],
];

const PYTHON_ORACLE = String.raw`
import argparse, io, json, sys, contextlib
spec = json.load(sys.stdin)
class Refused(Exception):
    pass
class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Refused(message)
def build():
    p = Parser(prog=spec["prog"])
    for o in spec["options"]:
        if o.get("action") == "help":
            continue
        names = [o["short"], o["long"]] if o.get("short") else [o["long"]]
        if o.get("action") == "version":
            p.add_argument(*names, action="version", version="X")
            continue
        kw = {"dest": o["dest"], "default": None}
        if o.get("required"):
            kw["required"] = True
        if o["kind"] == "flag":
            kw["action"] = "store_true"
        else:
            if o.get("int"):
                kw["type"] = int
            if o.get("choices"):
                kw["choices"] = o["choices"]
            if o["kind"] == "optional-value":
                kw["nargs"] = "?"
                kw["const"] = o.get("const")
        p.add_argument(*names, **kw)
    return p
out = []
for argv in spec["cases"]:
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            ns = build().parse_args(argv)
        out.append({"values": {k: v for k, v in vars(ns).items() if v is not None and v is not False}})
    except Refused as e:
        out.append({"error": str(e)})
    except SystemExit:
        out.append({"exit": "help" if buf.getvalue().startswith("usage:") else "version"})
json.dump(out, sys.stdout)
`;

type OracleResult = { values: Record<string, ArgValue> } | { error: string } | { exit: 'help' | 'version' };

function ours(argv: string[]): OracleResult {
  try {
    const r = parseArguments(backupProgramSpec(ROOT), argv);
    if (r.kind !== 'values') return { exit: r.kind };
    return { values: Object.fromEntries(r.values) };
  } catch (e) {
    if (e instanceof ArgumentError) return { error: e.message };
    throw e;
  }
}

test("command lines parse exactly as Python's argparse parses them", (t) => {
  const spec = backupProgramSpec(ROOT);
  const input = JSON.stringify({ prog: spec.prog, options: spec.options, cases: ORACLE_CASES });
  const python = JSON.parse(execFileSync('python3', ['-c', PYTHON_ORACLE], { input, encoding: 'utf8' })) as OracleResult[];
  t.is(python.length, ORACLE_CASES.length);
  ORACLE_CASES.forEach((argv, i) => {
    t.deepEqual(ours(argv), python[i], `argv: ${JSON.stringify(argv)}`);
  });
});

test('defaults: copy level, stream type, /var/tmp scratch, socket per pid, system URI for root, session URI for others', (t) => {
  const o = run(['-d', 'webvm', '-o', '/backup']);
  t.like(o, {
    domain: 'webvm',
    output: '/backup',
    stdout: false,
    level: 'copy',
    type: 'stream',
    raw: false,
    compress: false,
    scratchDir: '/var/tmp',
    socketFile: '/var/tmp/virtnbdbackup.4242',
    uri: 'qemu:///system',
    sshUser: 'root',
    sshPort: 22,
    nbdPort: 10809,
    tlsCert: '/etc/pki/qemu/',
    tls: false,
    noProgress: false,
    strict: false,
  });
  for (const key of ['checkpointDir', 'include', 'exclude', 'worker', 'threshold', 'nbdIp', 'user', 'password', 'freezeMountpoints'] as const) {
    t.is(o[key], undefined, key);
  }
  t.deepEqual([...o.given].sort(), ['--domain', '--output']);
  const user = run(['-d', 'webvm', '-o', '/backup'], { user: 'alice', pid: 7 });
  t.like(user, { uri: 'qemu:///session', sshUser: 'alice', socketFile: '/var/tmp/virtnbdbackup.7' });
});

test('typed values: level, comma lists, compression level, stdout, quiet implies noprogress', (t) => {
  const o = run(['-d', 'vm', '-o', '-', '-l', 'auto', '-i', 'vda,vdb', '-x', 'sda', '-z', '-F', '/,/var', '--quiet', '-w', '2']);
  t.like(o, { level: 'auto', stdout: true, output: '-', compress: 2, quiet: true, noProgress: true, worker: 2 });
  t.deepEqual(o.include, ['vda', 'vdb']);
  t.deepEqual(o.exclude, ['sda']);
  t.deepEqual(o.freezeMountpoints, ['/', '/var']);
  t.is(run(['-d', 'vm', '-o', '/b', '--compress=0']).compress, 0, '-z 0 compresses at level 0, as in virtnbdbackup');
  t.is(run(['-d', 'vm', '-o', '/b', '-nz9']).compress, 9);
});

test('values argparse accepts but a backup cannot use are refused with exit code 2', (t) => {
  const cases: [string[], RegExp][] = [
    [['-d', 'vm', '-o', '/b', '-z', '-1'], /argument -z\/--compress: the compression level must be 0 or more, got -1/],
    [['-d', 'vm', '-o', '/b', '-P', '70000'], /argument -P\/--nbd-port: not a TCP port: 70000/],
    [['-d', 'vm', '-o', '/b', '--ssh-port', '0'], /argument --ssh-port: not a TCP port/],
    [['-d', 'vm', '-o', '/b', '-x', ','], /argument -x\/--exclude: expected a comma-separated list/],
    [['-d', '', '-o', '/b'], /the domain name is empty/],
    [['-d', 'vm', '-o', ''], /the output directory is empty/],
  ];
  for (const [argv, message] of cases) {
    const e = argError(argv);
    t.is(e.exitCode, 2);
    t.regex(e.message, message);
  }
});

test('errors print as argparse does: usage, then "<prog>: error: ..."', (t) => {
  const text = argError(['-d', 'vm']).format();
  t.true(text.startsWith('usage: virtnbdbackup [-h] -d DOMAIN [-l {copy,full,inc,diff,auto}]\n'));
  t.true(text.endsWith('\nvirtnbdbackup: error: the following arguments are required: -o/--output\n'));
  for (const line of text.split('\n')) t.true(line.length <= 78, `usage line too long: ${line}`);
});

test('help: every option, grouped, with examples; -V asks for the version', (t) => {
  const result = parseBackupArgs(['--help'], ROOT);
  t.is(result.kind, 'help');
  const text = result.kind === 'help' ? result.text : '';
  t.is(text, backupHelp(ROOT));
  for (const heading of ['options:', 'General options:', 'Remote Backup options:', 'Logging options:', 'Debug options:', 'Examples:']) {
    t.true(text.includes(`\n${heading}\n`), heading);
  }
  for (const o of backupProgramSpec(ROOT).options) t.true(text.includes(o.long), o.long);
  t.regex(text, /\n {2}-z \[COMPRESS\], --compress \[COMPRESS\]\n {24}Compress/);
  t.regex(text, /\n {2}-n, --noprogress {6}Disable progress bar\n/);
  t.regex(text, /\tvirtnbdbackup -d webvm -l inc -o \/backup\/\n/);
  t.regex(text, /default: \/var\/tmp\/virtnbdbackup\.4242/);
  t.deepEqual(parseBackupArgs(['-V'], ROOT), { kind: 'version' });
});

test('options not implemented yet can be named for a "not yet" answer', (t) => {
  const o = run(['-d', 'vm', '-o', '/b', '-S', '--tls', '-n', '-P', '10810']);
  t.deepEqual(notYetGiven(o, new Set(['--nbd-port', '--tls'])), ['-P/--nbd-port', '--tls']);
  t.deepEqual(notYetGiven(run(['-d', 'vm', '-o', '/b', '-l', 'full', '-z'])), []);
  t.deepEqual(notYetGiven(o, new Set(['--noprogress'])), ['-n/--noprogress']);
  t.false(BACKUP_OPTIONS_NOT_YET.has('--freeze-mountpoint'));
  t.false(BACKUP_OPTIONS_NOT_YET.has('--tls'));
});
