/**
 * virtnbdrestore's command line: the flags of virtnbdrestore 2.x (which
 * keep 1.9.15's: `-o dump` and `-o verify` still mean the action), plus
 * `--overwrite`, parsed into a typed RestoreArgs. Pure: argv and the
 * process's user, home and pid in, options or an ArgumentError out.
 */
import type { RestoreAction, RestoreOptions } from '../restore/options.js';
import { sshLoginOfUri } from '../remote/remoteHost.js';
import { ArgumentError, formatHelp, formatUsage, parseArguments, type ArgValue, type OptionSpec, type ProgramSpec, checkTcpPorts } from './argParser.js';

export interface RestoreArgsEnvironment {
  /** Login name: picks the default URI and --ssh-user. */
  user: string;
  /** $HOME: the default log file lives there. */
  home: string;
  /** Process id, part of the default socket file name. */
  pid: number;
  prog?: string;
}

/** RestoreOptions plus what only the command line cares about. */
export interface RestoreCliOptions extends RestoreOptions {
  /** --user, --password, --password-file: the libvirt login (lib/cli/credentials.ts resolves them). */
  user?: string;
  password?: string;
  passwordFile?: string;
  noProgress: boolean;
  socketFile: string;
  logFile: string;
  noColor: boolean;
  verbose: boolean;
  /** Long names of the options given. */
  given: ReadonlySet<string>;
}

export type RestoreArgs = { kind: 'run'; options: RestoreCliOptions } | { kind: 'help'; text: string } | { kind: 'version' };

const GENERAL = 'General options';
const REMOTE = 'Remote Restore options';
const LOGGING = 'Logging options';
const DEBUG = 'Debug options';

const EXAMPLES = (prog: string): string =>
  [
    'Examples:',
    '   # Dump backup metadata:',
    `\t${prog} -i /backup/ -o dump`,
    '   # Verify checksums for existing data files in backup:',
    `\t${prog} -i /backup/ -o verify`,
    '   # Complete restore with all disks:',
    `\t${prog} -i /backup/ -o /target`,
    '   # Complete restore, adjust config and redefine vm after restore:',
    `\t${prog} -cD -i /backup/ -o /target`,
    "   # Complete restore, adjust config and redefine vm with name 'foo':",
    `\t${prog} -cD --name foo -i /backup/ -o /target`,
    "   # Restore only disk 'vda':",
    `\t${prog} -i /backup/ -o /target -d vda`,
    '   # Point in time restore:',
    `\t${prog} -i /backup/ -o /target --until virtnbdbackup.2`,
    '   # Restore and process specific file sequence:',
    `\t${prog} -i /backup/ -o /target --sequence vdb.full.data,vdb.inc.virtnbdbackup.1.data`,
    '   # Restore from a zip archive, or from one arriving on stdin:',
    `\t${prog} -i /backup/set.zip -o /target`,
    `\tcat set.zip | ${prog} -i - -o /target`,
    '',
  ].join('\n');

