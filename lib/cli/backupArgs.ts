/**
 * virtnbdbackup's command line: the flags of virtnbdbackup 2.x (which keep
 * 1.9.15's, except that `-S` now means --start-domain; --scratchdir is long
 * only), parsed into a typed BackupOptions. Values are as given; rules that
 * need the domain or the target directory (auto, raw with inc, workers)
 * belong to the backup plan (lib/backup/level.ts). Pure: argv and the
 * process's user and pid in, options or an ArgumentError out.
 */
import type { Level, OutputType } from '../backup/level.js';
import { parseDiskList } from '../backup/disks.js';
import { sshLoginOfUri } from '../remote/remoteHost.js';
import { ArgumentError, formatHelp, formatUsage, parseArguments, type ArgValue, type OptionSpec, type ProgramSpec, checkTcpPorts } from './argParser.js';

export interface BackupArgsEnvironment {
  /** Login name of the user running the command: picks the default URI and --ssh-user. */
  user: string;
  /** Process id, part of the default NBD socket file name. */
  pid: number;
  /** Program name in usage and help (default virtnbdbackup). */
  prog?: string;
}

export interface BackupOptions {
  domain: string;
  level: Level;
  type: OutputType;
  /** --raw: also save disks without bitmaps (raw), whole. */
  raw: boolean;
  /** -o as given; "-" for a zip on stdout. */
  output: string;
  stdout: boolean;
  checkpointDir?: string;
  scratchDir: string;
  startDomain: boolean;
  pause: boolean;
  /** -i, split on commas. */
  include?: string[];
  /** -x, split on commas. */
  exclude?: string[];
  socketFile: string;
  /** -n, or implied by --quiet. */
  noProgress: boolean;
  /** false, or the LZ4 compression level (-z alone: 2). */
  compress: number | false;
  worker?: number;
  /** -F, split on commas: mountpoints to freeze; undefined: all. */
  freezeMountpoints?: string[];
  strict: boolean;
  noSparseDetection: boolean;
  threshold?: number;
  uri: string;
  user?: string;
  password?: string;
  /** --password-file: the libvirt password is this file's first line. */
  passwordFile?: string;
  sshUser: string;
  sshPort: number;
  sshPrivateKey?: string;
  nbdPort: number;
  /** -I; undefined: the host name libvirt reports. */
  nbdIp?: string;
  tls: boolean;
  tlsCert: string;
  syslog: boolean;
  quiet: boolean;
  noColor: boolean;
  /** Debug options. */
  qemu: boolean;
  startOnly: boolean;
  killOnly: boolean;
  printOnly: boolean;
  verbose: boolean;
  /** Long names (`--start-domain`) of the options given on the command line. */
  given: ReadonlySet<string>;
}

export type BackupArgs = { kind: 'run'; options: BackupOptions } | { kind: 'help'; text: string } | { kind: 'version' };

const GENERAL = 'General options';
const REMOTE = 'Remote Backup options';
const LOGGING = 'Logging options';
const DEBUG = 'Debug options';

const EXAMPLES = (prog: string): string =>
  [
    'Examples:',
    "   # full backup of domain 'webvm' with all attached disks:",
    `\t${prog} -d webvm -l full -o /backup/`,
    '   # incremental backup:',
    `\t${prog} -d webvm -l inc -o /backup/`,
    '   # differential backup:',
    `\t${prog} -d webvm -l diff -o /backup/`,
    '   # full backup into an empty directory, incremental ones after it:',
    `\t${prog} -d webvm -l auto -o /backup/`,
    "   # full backup, exclude disk 'vda':",
    `\t${prog} -d webvm -l full -x vda -o /backup/`,
    "   # full backup, back up only disk 'vdb':",
    `\t${prog} -d webvm -l full -i vdb -o /backup/`,
    '   # full backup, compression enabled:',
    `\t${prog} -d webvm -l full -z -o /backup/`,
    '   # full backup, written as a zip archive to stdout:',
    `\t${prog} -d webvm -l full -o - > backup.zip`,
    '   # full backup of a domain on a remote libvirtd:',
    `\t${prog} -U qemu+ssh://root@remotehost/system --ssh-user root -d webvm -l full -o /backup/`,
    '',
  ].join('\n');

