/**
 * Libvirt connection URIs: `driver[+transport]://[user@][host][:port]/path[?params]`,
 * e.g. qemu:///system, qemu:///session, qemu:///system?socket=/path,
 * qemu+ssh://root@host:2222/system, qemu+tcp://host/system.
 * Parsing is pure; the socket path defaults look at the local filesystem.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { LibvirtError, VIR_ERR_INVALID_ARG, VIR_FROM_URI } from './errors.js';

export type UriTransport = 'unix' | 'ssh' | 'tcp' | 'tls';

export interface LibvirtUri {
  /** The URI as given. */
  readonly uri: string;
  /** Hypervisor driver, e.g. "qemu". */
  readonly driver: string;
  readonly transport: UriTransport;
  readonly user: string | undefined;
  readonly host: string | undefined;
  readonly port: number | undefined;
  /** "/system" or "/session" for qemu. */
  readonly path: string;
  /** Query parameters, decoded. */
  readonly params: Readonly<Record<string, string>>;
  /** The name sent in CONNECT_OPEN: transport, host and client-side params removed, e.g. "qemu:///system". */
  readonly remoteName: string;
}

/** libvirt's default TCP ports for the tcp and tls transports. */
export const LIBVIRT_TCP_PORT = 16509;
export const LIBVIRT_TLS_PORT = 16514;

/** Query parameters the client consumes rather than passes to the daemon (libvirt's list). */
const CLIENT_PARAMS = new Set([
  'name',
  'command',
  'socket',
  'auth',
  'netcat',
  'keyfile',
  'sshauth',
  'no_verify',
  'no_tty',
  'pkipath',
  'known_hosts',
  'known_hosts_verify',
  'tls_priority',
  'mode',
  'proxy',
]);

function uriError(uri: string, why: string): LibvirtError {
  return new LibvirtError({ code: VIR_ERR_INVALID_ARG, domain: VIR_FROM_URI, message: `invalid libvirt URI '${uri}': ${why}` });
}

export function parseLibvirtUri(uri: string): LibvirtUri {
  const m = /^([a-z][a-z0-9-]*)(?:\+([^:/+]+))?:\/\/(.*)$/i.exec(uri);
  if (!m) throw uriError(uri, "expected driver[+transport]://[user@][host][:port]/path, e.g. 'qemu:///system'");
  const driver = m[1].toLowerCase();
  const rest = m[3];

  let url: URL;
  try {
    // The WHATWG parser handles userinfo, IPv6 hosts, ports and the query.
    url = new URL(`libvirt://${rest}`);
  } catch {
    throw uriError(uri, 'cannot parse host, port or path');
  }
  const host = url.hostname === '' ? undefined : url.hostname.replace(/^\[(.*)\]$/, '$1');
  const user = url.username === '' ? undefined : decodeURIComponent(url.username);
  let port: number | undefined;
  if (url.port !== '') port = Number(url.port);

  let transport: UriTransport;
  const given = m[2]?.toLowerCase();
  if (given === undefined) transport = host === undefined ? 'unix' : 'tls';
  else if (given === 'unix' || given === 'ssh' || given === 'tcp' || given === 'tls') transport = given;
  else throw uriError(uri, `transport '${given}' is not supported (use unix, ssh, tcp or tls)`);
  if (transport === 'unix' && host !== undefined) throw uriError(uri, 'the unix transport takes no host');
  if (transport !== 'unix' && host === undefined) throw uriError(uri, `the ${transport} transport needs a host`);

  const params: Record<string, string> = {};
  for (const [k, v] of url.searchParams) params[k] = v;

  const pathname = decodeURIComponent(url.pathname);
  if (pathname === '' || pathname === '/') throw uriError(uri, "missing path: use '/system' or '/session'");

  const passOn = new URLSearchParams();
  for (const [k, v] of url.searchParams) if (!CLIENT_PARAMS.has(k)) passOn.append(k, v);
  const query = passOn.toString();
  const remoteName = params.name ?? `${driver}://${pathname}${query ? `?${query}` : ''}`;

  return { uri, driver, transport, user, host, port, path: pathname, params, remoteName };
}

/**
 * The daemon socket for a local URI: ?socket= when given; for the system
 * instance the modular daemon's socket (virtqemud) when it exists, else
 * libvirtd's; for the session instance the per-user runtime directory.
 * `readOnly` picks the read-only socket of the system instance.
 */
