/**
 * The libvirt login of the command line: --user, and the password from
 * --password, else --password-file FILE, else the VIRTNBD_PASSWORD
 * environment variable. The file and the variable keep the password out of
 * the process list (and so out of `ps` and /proc/<pid>/cmdline). The
 * variable is removed once read, so the tools we start do not inherit it.
 */
import fs from 'node:fs';

/** The environment variable holding the libvirt password. */
export const PASSWORD_ENV = 'VIRTNBD_PASSWORD';

export interface CredentialSources {
  user?: string;
  password?: string;
  passwordFile?: string;
  env: NodeJS.ProcessEnv;
}

/** What the Hypervisor takes: without a username, the URI's user (user@host) is used. */
export interface LibvirtCredentials {
  username?: string;
  password: string;
}

/** A password file that cannot be used; the message names the file, never its content. */
export class CredentialsError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CredentialsError';
  }
}

/** The password file's first line (one trailing newline dropped, as `echo pw > file` writes it). */
export function readPasswordFile(file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new CredentialsError(`cannot read the password file ${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (e as Error).message}`, { cause: e });
  }
  const password = text.replace(/\r?\n$/, '');
  if (password === '') throw new CredentialsError(`the password file ${file} is empty`);
  if (/[\r\n]/.test(password)) throw new CredentialsError(`the password file ${file} has more than one line: it must hold the password alone`);
  return password;
}

/**
 * Flag > file > environment. Undefined when no password is given anywhere:
 * local connections need none, and a daemon that wants one says so.
 */
export function resolveCredentials(src: CredentialSources): LibvirtCredentials | undefined {
  let password: string | undefined;
  if (src.password !== undefined) password = src.password;
  else if (src.passwordFile !== undefined) password = readPasswordFile(src.passwordFile);
  else if (src.env[PASSWORD_ENV] !== undefined && src.env[PASSWORD_ENV] !== '') password = src.env[PASSWORD_ENV];
  delete src.env[PASSWORD_ENV];
  if (password === undefined) return undefined;
  return src.user !== undefined && src.user !== '' ? { username: src.user, password } : { password };
}

/**
 * The login of a command's options (`user`, `password`, `passwordFile`, the
 * environment): the credentials, undefined when none are given, or 'failed'
 * once a password file that cannot be used has been reported on `log`.
 */
export function commandCredentials(
  options: { user?: string; password?: string; passwordFile?: string },
  log: { error(message: string): void },
): LibvirtCredentials | undefined | 'failed' {
  try {
    return resolveCredentials({ user: options.user, password: options.password, passwordFile: options.passwordFile, env: process.env });
  } catch (e) {
    if (!(e instanceof CredentialsError)) throw e;
    log.error(e.message);
    return 'failed';
  }
}

/**
 * argv for the log with the password masked wherever it appears (`--password
 * X`, `--password=X`, an abbreviation such as `--pass X`), so it never
 * reaches the terminal or a log file.
 */
export function redactArgv(argv: readonly string[], password: string | undefined): string[] {
  if (password === undefined || password === '') return [...argv];
  return argv.map((a) => a.split(password).join('********'));
}