function optionTable(env: BackupArgsEnvironment): OptionSpec[] {
  const uri = env.user === 'root' ? 'qemu:///system' : 'qemu:///session';
  return [
    { dest: 'help', long: '--help', short: '-h', kind: 'flag', action: 'help', help: 'show this help message and exit' },
    { dest: 'domain', long: '--domain', short: '-d', kind: 'value', required: true, group: GENERAL, help: 'Domain to back up' },
    {
      dest: 'level',
      long: '--level',
      short: '-l',
      kind: 'value',
      choices: ['copy', 'full', 'inc', 'diff', 'auto'],
      group: GENERAL,
      help: 'Backup level. (default: copy)',
    },
    {
      dest: 'type',
      long: '--type',
      short: '-t',
      kind: 'value',
      choices: ['stream', 'raw'],
      group: GENERAL,
      help: 'Output type: stream or raw. (default: stream)',
    },
    { dest: 'raw', long: '--raw', short: '-r', kind: 'flag', group: GENERAL, help: 'Include raw disk images (no changed block tracking) in full and copy backups. (default: False)' },
    { dest: 'output', long: '--output', short: '-o', kind: 'value', required: true, group: GENERAL, help: 'Output target directory, or - for a zip archive on stdout' },
    { dest: 'checkpointdir', long: '--checkpointdir', short: '-C', kind: 'value', group: GENERAL, help: 'Persistent libvirt checkpoint storage directory (default: <output>/checkpoints)' },
    { dest: 'scratchdir', long: '--scratchdir', kind: 'value', group: GENERAL, help: 'Target dir for temporary scratch files. (default: /var/tmp)' },
    { dest: 'start_domain', long: '--start-domain', short: '-S', kind: 'flag', group: GENERAL, help: 'Start the domain paused if it is shut off. (default: False)' },
    { dest: 'pause', long: '--pause', kind: 'flag', group: GENERAL, help: 'Pause the domain while the backup job starts. (default: False)' },
    { dest: 'include', long: '--include', short: '-i', kind: 'value', group: GENERAL, help: 'Back up only the disk(s) with these target dev names (-i vda,vdb)' },
    { dest: 'exclude', long: '--exclude', short: '-x', kind: 'value', group: GENERAL, help: 'Exclude disk(s) with these target dev names (-x vda,vdb)' },
    {
      dest: 'socketfile',
      long: '--socketfile',
      short: '-f',
      kind: 'value',
      group: GENERAL,
      help: `Use this file for the NBD server socket. (default: /var/tmp/virtnbdbackup.${env.pid})`,
    },
    { dest: 'noprogress', long: '--noprogress', short: '-n', kind: 'flag', group: GENERAL, help: 'Disable progress bar' },
    {
      dest: 'compress',
      long: '--compress',
      short: '-z',
      kind: 'optional-value',
      int: true,
      const: 2,
      group: GENERAL,
      help: 'Compress with lz4 at this compression level (-z alone: 2). (default: False)',
    },
    { dest: 'worker', long: '--worker', short: '-w', kind: 'value', int: true, group: GENERAL, help: 'Number of disks backed up at once. (default: number of disks)' },
    {
      dest: 'freeze_mountpoint',
      long: '--freeze-mountpoint',
      short: '-F',
      kind: 'value',
      group: GENERAL,
      help: 'With a guest agent, freeze only the filesystems on these mountpoints (default: all)',
    },
    { dest: 'strict', long: '--strict', short: '-e', kind: 'flag', group: GENERAL, help: 'Exit with code 2 if warnings occurred during the backup. (default: False)' },
    {
      dest: 'no_sparse_detection',
      long: '--no-sparse-detection',
      kind: 'flag',
      group: GENERAL,
      help: 'Skip detection of zeroed ranges during incremental or differential backups. (default: False)',
    },
    { dest: 'threshold', long: '--threshold', short: '-T', kind: 'value', int: true, group: GENERAL, help: 'Back up only if at least this many bytes changed.' },
    { dest: 'uri', long: '--uri', short: '-U', kind: 'value', group: REMOTE, help: `Libvirt connection URI. (default: ${uri})` },
    { dest: 'user', long: '--user', kind: 'value', group: REMOTE, help: 'User to authenticate against libvirtd. (default: None)' },
    {
      dest: 'ssh_user',
      long: '--ssh-user',
      kind: 'value',
      group: REMOTE,
      help: `User to authenticate against the remote sshd, for copying files. (default: the URI's user, else ${env.user})`,
    },
    { dest: 'ssh_port', long: '--ssh-port', kind: 'value', int: true, group: REMOTE, help: "Port of the remote sshd. (default: the URI's port, else 22)" },
    { dest: 'ssh_private_key', long: '--ssh-private-key', kind: 'value', group: REMOTE, help: 'Private key file for ssh (as ssh -i). (default: None)' },
    {
      dest: 'password',
      long: '--password',
      kind: 'value',
      group: REMOTE,
      help: 'Password to authenticate against libvirtd; visible in the process list, prefer --password-file or the VIRTNBD_PASSWORD environment variable. (default: None)',
    },
    {
      dest: 'password_file',
      long: '--password-file',
      kind: 'value',
      group: REMOTE,
      help: 'Read the password to authenticate against libvirtd from this file (its first line). (default: None)',
    },
    {
      dest: 'nbd_port',
      long: '--nbd-port',
      short: '-P',
      kind: 'value',
      int: true,
      group: REMOTE,
      help:
        'TCP port of the backup job\'s NBD server, used for remote domains; a local backup uses the unix socket (-f) unless -P, -I or --tls is given. ' +
        'Use a different port for each concurrent backup. (default: 10809)',
    },
    { dest: 'nbd_ip', long: '--nbd-ip', short: '-I', kind: 'value', group: REMOTE, help: 'IP address or host name the NBD server binds to and is reached at (default: host name libvirtd reports)' },
    {
      dest: 'tls',
      long: '--tls',
      kind: 'flag',
      group: REMOTE,
      help: "Serve NBD on TCP with TLS (the server certificate from qemu.conf's backup_tls_x509_cert_dir), also for a local backup. (default: False)",
    },
    {
      dest: 'tls_cert',
      long: '--tls-cert',
      kind: 'value',
      group: REMOTE,
      help: 'Directory of the TLS certificates: ca-cert.pem verifies the NBD server, client-cert.pem and client-key.pem (if present) identify us. (default: /etc/pki/qemu/)',
    },
    { dest: 'syslog', long: '--syslog', short: '-L', kind: 'flag', group: LOGGING, help: 'Also send log messages to syslog (default: False)' },
    { dest: 'quiet', long: '--quiet', kind: 'flag', group: LOGGING, help: 'Do not log to stderr; implies --noprogress (default: False)' },
    { dest: 'nocolor', long: '--nocolor', kind: 'flag', group: LOGGING, help: 'Disable colored output (default: False)' },
    { dest: 'qemu', long: '--qemu', short: '-q', kind: 'flag', group: DEBUG, help: 'Use qemu tools to query extents.' },
    { dest: 'startonly', long: '--startonly', short: '-s', kind: 'flag', group: DEBUG, help: 'Only start the backup job in libvirt, do not save any data' },
    { dest: 'killonly', long: '--killonly', short: '-k', kind: 'flag', group: DEBUG, help: 'Stop a running backup job' },
    { dest: 'printonly', long: '--printonly', short: '-p', kind: 'flag', group: DEBUG, help: 'Print the estimated size of the next incremental backup and quit.' },
    { dest: 'verbose', long: '--verbose', short: '-v', kind: 'flag', group: DEBUG, help: 'Enable debug output' },
    { dest: 'version', long: '--version', short: '-V', kind: 'flag', action: 'version', group: DEBUG, help: 'Show version and exit' },
  ];
}