export function localSocketPath(u: LibvirtUri, readOnly = false): string {
  if (u.params.socket) return u.params.socket;
  if (u.path === '/session') {
    const runtime = process.env.XDG_RUNTIME_DIR;
    const base = runtime ? path.join(runtime, 'libvirt') : path.join(os.homedir(), '.cache', 'libvirt');
    const modular = path.join(base, `virt${u.driver}d-sock`);
    return fs.existsSync(modular) ? modular : path.join(base, 'libvirt-sock');
  }
  const dir = '/var/run/libvirt';
  const suffix = readOnly ? '-sock-ro' : '-sock';
  const modular = path.join(dir, `virt${u.driver}d${suffix}`);
  return fs.existsSync(modular) ? modular : path.join(dir, `libvirt${suffix}`);
}

/** Port for tcp/tls URIs: the one given or libvirt's default. */
export function tcpPort(u: LibvirtUri): number {
  return u.port ?? (u.transport === 'tls' ? LIBVIRT_TLS_PORT : LIBVIRT_TCP_PORT);
}

/**
 * A numeric flag parameter (no_verify, no_tty): libvirt reads it as an
 * integer, non-zero meaning on, and refuses anything else.
 */
export function flagParam(u: LibvirtUri, name: string): boolean {
  const v = u.params[name];
  if (v === undefined) return false;
  if (!/^[+-]?\d+$/.test(v.trim())) throw uriError(u.uri, `parameter ${name}='${v}' must be an integer (0 or 1)`);
  return Number(v) !== 0;
}

/**
 * The ssh command line for a qemu+ssh:// URI, as libvirt builds it for
 * the ssh binary: never prompting (BatchMode, no tty), `-p`, `-l`,
 * `?keyfile=` as `-i`, `?no_verify=1` as StrictHostKeyChecking=no. Beyond
 * libvirt's ssh transport (which leaves them to its libssh transports),
 * `?known_hosts=` names the known_hosts file and `?known_hosts_verify=`
 * (normal, auto, ignore) sets how unknown host keys are treated.
 *
 * On the far side, ?proxy= picks the program, as libvirt's: `native` runs
 * virt-ssh-helper with the remote name (`-r` when read-only), `netcat`
 * pipes through `nc -U <socket>`, and `auto` (the default) runs
 * virt-ssh-helper where it exists and falls back to nc, so hosts whose
 * libvirt predates virt-ssh-helper (6.8) still work. Naming ?socket= or
 * ?netcat= means netcat unless ?proxy= says otherwise.
 */
export function sshCommand(u: LibvirtUri, readOnly = false): { command: string; args: string[] } {
  if (u.transport !== 'ssh' || u.host === undefined) throw uriError(u.uri, 'not an ssh URI');
  const args = ['-T', '-e', 'none', '-o', 'BatchMode=yes'];
  if (u.port !== undefined) args.push('-p', String(u.port));
  if (u.user !== undefined) args.push('-l', u.user);
  if (u.params.keyfile) args.push('-i', u.params.keyfile);
  // ssh splits option values at blanks unless double-quoted.
  if (u.params.known_hosts) args.push('-o', `UserKnownHostsFile="${u.params.known_hosts}"`);
  const verify = flagParam(u, 'no_verify') ? 'ignore' : (u.params.known_hosts_verify ?? 'normal');
  if (verify === 'ignore') args.push('-o', 'StrictHostKeyChecking=no');
  else if (verify === 'auto') args.push('-o', 'StrictHostKeyChecking=accept-new');
  else if (verify !== 'normal') throw uriError(u.uri, `known_hosts_verify '${verify}' is not one of normal, auto, ignore`);
  flagParam(u, 'no_tty'); // validated only: we never prompt anyway
  args.push('--', u.host);

  let proxy = u.params.proxy ?? 'auto';
  if (proxy === 'auto' && (u.params.socket || u.params.netcat)) proxy = 'netcat';
  const socket = u.params.socket ?? (u.path === '/session' ? 'libvirt-sock' : '/var/run/libvirt/libvirt-sock');
  const netcat = `${u.params.netcat ?? 'nc'} -U ${shellQuote(socket)}`;
  const helper = `virt-ssh-helper ${readOnly ? '-r ' : ''}${shellQuote(u.remoteName)}`;
  if (proxy === 'netcat') {
    args.push(netcat);
  } else if (proxy === 'native') {
    if (u.params.netcat) throw uriError(u.uri, 'netcat is not valid with proxy=native');
    args.push(helper);
  } else if (proxy === 'auto') {
    // The login shell on the far side may not be sh: hand the test to sh.
    const script = `if command -v virt-ssh-helper >/dev/null 2>&1; then exec ${helper}; else exec ${netcat}; fi`;
    args.push(`sh -c ${shellQuote(script)}`);
  } else {
    throw uriError(u.uri, `proxy '${proxy}' is not supported (use auto, native or netcat)`);
  }
  return { command: u.params.command ?? 'ssh', args };
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
