/**
 * A command-line parser that accepts what Python's argparse accepts, so the
 * command lines people wrote for virtnbdbackup/virtnbdrestore/virtnbdmap
 * keep working: `-l inc`, `-linc`, `-l=inc`, `--level inc`, `--level=inc`,
 * combined short flags (`-nv`, `-nz5`), unique prefixes of long options
 * (`--comp`), options with an optional value (`-z`, `-z 5`, `--compress=5`),
 * `-` and negative numbers as values, last occurrence wins. Errors read as
 * argparse's and exit with 2. Help text is laid out as argparse's
 * RawTextHelpFormatter does. Pure: argv in, values or an error out.
 */

export type OptionKind = 'flag' | 'value' | 'optional-value';

export interface OptionSpec {
  /** Key of the parsed value. */
  dest: string;
  /** `--domain`. */
  long: string;
  /** `-d`. */
  short?: string;
  kind: OptionKind;
  /** Shown in help; default: dest in upper case. */
  metavar?: string;
  choices?: readonly string[];
  /** Convert the value to an integer (as Python's int()). */
  int?: boolean;
  /** For optional-value options given without a value. */
  const?: string | number;
  required?: boolean;
  /** help and version end parsing, as in argparse. */
  action?: 'help' | 'version';
  help: string;
  /** Group heading in the help; options without one are listed under "options". */
  group?: string;
}

export interface ProgramSpec {
  prog: string;
  description: string;
  /** Printed verbatim after the options. */
  epilog?: string;
  /** Group headings in display order. */
  groups: readonly string[];
  options: readonly OptionSpec[];
}

export type ArgValue = string | number | true;

export type ParseResult =
  | { kind: 'help' }
  | { kind: 'version' }
  | {
      kind: 'values';
      /** Values by dest, for the options given. */
      values: ReadonlyMap<string, ArgValue>;
    };

/** A bad command line; print `format()` to stderr and exit with `exitCode`. */
export class ArgumentError extends Error {
  override readonly name = 'ArgumentError';
  readonly exitCode = 2;

  constructor(
    readonly prog: string,
    readonly usage: string,
    message: string,
  ) {
    super(message);
  }

  /** argparse's layout: usage, then `<prog>: error: <message>`. */
  format(): string {
    return `${this.usage}${this.prog}: error: ${this.message}\n`;
  }
}

const NEGATIVE_NUMBER = /^-\d+$|^-\d*\.\d+$/;

function displayName(o: OptionSpec): string {
  return o.short ? `${o.short}/${o.long}` : o.long;
}

function metavar(o: OptionSpec): string {
  if (o.choices) return `{${o.choices.join(',')}}`;
  return o.metavar ?? o.dest.replace(/-/g, '_').toUpperCase();
}

/** Python's int(): optional sign, digits with single underscores between, surrounding blanks. */
function pythonInt(text: string): number | undefined {
  const t = text.trim();
  if (!/^[+-]?\d+(_\d+)*$/.test(t)) return undefined;
  const n = Number(t.replace(/_/g, ''));
  return Number.isSafeInteger(n) ? n : undefined;
}

/** A string argparse would take as an option rather than as a value. */
function looksLikeOption(arg: string): boolean {
  return arg.length > 1 && arg.startsWith('-') && !NEGATIVE_NUMBER.test(arg) && !arg.includes(' ');
}

function quote(s: string): string {
  return `'${s}'`;
}

