/**
 * virtnbdmap's command line: the flags of Debian's virtnbdmap 1.9.15
 * (`-f FILE[,FILE...]`, -b, -d, -e, -t, -l, -p, -n, -L, -r, -v, -V), plus
 * `--socket PATH` (serve on a unix socket instead of TCP), `--boot`,
 * `--name` and `-U/--uri` (instant recovery) and `--nocolor`. `-b` and
 * `-t` tuned virtnbdmap's nbdkit process; they are accepted and have no
 * effect. Pure: argv and the process's home in, options or an
 * ArgumentError out.
 */
import type { MapOptions } from '../map/map.js';
import { ArgumentError, formatHelp, formatUsage, parseArguments, type ArgValue, type OptionSpec, type ProgramSpec } from './argParser.js';

export interface MapArgsEnvironment {
  /** $HOME: the default log file lives there. */
  home: string;
  prog?: string;
}

export interface MapCliOptions extends MapOptions {
  logFile: string;
  verbose: boolean;
  noProgress: boolean;
  noColor: boolean;
  /** Long names of the options given. */
  given: ReadonlySet<string>;
}

export type MapArgs = { kind: 'run'; options: MapCliOptions } | { kind: 'help'; text: string } | { kind: 'version' };

const GENERAL = 'General options';
const RECOVERY = 'Instant recovery options';
const LOGGING = 'Logging options';
const DEBUG = 'Debug options';

const EXAMPLES = (prog: string): string =>
  [
    'Examples:',
    '   # Map full backup to device /dev/nbd0 (or, without the nbd module, serve it on 127.0.0.1:10809):',
    `\t${prog} -f /backup/sda.full.data`,
    '   # Map full backup to device /dev/nbd2:',
    `\t${prog} -f /backup/sda.full.data -d /dev/nbd2`,
    '   # Map sequence of full and incremental to device /dev/nbd2:',
    `\t${prog} -f /backup/sda.full.data,/backup/sda.inc.virtnbdbackup.1.data -d /dev/nbd2`,
    '   # Serve the chain read-only on a unix socket:',
    `\t${prog} -r -f /backup/sda.full.data,/backup/sda.inc.virtnbdbackup.1.data --socket /run/sda.sock`,
    '   # Instant recovery: boot the backed-up VM from its backup (all disks of the set):',
    `\t${prog} --boot -f /backup/`,
    '',
  ].join('\n');

function optionTable(env: MapArgsEnvironment, prog: string): OptionSpec[] {
  return [
    { dest: 'help', long: '--help', short: '-h', kind: 'flag', action: 'help', help: 'show this help message and exit' },
    { dest: 'file', long: '--file', short: '-f', kind: 'value', required: true, group: GENERAL, help: 'List of Backup files to map (comma separated; a directory stands for its data files)' },
    { dest: 'blocksize', long: '--blocksize', short: '-b', kind: 'value', group: GENERAL, help: 'Maximum blocksize passed to nbdkit. (accepted for compatibility; no effect)' },
    { dest: 'device', long: '--device', short: '-d', kind: 'value', group: GENERAL, help: 'Target device. (default: /dev/nbd0)' },
    { dest: 'export_name', long: '--export-name', short: '-e', kind: 'value', group: GENERAL, help: 'Export name of the NBD server. (default: sda)' },
    { dest: 'threads', long: '--threads', short: '-t', kind: 'value', group: GENERAL, help: 'Amount of threads passed to nbdkit process. (accepted for compatibility; no effect)' },
    { dest: 'listen_address', long: '--listen-address', short: '-l', kind: 'value', group: GENERAL, help: 'IP Address for the NBD server to listen on. (default: 127.0.0.1)' },
    { dest: 'listen_port', long: '--listen-port', short: '-p', kind: 'value', int: true, group: GENERAL, help: 'Port for the NBD server to listen on. (default: 10809)' },
    { dest: 'socket', long: '--socket', kind: 'value', metavar: 'PATH', group: GENERAL, help: 'Listen on this unix socket instead of TCP.' },
    { dest: 'noprogress', long: '--noprogress', short: '-n', kind: 'flag', group: GENERAL, help: 'Disable progress bar' },
    { dest: 'boot', long: '--boot', kind: 'flag', group: RECOVERY, help: 'Start the backed-up VM (transient, qcow2 overlays on the mapped disks); needs its vmconfig beside the data files.' },
    { dest: 'name', long: '--name', kind: 'value', group: RECOVERY, help: 'Name of the instant domain. (default: instant_<name>)' },
    { dest: 'uri', long: '--uri', short: '-U', kind: 'value', group: RECOVERY, help: 'Libvirt connection URI. (default: qemu:///system)' },
    { dest: 'logfile', long: '--logfile', short: '-L', kind: 'value', group: LOGGING, help: `Path to Logfile (default: ${env.home}/${prog}.log)` },
    { dest: 'nocolor', long: '--nocolor', kind: 'flag', group: LOGGING, help: 'Disable colored output (default: False)' },
    { dest: 'readonly', long: '--readonly', short: '-r', kind: 'flag', group: DEBUG, help: 'Map image readonly (default: False: writable, changes go to a temporary copy-on-write overlay)' },
    { dest: 'verbose', long: '--verbose', short: '-v', kind: 'flag', group: DEBUG, help: 'Enable debug output' },
    { dest: 'version', long: '--version', short: '-V', kind: 'flag', action: 'version', group: DEBUG, help: 'Show version and exit' },
  ];
}

