/**
 * A private OpenSSH server on 127.0.0.1 for remote-transport tests: its own
 * host key, config, authorized key and pid file in a temp dir, root login by
 * that key only, nothing read from /etc/ssh. startSshd() registers its own
 * teardown (the server, its per-connection children, the temp dir), so a
 * test only connects. Needs Debian's openssh-server (scripts/host-setup.sh).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

const SSHD = '/usr/sbin/sshd';
const HOST = '127.0.0.1';
/** sshd is up within a second when idle; a loaded 2-core host can take far longer. */
const START_DEADLINE_MS = 30_000;
const PORT_TRIES = 20;

export interface Sshd {
  readonly host: string;
  readonly port: number;
  /** The temp dir holding everything below; removed on teardown. */
  readonly dir: string;
  /** Private key whose public half is the only authorized key (ed25519, no passphrase). */
  readonly clientKey: string;
  /** A known_hosts file that lists this server's host key, and nothing else. */
  readonly knownHosts: string;
  /** The server's host key line, "ssh-ed25519 AAAA...". */
  readonly hostPublicKey: string;
  readonly pid: number;
  /** sshd's log so far (it logs to stderr with -e). */
  log(): string;
  /** Command lines of every process below sshd now: its per-connection processes and what they run. */
  sessionCommands(): string[];
  /**
   * `qemu+ssh://root@127.0.0.1:PORT/system?keyfile=...&known_hosts=...`;
   * `params` are added to, or (value null) removed from, the query.
   */
  uri(params?: Record<string, string | null>): string;
  /** Stops the server and its connections; idempotent. Teardown calls it too. */
  stop(): Promise<void>;
}

interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

/** Servers still running, killed synchronously if the test process dies past its teardowns. */
const running = new Set<number>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const pid of running) killTree(pid, 'SIGKILL');
  });
}

/** Direct children of `pid`, from /proc (sshd forks one per connection). */
function childrenOf(pid: number): number[] {
  const kids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The command name in parentheses may contain spaces: read after its closing ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === pid) kids.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  return kids;
}

function descendantsOf(pid: number): number[] {
  const all: number[] = [];
  for (let level = childrenOf(pid); level.length > 0; level = level.flatMap(childrenOf)) all.push(...level);
  return all;
}

function commandLine(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
  } catch {
    return '';
  }
}

/** Signals sshd's per-connection processes (deepest first), then sshd itself: they outlive the listener otherwise. */
function killTree(pid: number, signal: NodeJS.Signals): void {
  for (const kid of descendantsOf(pid).reverse()) {
    try {
      process.kill(kid, signal);
    } catch {
      // Already gone.
    }
  }
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

function sshdConfig(dir: string, port: number): string {
  return [
    `ListenAddress ${HOST}`,
    `Port ${port}`,
    `HostKey ${path.join(dir, 'host_ed25519_key')}`,
    `PidFile ${path.join(dir, 'sshd.pid')}`,
    `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
    'PermitRootLogin prohibit-password',
    'AllowUsers root',
    'AuthenticationMethods publickey',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    // The temp dir is not laid out the way StrictModes wants (owner-only home).
    'StrictModes no',
    // No PAM: nothing outside this config decides who gets in.
    'UsePAM no',
    'UseDNS no',
    'PrintMotd no',
    'X11Forwarding no',
    'AllowTcpForwarding no',
    '',
  ].join('\n');
}

async function keygen(file: string, comment: string): Promise<string> {
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', file]);
  return fs.readFileSync(`${file}.pub`, 'utf8').trim();
}

interface Started {
  child: ChildProcess;
  log: () => string;
}

/** Starts sshd on `port`; resolves once it listens, null if the port is taken, throws on other failures. */
function startOn(dir: string, port: number): Promise<Started | null> {
  const config = path.join(dir, 'sshd_config');
  fs.writeFileSync(config, sshdConfig(dir, port));
  return new Promise((resolve, reject) => {
    // sshd re-executes itself, so it must be started by its absolute path.
    const child = spawn(SSHD, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    const started: Started = { child, log: () => log };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`sshd on ${HOST}:${port} did not start listening within ${START_DEADLINE_MS} ms; its log:\n${log}`));
    }, START_DEADLINE_MS);
    const done = (): void => clearTimeout(timer);
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => {
      log += s;
      if (log.includes(`Server listening on ${HOST} port ${port}.`)) {
        done();
        resolve(started);
      }
    });
    child.once('error', (err) => {
      done();
      reject(new Error(`cannot start ${SSHD}: ${err.message} (is openssh-server installed? see scripts/host-setup.sh)`));
    });
    child.once('exit', (code, signal) => {
      done();
      if (/Address already in use|Cannot bind any address/.test(log)) resolve(null);
      else reject(new Error(`sshd on ${HOST}:${port} exited (${signal ?? `status ${code}`}) before listening; its log:\n${log}`));
    });
  });
}

export async function startSshd(t: Teardown): Promise<Sshd> {
  if (!fs.existsSync(SSHD)) throw new Error(`${SSHD} is missing: install openssh-server (scripts/host-setup.sh does)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnbd-sshd-'));
  let started: Started | null = null;
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    const child = started?.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      killTree(child.pid!, 'SIGTERM');
      await exited;
    }
    if (child?.pid) running.delete(child.pid);
    fs.rmSync(dir, { recursive: true, force: true });
  };
  t.teardown(stop);

  // sshd's privilege separation directory; Debian's init scripts would make it.
  fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const hostPublicKey = (await keygen(path.join(dir, 'host_ed25519_key'), 'virtnbd-test-host')).split(' ').slice(0, 2).join(' ');
  const clientKey = path.join(dir, 'client_ed25519_key');
  fs.writeFileSync(path.join(dir, 'authorized_keys'), `${await keygen(clientKey, 'virtnbd-test-client')}\n`);

  let port = 0;
  for (let i = 0; i < PORT_TRIES && !started; i++) {
    port = 20000 + Math.floor(Math.random() * 40000);
    started = await startOn(dir, port);
  }
  if (!started) throw new Error(`sshd found no free port on ${HOST} in ${PORT_TRIES} tries`);
  installExitHook();
  running.add(started.child.pid!);

  const knownHosts = path.join(dir, 'known_hosts');
  fs.writeFileSync(knownHosts, `[${HOST}]:${port} ${hostPublicKey}\n`);
  const log = started.log;
  const pid = started.child.pid!;
  return {
    host: HOST,
    port,
    dir,
    clientKey,
    knownHosts,
    hostPublicKey,
    pid,
    log,
    sessionCommands: () => descendantsOf(pid).map(commandLine).filter(Boolean),
    uri(params = {}) {
      const query = new URLSearchParams();
      const all: Record<string, string | null> = { keyfile: clientKey, known_hosts: knownHosts, ...params };
      for (const [k, v] of Object.entries(all)) if (v !== null) query.set(k, v);
      return `qemu+ssh://root@${HOST}:${port}/system?${query.toString()}`;
    },
    stop,
  };
}
