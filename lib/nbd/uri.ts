/**
 * NBD URIs, as the NBD project's URI spec and libnbd/qemu use them:
 *
 *   nbd://host[:port]/<export>          TCP (port 10809 by default)
 *   nbds://host[:port]/<export>         TCP, TLS required (STARTTLS)
 *   nbd+unix:///<export>?socket=<path>  unix socket
 *   nbds+unix:///<export>?socket=<path> unix socket, TLS required
 *
 * Query parameters: `socket` (unix only, required there),
 * `tls-certificates=DIR` (CA / client certificate directory laid out like
 * QEMU's: ca-cert.pem, client-cert.pem, client-key.pem),
 * `tls-verify-peer=false` (do not verify the server certificate),
 * `tls-hostname=NAME` (name to check the server certificate against).
 * The export name is the path without its leading slash, percent-decoded.
 */

export class NbdUriError extends Error {
  override name = 'NbdUriError';
  readonly uri: string;
  constructor(uri: string, why: string) {
    super(`invalid NBD URI '${uri}': ${why}`);
    this.uri = uri;
  }
}

export interface NbdUri {
  transport: 'tcp' | 'unix';
  /** TLS is required (nbds schemes). */
  tls: boolean;
  exportName: string;
  /** TCP host (IPv6 literals without brackets). */
  host?: string;
  /** TCP port; absent means 10809. */
  port?: number;
  /** Unix socket path. */
  socket?: string;
  tlsCertificates?: string;
  tlsVerifyPeer?: boolean;
  tlsHostname?: string;
}

const SCHEMES: Record<string, { transport: 'tcp' | 'unix'; tls: boolean }> = {
  nbd: { transport: 'tcp', tls: false },
  nbds: { transport: 'tcp', tls: true },
  'nbd+unix': { transport: 'unix', tls: false },
  'nbds+unix': { transport: 'unix', tls: true },
  'nbd+tcp': { transport: 'tcp', tls: false },
  'nbds+tcp': { transport: 'tcp', tls: true },
};

function decode(uri: string, s: string, what: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new NbdUriError(uri, `bad percent-encoding in ${what}`);
  }
}

function parseBool(uri: string, key: string, value: string): boolean {
  const v = value.toLowerCase();
  if (['1', 'true', 'on', 'yes'].includes(v)) return true;
  if (['0', 'false', 'off', 'no'].includes(v)) return false;
  throw new NbdUriError(uri, `${key} must be true or false, not '${value}'`);
}

export function isNbdUri(s: string): boolean {
  const m = /^([a-z+]+):\/\//i.exec(s);
  return !!m && m[1].toLowerCase() in SCHEMES;
}

export function parseNbdUri(uri: string): NbdUri {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?$/.exec(uri);
  if (!m) throw new NbdUriError(uri, 'expected scheme://[authority]/export');
  const scheme = SCHEMES[m[1].toLowerCase()];
  if (!scheme) throw new NbdUriError(uri, `unknown scheme '${m[1]}' (use nbd, nbds, nbd+unix or nbds+unix)`);
  const authority = m[2];
  const path = m[3];
  const query = m[4];

  const out: NbdUri = {
    transport: scheme.transport,
    tls: scheme.tls,
    exportName: decode(uri, path.startsWith('/') ? path.slice(1) : path, 'export name'),
  };

  if (authority.includes('@')) throw new NbdUriError(uri, 'user information is not supported');
  if (scheme.transport === 'tcp') {
    const hm = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]*))(?::(\d*))?$/.exec(authority);
    if (!hm) throw new NbdUriError(uri, `bad host '${authority}'`);
    const host = hm[1] ?? decode(uri, hm[2] ?? '', 'host');
    if (!host) throw new NbdUriError(uri, 'missing host');
    out.host = host;
    if (hm[3]) {
      const port = Number(hm[3]);
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new NbdUriError(uri, `bad port '${hm[3]}'`);
      out.port = port;
    }
  } else if (authority !== '') {
    throw new NbdUriError(uri, `a unix socket URI has no host ('${authority}'); write ${m[1]}:///export?socket=PATH`);
  }

  if (query) {
    for (const part of query.split('&')) {
      if (!part) continue;
      const eq = part.indexOf('=');
      const key = decode(uri, eq < 0 ? part : part.slice(0, eq), 'query');
      const value = decode(uri, eq < 0 ? '' : part.slice(eq + 1), `query parameter ${key}`);
      switch (key) {
        case 'socket':
          if (scheme.transport !== 'unix') throw new NbdUriError(uri, 'socket= is only valid with nbd+unix or nbds+unix');
          out.socket = value;
          break;
        case 'tls-certificates':
          out.tlsCertificates = value;
          break;
        case 'tls-verify-peer':
          out.tlsVerifyPeer = parseBool(uri, key, value);
          break;
        case 'tls-hostname':
          out.tlsHostname = value;
          break;
        default:
          throw new NbdUriError(uri, `unknown query parameter '${key}'`);
      }
    }
  }
  if (scheme.transport === 'unix' && !out.socket) throw new NbdUriError(uri, 'missing socket=PATH');
  return out;
}

/** Percent-encode, keeping '/' readable (export names and socket paths are path-like). */
function encodePath(s: string): string {
  return s.split('/').map(encodeURIComponent).join('/');
}

export function formatNbdUri(u: NbdUri): string {
  const scheme = (u.tls ? 'nbds' : 'nbd') + (u.transport === 'unix' ? '+unix' : '');
  let authority = '';
  if (u.transport === 'tcp') {
    if (!u.host) throw new TypeError('formatNbdUri: tcp URI needs a host');
    authority = u.host.includes(':') ? `[${u.host}]` : encodeURIComponent(u.host);
    if (u.port !== undefined) authority += `:${u.port}`;
  }
  const query: string[] = [];
  if (u.transport === 'unix') {
    if (!u.socket) throw new TypeError('formatNbdUri: unix URI needs a socket path');
    query.push(`socket=${encodePath(u.socket)}`);
  }
  if (u.tlsCertificates !== undefined) query.push(`tls-certificates=${encodePath(u.tlsCertificates)}`);
  if (u.tlsVerifyPeer !== undefined) query.push(`tls-verify-peer=${u.tlsVerifyPeer}`);
  if (u.tlsHostname !== undefined) query.push(`tls-hostname=${encodeURIComponent(u.tlsHostname)}`);
  return `${scheme}://${authority}/${encodePath(u.exportName)}${query.length ? '?' + query.join('&') : ''}`;
}