function optionTable(env: RestoreArgsEnvironment, prog: string): OptionSpec[] {
  const uri = env.user === 'root' ? 'qemu:///system' : 'qemu:///session';
  return [
    { dest: 'help', long: '--help', short: '-h', kind: 'flag', action: 'help', help: 'show this help message and exit' },
    {
      dest: 'action',
      long: '--action',
      short: '-a',
      kind: 'value',
      choices: ['dump', 'restore', 'verify'],
      group: GENERAL,
      help: 'Action to perform: (default: restore)',
    },
    { dest: 'input', long: '--input', short: '-i', kind: 'value', required: true, group: GENERAL, help: 'Directory including a backup set, a zip archive of one, or - for a zip archive on stdin' },
    { dest: 'output', long: '--output', short: '-o', kind: 'value', required: true, group: GENERAL, help: 'Restore target directory (dump or verify: the action)' },
    { dest: 'until', long: '--until', short: '-u', kind: 'value', group: GENERAL, help: 'Restore only until checkpoint (or differential backup ident), point in time restore.' },
    { dest: 'sequence', long: '--sequence', short: '-s', kind: 'value', group: GENERAL, help: 'Restore image based on specified backup files.' },
    { dest: 'disk', long: '--disk', short: '-d', kind: 'value', group: GENERAL, help: 'Process only disk matching target dev name. (default: None)' },
    { dest: 'noprogress', long: '--noprogress', short: '-n', kind: 'flag', group: GENERAL, help: 'Disable progress bar' },
    {
      dest: 'socketfile',
      long: '--socketfile',
      short: '-f',
      kind: 'value',
      group: GENERAL,
      help: 'Accepted for compatibility: qemu-nbd listens on a socket in a private directory of each run',
    },
    { dest: 'raw', long: '--raw', short: '-r', kind: 'flag', group: GENERAL, help: 'Copy raw images as is during restore. (default: False)' },
    { dest: 'adjust_config', long: '--adjust-config', short: '-c', kind: 'flag', group: GENERAL, help: 'Adjust vm configuration during restore. (default: False)' },
    { dest: 'define', long: '--define', short: '-D', kind: 'flag', group: GENERAL, help: 'Register/define VM after restore. (default: False)' },
    { dest: 'config_file', long: '--config-file', short: '-C', kind: 'value', group: GENERAL, help: 'Name of the vm config file written to the target directory. (default: vmconfig.xml)' },
    { dest: 'name', long: '--name', short: '-N', kind: 'value', group: GENERAL, help: 'Define restored domain with specified name' },
    { dest: 'buffsize', long: '--buffsize', short: '-B', kind: 'value', int: true, group: GENERAL, help: 'Buffer size to use during verify (accepted for compatibility; ignored)' },
    { dest: 'preallocate', long: '--preallocate', short: '-A', kind: 'flag', group: GENERAL, help: 'Preallocate restored qcow images. (default: False)' },
    { dest: 'overwrite', long: '--overwrite', kind: 'flag', group: GENERAL, help: 'Replace images that already exist in the target directory. (default: False)' },
    { dest: 'uri', long: '--uri', short: '-U', kind: 'value', group: REMOTE, help: `Libvirt connection URI. (default: ${uri})` },
    { dest: 'user', long: '--user', kind: 'value', group: REMOTE, help: 'User to authenticate against libvirtd. (default: None)' },
    { dest: 'ssh_user', long: '--ssh-user', kind: 'value', group: REMOTE, help: `User to authenticate against remote sshd: used for remote copy of files. (default: ${env.user})` },
    { dest: 'ssh_port', long: '--ssh-port', kind: 'value', int: true, group: REMOTE, help: "Port of the remote sshd. (default: the URI's port, else 22)" },
    { dest: 'ssh_private_key', long: '--ssh-private-key', kind: 'value', group: REMOTE, help: "Private key file for ssh (as ssh -i). (default: the URI's keyfile)" },
    { dest: 'password', long: '--password', kind: 'value', group: REMOTE, help: 'Password to authenticate against libvirtd; visible in the process list, prefer --password-file or the VIRTNBD_PASSWORD environment variable. (default: None)' },
    { dest: 'password_file', long: '--password-file', kind: 'value', group: REMOTE, help: 'Read the password to authenticate against libvirtd from this file (its first line). (default: None)' },
    { dest: 'nbd_port', long: '--nbd-port', short: '-P', kind: 'value', int: true, group: REMOTE, help: 'Port used by remote NBD Service. (default: 10809)' },
    { dest: 'nbd_ip', long: '--nbd-ip', short: '-I', kind: 'value', group: REMOTE, help: 'IP used to bind remote NBD service on (default: hostname returned by libvirtd)' },
    { dest: 'tls', long: '--tls', kind: 'flag', group: REMOTE, help: 'Enable and use TLS for NBD connection. (default: False)' },
    { dest: 'tls_cert', long: '--tls-cert', kind: 'value', group: REMOTE, help: 'Path to TLS certificates used during offline backup and restore. (default: /etc/pki/qemu/)' },
    { dest: 'logfile', long: '--logfile', short: '-L', kind: 'value', group: LOGGING, help: `Path to Logfile (default: ${env.home}/${prog}.log)` },
    { dest: 'nocolor', long: '--nocolor', kind: 'flag', group: LOGGING, help: 'Disable colored output (default: False)' },
    { dest: 'verbose', long: '--verbose', short: '-v', kind: 'flag', group: DEBUG, help: 'Enable debug output' },
    { dest: 'version', long: '--version', short: '-V', kind: 'flag', action: 'version', group: DEBUG, help: 'Show version and exit' },
  ];
}

export function restoreProgramSpec(env: RestoreArgsEnvironment): ProgramSpec {
  const prog = env.prog ?? 'virtnbdrestore';
  return {
    prog,
    description: 'Restore virtual machine disks',
    epilog: EXAMPLES(prog),
    groups: [GENERAL, REMOTE, LOGGING, DEBUG],
    options: optionTable(env, prog),
  };
}

/**
 * Options of virtnbdrestore whose behaviour virtnbd does not have yet
 * (TLS for the remote qemu-nbd); the command refuses them rather than
 * ignoring them.
 */
export const RESTORE_OPTIONS_NOT_YET: ReadonlySet<string> = new Set([]);