/** The parser's description of virtnbdbackup's command line. */
export function backupProgramSpec(env: BackupArgsEnvironment): ProgramSpec {
  const prog = env.prog ?? 'virtnbdbackup';
  return {
    prog,
    description: 'Back up libvirt/qemu virtual machines',
    epilog: EXAMPLES(prog),
    groups: [GENERAL, REMOTE, LOGGING, DEBUG],
    options: optionTable(env),
  };
}

/** The help text, as `-h` prints it. */
export function backupHelp(env: BackupArgsEnvironment): string {
  return formatHelp(backupProgramSpec(env));
}

/**
 * Every option, by long name, with its display form (`-S/--start-domain`),
 * so a caller can say which given options it does not implement yet.
 */
export function backupOptionNames(): ReadonlyMap<string, string> {
  return new Map(optionTable({ user: 'root', pid: 0 }).map((o) => [o.long, o.short ? `${o.short}/${o.long}` : o.long]));
}

/**
 * Options of virtnbdbackup whose behaviour virtnbd does not have yet; the
 * command refuses them with "not yet" rather than ignoring them. Adjust as
 * features land.
 */
export const BACKUP_OPTIONS_NOT_YET: ReadonlySet<string> = new Set([
]);

/** The options among `notYet` that the command line used, in display form (`-S/--start-domain`). */
export function notYetGiven(options: BackupOptions, notYet: ReadonlySet<string> = BACKUP_OPTIONS_NOT_YET): string[] {
  const names = backupOptionNames();
  return [...options.given].filter((long) => notYet.has(long)).map((long) => names.get(long) ?? long);
}

