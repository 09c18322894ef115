/**
 * Opening an NBD connection: resolve a target (URI or address) and options
 * into where to connect, the export name and TLS settings; then run a
 * handshake body under a timeout, turning an early hang-up into an
 * NbdHandshakeError that says when it happened.
 */
import { NbdConnectionError, NbdHandshakeError } from './errors.js';
import type { HandshakeIO } from './handshake.js';
import type { NbdClientOptions, NbdTarget } from './options.js';
import { NBD_DEFAULT_PORT } from './protocol.js';
import type { NbdTlsOptions } from './tls.js';
import { Transport } from './transport.js';
import { parseNbdUri, type NbdUri } from './uri.js';

const DEFAULT_HANDSHAKE_TIMEOUT = 30_000;

export interface ResolvedTarget {
  connect: { socket: string } | { host: string; port: number };
  exportName: string;
  tls?: NbdTlsOptions;
  host?: string;
}

export function resolveTarget(target: NbdTarget, opts: NbdClientOptions): ResolvedTarget {
  let uri: NbdUri;
  if (typeof target === 'string') uri = parseNbdUri(target);
  else if ('transport' in target) uri = target;
  else if ('socket' in target) uri = { transport: 'unix', tls: false, exportName: '', socket: target.socket };
  else uri = { transport: 'tcp', tls: false, exportName: '', host: target.host, port: target.port };

  let tls: NbdTlsOptions | undefined;
  const fromUri: NbdTlsOptions = { certificates: uri.tlsCertificates, verifyPeer: uri.tlsVerifyPeer, hostname: uri.tlsHostname };
  if (opts.tls === false) tls = undefined;
  else if (opts.tls === true) tls = fromUri;
  else if (typeof opts.tls === 'object') tls = { ...fromUri, ...opts.tls };
  else if (uri.tls) tls = fromUri;

  const connect = uri.transport === 'unix' ? { socket: uri.socket as string } : { host: uri.host as string, port: uri.port ?? NBD_DEFAULT_PORT };
  return { connect, exportName: opts.exportName ?? uri.exportName, tls, host: uri.transport === 'tcp' ? uri.host : undefined };
}

function transportIO(t: Transport): HandshakeIO {
  return {
    readExact: (n) => t.readExact(n),
    send: (bufs) => t.send(bufs),
    upgradeTls: (opts, host) => t.upgradeTls(opts, host),
  };
}

/** Open a connection and run `body` against the handshake, with the timeout and cleanup connect() uses. */
export async function withHandshake<T>(
  target: NbdTarget,
  opts: NbdClientOptions,
  body: (io: HandshakeIO, t: Transport, r: ResolvedTarget) => Promise<T>,
): Promise<T> {
  const r = resolveTarget(target, opts);
  // TLS needs a plain stream socket to wrap.
  const t = await Transport.connect(r.connect, { reuseReadBuffer: !r.tls });
  const ms = opts.handshakeTimeout ?? DEFAULT_HANDSHAKE_TIMEOUT;
  const timer = setTimeout(() => {
    t.destroy(new NbdHandshakeError(`no answer from the NBD server at ${t.peer} within ${ms} ms during the handshake`));
  }, ms);
  try {
    return await body(transportIO(t), t, r);
  } catch (err) {
    t.destroy();
    if (err instanceof NbdConnectionError) {
      const hint = t.encrypted
        ? ' right after TLS was set up; if the server verifies clients, the tls-certificates directory needs client-cert.pem and client-key.pem signed by its CA'
        : '';
      throw new NbdHandshakeError(`the NBD server at ${t.peer} closed the connection during the handshake${hint} (${err.message})`, { cause: err });
    }
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