/** Parse virtnbdrestore's arguments. Throws ArgumentError (exit 2) for a bad command line. */
export function parseRestoreArgs(argv: readonly string[], env: RestoreArgsEnvironment): RestoreArgs {
  const spec = restoreProgramSpec(env);
  const result = parseArguments(spec, argv);
  if (result.kind === 'help') return { kind: 'help', text: formatHelp(spec) };
  if (result.kind === 'version') return { kind: 'version' };
  const v = result.values;
  const str = (dest: string): string | undefined => {
    const value: ArgValue | undefined = v.get(dest);
    return typeof value === 'string' ? value : undefined;
  };
  const flag = (dest: string): boolean => v.get(dest) === true;
  const num = (dest: string): number | undefined => {
    const value: ArgValue | undefined = v.get(dest);
    return typeof value === 'number' ? value : undefined;
  };
  const fail = (message: string): never => {
    throw new ArgumentError(spec.prog, formatUsage(spec), message);
  };

  const input = str('input') as string;
  const output = str('output') as string;
  if (input === '') fail('argument -i/--input: the input is empty');
  if (output === '') fail('argument -o/--output: the output directory is empty');
  // 1.9.15 and 2.x: `-o dump` / `-o verify` name the action.
  let action = (str('action') ?? 'restore') as RestoreAction;
  if (output === 'dump' || output === 'verify') action = output;
  let sequence: string[] | undefined;
  const rawSequence = str('sequence');
  if (rawSequence !== undefined) {
    sequence = rawSequence.split(',').map((s) => s.trim()).filter((s) => s !== '');
    if (sequence.length === 0) fail('argument -s/--sequence: expected a comma-separated list of data files');
  }
  const uri = str('uri') ?? (env.user === 'root' ? 'qemu:///system' : 'qemu:///session');
  checkTcpPorts(num, fail);
  const given = new Set(spec.options.filter((o) => v.has(o.dest)).map((o) => o.long));
  const options: RestoreCliOptions = {
    action,
    input,
    output,
    raw: flag('raw'),
    adjustConfig: flag('adjust_config') || flag('define'),
    define: flag('define'),
    configFile: str('config_file') ?? 'vmconfig.xml',
    preallocate: flag('preallocate'),
    overwrite: flag('overwrite'),
    uri,
    noProgress: flag('noprogress'),
    socketFile: str('socketfile') ?? `/var/tmp/virtnbdbackup.${env.pid}`,
    logFile: str('logfile') ?? `${env.home}/${spec.prog}.log`,
    noColor: flag('nocolor'),
    verbose: flag('verbose'),
    given,
  };
  for (const [dest, key] of [
    ['until', 'until'],
    ['disk', 'disk'],
    ['name', 'name'],
  ] as const) {
    const value = str(dest);
    if (value !== undefined) options[key] = value;
  }
  if (sequence) options.sequence = sequence;
  for (const [dest, key] of [
    ['user', 'user'],
    ['password', 'password'],
    ['password_file', 'passwordFile'],
  ] as const) {
    const value = str(dest);
    if (value !== undefined) options[key] = value;
  }
  // A restore to a remote hypervisor: ssh login (a qemu+ssh:// URI's user and port by default) and qemu-nbd's address there.
  const login = sshLoginOfUri(uri);
  const sshUser = str('ssh_user') ?? login.user;
  if (sshUser !== undefined) options.sshUser = sshUser;
  const sshPort = num('ssh_port') ?? login.port;
  if (sshPort !== undefined) options.sshPort = sshPort;
  const key = str('ssh_private_key');
  if (key !== undefined) options.sshPrivateKey = key;
  const nbdPort = num('nbd_port');
  if (nbdPort !== undefined) options.nbdPort = nbdPort;
  if (flag('tls')) options.tls = true;
  const tlsCert = str('tls_cert');
  if (tlsCert !== undefined) options.tlsCert = tlsCert;
  const nbdIp = str('nbd_ip');
  if (nbdIp !== undefined && nbdIp !== '') options.nbdIp = nbdIp;
  return { kind: 'run', options };
}

/** The not-yet options the command line used, in display form (`-P/--nbd-port`). */
export function restoreNotYetGiven(options: RestoreCliOptions): string[] {
  const table = optionTable({ user: 'root', home: '/root', pid: 0 }, 'virtnbdrestore');
  return [...options.given]
    .filter((long) => RESTORE_OPTIONS_NOT_YET.has(long))
    .map((long) => {
      const o = table.find((x) => x.long === long)!;
      return o.short ? `${o.short}/${o.long}` : o.long;
    });
}