export function parseArguments(spec: ProgramSpec, argv: readonly string[]): ParseResult {
  const usage = formatUsage(spec);
  const fail = (message: string): never => {
    throw new ArgumentError(spec.prog, usage, message);
  };
  const byLong = new Map(spec.options.map((o) => [o.long, o]));
  const byShort = new Map(spec.options.filter((o) => o.short).map((o) => [o.short as string, o]));
  const values = new Map<string, ArgValue>();
  const extras: string[] = [];

  const convert = (o: OptionSpec, raw: string): ArgValue => {
    if (o.int) {
      const n = pythonInt(raw);
      if (n === undefined) fail(`argument ${displayName(o)}: invalid int value: ${quote(raw)}`);
      return n as number;
    }
    if (o.choices && !o.choices.includes(raw)) {
      fail(`argument ${displayName(o)}: invalid choice: ${quote(raw)} (choose from ${o.choices.map(quote).join(', ')})`);
    }
    return raw;
  };

  /** Apply option `o`; `explicit` is a value attached to it (`=x`, `-lx`). Returns how many following args it took. */
  const apply = (o: OptionSpec, explicit: string | undefined, next: string | undefined): number | 'help' | 'version' => {
    if (o.action) {
      if (explicit !== undefined) fail(`argument ${displayName(o)}: ignored explicit argument ${quote(explicit)}`);
      return o.action;
    }
    if (o.kind === 'flag') {
      if (explicit !== undefined) fail(`argument ${displayName(o)}: ignored explicit argument ${quote(explicit)}`);
      values.set(o.dest, true);
      return 0;
    }
    if (explicit !== undefined) {
      values.set(o.dest, convert(o, explicit));
      return 0;
    }
    if (next !== undefined && !looksLikeOption(next)) {
      values.set(o.dest, convert(o, next));
      return 1;
    }
    if (o.kind === 'optional-value') {
      values.set(o.dest, o.const ?? true);
      return 0;
    }
    return fail(`argument ${displayName(o)}: expected one argument`);
  };

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const next = argv[i + 1];
    if (arg === '--') {
      extras.push(...argv.slice(i));
      break;
    }
    if (!looksLikeOption(arg)) {
      extras.push(arg);
      continue;
    }
    let result: number | 'help' | 'version';
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq === -1 ? arg : arg.slice(0, eq);
      const explicit = eq === -1 ? undefined : arg.slice(eq + 1);
      let o = byLong.get(name);
      if (!o) {
        const candidates = spec.options.filter((c) => c.long.startsWith(name));
        if (candidates.length > 1) {
          fail(`ambiguous option: ${name} could match ${candidates.map((c) => c.long).join(', ')}`);
        }
        o = candidates[0];
      }
      if (!o) {
        extras.push(arg);
        continue;
      }
      result = apply(o, explicit, next);
    } else {
      // -x, -xVALUE, -x=VALUE, or a cluster of flags -abc ending perhaps in one that takes a value.
      let o = byShort.get(arg.slice(0, 2));
      if (!o) {
        extras.push(arg);
        continue;
      }
      let rest = arg.slice(2);
      // `-l=inc`: argparse splits at the first '=' when what precedes it is an option.
      let explicitGiven = rest.startsWith('=');
      if (explicitGiven) rest = rest.slice(1);
      let action: 'help' | 'version' | undefined;
      result = 0;
      while (o) {
        if (o.kind !== 'flag') {
          result = apply(o, rest === '' && !explicitGiven ? undefined : rest, next);
          break;
        }
        if (explicitGiven && rest === '') fail(`argument ${displayName(o)}: ignored explicit argument ''`);
        // A flag: the rest of the cluster names further short options.
        if (o.action) action ??= o.action;
        else apply(o, undefined, undefined);
        if (rest === '') break;
        const following: OptionSpec | undefined = byShort.get(`-${rest[0]}`);
        if (!following) fail(`argument ${displayName(o)}: ignored explicit argument ${quote(rest)}`);
        o = following;
        rest = rest.slice(1);
        explicitGiven = false;
      }
      if (action) result = action;
    }
    if (result === 'help') return { kind: 'help' };
    if (result === 'version') return { kind: 'version' };
    i += result;
  }

  const missing = spec.options.filter((o) => o.required && !values.has(o.dest));
  if (missing.length > 0) fail(`the following arguments are required: ${missing.map(displayName).join(', ')}`);
  if (extras.length > 0) fail(`unrecognized arguments: ${extras.join(' ')}`);
  return { kind: 'values', values };
}

function usagePart(o: OptionSpec): string {
  const flag = o.short ?? o.long;
  let part = flag;
  if (o.kind === 'value') part = `${flag} ${metavar(o)}`;
  if (o.kind === 'optional-value') part = `${flag} [${metavar(o)}]`;
  return o.required ? part : `[${part}]`;
}

/** `usage: prog [-h] -d DOMAIN ...`, wrapped under the program name as argparse does. */
export function formatUsage(spec: ProgramSpec, width = 80): string {
  const head = `usage: ${spec.prog} `;
  const lines: string[] = [];
  let line = head;
  let empty = true;
  for (const part of spec.options.map(usagePart)) {
    if (!empty && line.length + 1 + part.length > width - 2) {
      lines.push(line);
      line = ' '.repeat(head.length);
      empty = true;
    }
    line += (empty ? '' : ' ') + part;
    empty = false;
  }
  lines.push(line.trimEnd());
  return `${lines.join('\n')}\n`;
}

function invocation(o: OptionSpec): string {
  const names = o.short ? [o.short, o.long] : [o.long];
  if (o.kind === 'flag') return names.join(', ');
  const arg = o.kind === 'optional-value' ? `[${metavar(o)}]` : metavar(o);
  return names.map((n) => `${n} ${arg}`).join(', ');
}

/** The full help: usage, description, option groups, epilog. */
export function formatHelp(spec: ProgramSpec, width = 80): string {
  const helpColumn = 24;
  const out: string[] = [formatUsage(spec, width), `\n${spec.description}\n`];
  const section = (title: string, options: readonly OptionSpec[]): void => {
    if (options.length === 0) return;
    out.push(`\n${title}:\n`);
    for (const o of options) {
      const inv = `  ${invocation(o)}`;
      if (inv.length <= helpColumn - 2) out.push(`${inv.padEnd(helpColumn)}${o.help}\n`);
      else out.push(`${inv}\n${' '.repeat(helpColumn)}${o.help}\n`);
    }
  };
  section(
    'options',
    spec.options.filter((o) => o.group === undefined),
  );
  for (const g of spec.groups) section(g, spec.options.filter((o) => o.group === g));
  if (spec.epilog) out.push(`\n${spec.epilog}`);
  return out.join('');
}

/** -P/--nbd-port and --ssh-port, where given, must be TCP ports (both commands take them). */
export function checkTcpPorts(num: (dest: string) => number | undefined, fail: (message: string) => never): void {
  for (const [dest, display] of [
    ['nbd_port', '-P/--nbd-port'],
    ['ssh_port', '--ssh-port'],
  ] as const) {
    const port = num(dest);
    if (port !== undefined && (port < 1 || port > 65535)) fail(`argument ${display}: not a TCP port: ${port}`);
  }
}