/**
 * Parse virtnbdbackup's arguments. Throws ArgumentError (exit code 2,
 * `format()` gives argparse's usage + error text) for a bad command line.
 */
export function parseBackupArgs(argv: readonly string[], env: BackupArgsEnvironment): BackupArgs {
  const spec = backupProgramSpec(env);
  const result = parseArguments(spec, argv);
  if (result.kind === 'help') return { kind: 'help', text: formatHelp(spec) };
  if (result.kind === 'version') return { kind: 'version' };
  const v = result.values;
  const str = (dest: string): string | undefined => {
    const value: ArgValue | undefined = v.get(dest);
    return typeof value === 'string' ? value : undefined;
  };
  const num = (dest: string): number | undefined => {
    const value: ArgValue | undefined = v.get(dest);
    return typeof value === 'number' ? value : undefined;
  };
  const flag = (dest: string): boolean => v.get(dest) === true;
  const fail = (message: string): never => {
    throw new ArgumentError(spec.prog, formatUsage(spec), message);
  };
  const list = (dest: string, display: string): string[] | undefined => {
    const value = str(dest);
    if (value === undefined) return undefined;
    const items = parseDiskList(value);
    if (items.length === 0) fail(`argument ${display}: expected a comma-separated list of names, got ${JSON.stringify(value)}`);
    return items;
  };

  const output = str('output') as string;
  const domain = str('domain') as string;
  if (domain === '') fail('argument -d/--domain: the domain name is empty');
  if (output === '') fail('argument -o/--output: the output directory is empty');
  const compress = num('compress');
  if (compress !== undefined && compress < 0) fail(`argument -z/--compress: the compression level must be 0 or more, got ${compress}`);
  checkTcpPorts(num, fail);

  const given = new Set(spec.options.filter((o) => v.has(o.dest)).map((o) => o.long));
  const quiet = flag('quiet');
  const options: BackupOptions = {
    domain,
    level: (str('level') ?? 'copy') as Level,
    type: (str('type') ?? 'stream') as OutputType,
    raw: flag('raw'),
    output,
    stdout: output === '-',
    scratchDir: str('scratchdir') ?? '/var/tmp',
    startDomain: flag('start_domain'),
    pause: flag('pause'),
    socketFile: str('socketfile') ?? `/var/tmp/virtnbdbackup.${env.pid}`,
    noProgress: flag('noprogress') || quiet,
    compress: compress ?? false,
    strict: flag('strict'),
    noSparseDetection: flag('no_sparse_detection'),
    uri: str('uri') ?? (env.user === 'root' ? 'qemu:///system' : 'qemu:///session'),
    // A qemu+ssh:// URI's user and port are the hypervisor's ssh login too.
    sshUser: str('ssh_user') ?? sshLoginOfUri(str('uri') ?? '').user ?? env.user,
    sshPort: num('ssh_port') ?? sshLoginOfUri(str('uri') ?? '').port ?? 22,
    nbdPort: num('nbd_port') ?? 10809,
    tls: flag('tls'),
    tlsCert: str('tls_cert') ?? '/etc/pki/qemu/',
    syslog: flag('syslog'),
    quiet,
    noColor: flag('nocolor'),
    qemu: flag('qemu'),
    startOnly: flag('startonly'),
    killOnly: flag('killonly'),
    printOnly: flag('printonly'),
    verbose: flag('verbose'),
    given,
  };
  const checkpointDir = str('checkpointdir');
  if (checkpointDir !== undefined) options.checkpointDir = checkpointDir;
  const include = list('include', '-i/--include');
  if (include) options.include = include;
  const exclude = list('exclude', '-x/--exclude');
  if (exclude) options.exclude = exclude;
  const worker = num('worker');
  if (worker !== undefined) options.worker = worker;
  const freeze = list('freeze_mountpoint', '-F/--freeze-mountpoint');
  if (freeze) options.freezeMountpoints = freeze;
  const threshold = num('threshold');
  if (threshold !== undefined) options.threshold = threshold;
  for (const [dest, key] of [
    ['user', 'user'],
    ['password', 'password'],
    ['password_file', 'passwordFile'],
    ['ssh_private_key', 'sshPrivateKey'],
  ] as const) {
    const value = str(dest);
    if (value !== undefined) options[key] = value;
  }
  const nbdIp = str('nbd_ip');
  if (nbdIp !== undefined && nbdIp !== '') options.nbdIp = nbdIp;
  return { kind: 'run', options };
}