export function mapProgramSpec(env: MapArgsEnvironment): ProgramSpec {
  const prog = env.prog ?? 'virtnbdmap';
  return {
    prog,
    description: 'Map backup image(s) to block device, or serve them over NBD',
    epilog: EXAMPLES(prog),
    groups: [GENERAL, RECOVERY, LOGGING, DEBUG],
    options: optionTable(env, prog),
  };
}

/** Parse virtnbdmap's arguments. Throws ArgumentError (exit 2) for a bad command line. */
export function parseMapArgs(argv: readonly string[], env: MapArgsEnvironment): MapArgs {
  const spec = mapProgramSpec(env);
  const result = parseArguments(spec, argv);
  if (result.kind === 'help') return { kind: 'help', text: formatHelp(spec) };
  if (result.kind === 'version') return { kind: 'version' };
  const v = result.values;
  const str = (dest: string): string | undefined => {
    const value: ArgValue | undefined = v.get(dest);
    return typeof value === 'string' ? value : undefined;
  };
  const flag = (dest: string): boolean => v.get(dest) === true;
  const fail = (message: string): never => {
    throw new ArgumentError(spec.prog, formatUsage(spec), message);
  };
  const given = new Set(spec.options.filter((o) => v.has(o.dest)).map((o) => o.long));

  const files = (str('file') ?? '').split(',').map((f) => f.trim()).filter((f) => f !== '');
  if (files.length === 0) fail('argument -f/--file: expected a comma-separated list of backup files');
  const port = v.get('listen_port') as number | undefined;
  if (port !== undefined && (port < 0 || port > 65535)) fail(`argument -p/--listen-port: ${port} is not a TCP port`);
  const socket = str('socket');
  if (socket === '') fail('argument --socket: the path is empty');
  const boot = flag('boot');
  if (socket !== undefined && (given.has('--listen-address') || given.has('--listen-port'))) {
    fail('argument --socket: not allowed with -l/--listen-address or -p/--listen-port (one server, one address)');
  }
  if (boot && (given.has('--listen-address') || given.has('--listen-port'))) {
    fail('argument --boot: the VM reaches the disks over a unix socket; use --socket PATH instead of -l/-p');
  }
  for (const only of ['--name', '--uri']) {
    if (given.has(only) && !boot) fail(`argument ${only}: only with --boot`);
  }

  const options: MapCliOptions = {
    files,
    exportName: str('export_name') ?? 'sda',
    readOnly: flag('readonly'),
    boot,
    device: str('device') ?? '/dev/nbd0',
    logFile: str('logfile') ?? `${env.home}/${spec.prog}.log`,
    verbose: flag('verbose'),
    noProgress: flag('noprogress'),
    noColor: flag('nocolor'),
    given,
  };
  if (socket !== undefined) options.listen = { socketPath: socket };
  else if (!boot) options.listen = { host: str('listen_address') ?? '127.0.0.1', port: port ?? 10809 };
  const name = str('name');
  if (name !== undefined) options.name = name;
  const uri = str('uri');
  if (uri !== undefined) options.uri = uri;
  return { kind: 'run', options };
}
