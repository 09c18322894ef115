/**
 * Client side of NBD_OPT_STARTTLS: load X.509 credentials from a directory
 * laid out like QEMU's `tls-creds-x509` (ca-cert.pem, client-cert.pem,
 * client-key.pem) and upgrade an already connected socket in place.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { NbdHandshakeError } from './errors.js';

export interface NbdTlsOptions {
  /** Directory holding ca-cert.pem and optionally client-cert.pem + client-key.pem. */
  certificates?: string;
  /** PEM CA certificate(s); overrides the directory's ca-cert.pem. */
  ca?: string | Buffer;
  /** PEM client certificate and key; override the directory's files. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Verify the server certificate (default true). */
  verifyPeer?: boolean;
  /**
   * Name the server certificate must carry. Default: the TCP host; for unix
   * sockets no name is checked (the chain is still verified), as libnbd does.
   */
  hostname?: string;
}

async function readOptional(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new NbdHandshakeError(`cannot read TLS file ${path}: ${(err as Error).message}`);
  }
}

/** Resolve files of the certificate directory into PEM material. */
export async function loadTlsCredentials(opts: NbdTlsOptions): Promise<{ ca?: Buffer | string; cert?: Buffer | string; key?: Buffer | string }> {
  let ca = opts.ca;
  let cert = opts.cert;
  let key = opts.key;
  if (opts.certificates) {
    const dir = opts.certificates;
    ca ??= await readOptional(join(dir, 'ca-cert.pem'));
    cert ??= await readOptional(join(dir, 'client-cert.pem'));
    key ??= await readOptional(join(dir, 'client-key.pem'));
    if (!ca && opts.verifyPeer !== false) {
      throw new NbdHandshakeError(`TLS certificate directory ${dir} has no ca-cert.pem`);
    }
  }
  if ((cert && !key) || (key && !cert)) {
    throw new NbdHandshakeError('TLS client certificate and key must be given together (client-cert.pem and client-key.pem)');
  }
  return { ca, cert, key };
}

/** OpenSSL's verification codes for a server certificate our CA did not sign. */
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
]);

/** The certificate problem behind a failed handshake in plain words ('' when it is something else). */
function certificateProblem(code: string | undefined, opts: NbdTlsOptions, hostname: string | undefined): string {
  const ca = opts.ca !== undefined ? 'the given CA' : opts.certificates ? `the CA in ${join(opts.certificates, 'ca-cert.pem')}` : 'any CA of the system store';
  if (code !== undefined && UNTRUSTED.has(code)) return `the server certificate is not signed by ${ca}: `;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return `the server certificate is not valid for host ${hostname ?? '?'}: `;
  if (code === 'CERT_HAS_EXPIRED') return 'the server certificate has expired: ';
  if (code === 'CERT_NOT_YET_VALID') return 'the server certificate is not valid yet: ';
  return '';
}

/** Run the TLS handshake over `socket` (after the server ACKed NBD_OPT_STARTTLS). */
export async function startTls(socket: Duplex, opts: NbdTlsOptions, defaultHost?: string): Promise<tls.TLSSocket> {
  const creds = await loadTlsCredentials(opts);
  const verify = opts.verifyPeer !== false;
  const hostname = opts.hostname ?? defaultHost;
  return await new Promise<tls.TLSSocket>((resolve, reject) => {
    const secure = tls.connect({
      socket,
      ca: creds.ca,
      cert: creds.cert,
      key: creds.key,
      rejectUnauthorized: verify,
      minVersion: 'TLSv1.2',
      // SNI only makes sense for DNS names.
      servername: hostname && !/^[\d.:]+$/.test(hostname) ? hostname : undefined,
      checkServerIdentity: (_host, cert) => (verify && hostname ? tls.checkServerIdentity(hostname, cert) : undefined),
    });
    const onError = (err: NodeJS.ErrnoException): void => {
      secure.destroy();
      const code = err.code ? ` (${err.code})` : '';
      const problem = certificateProblem(err.code, opts, hostname);
      reject(new NbdHandshakeError(`TLS handshake with the NBD server failed: ${problem}${err.message}${code}`, { option: 'NBD_OPT_STARTTLS', cause: err }));
    };
    secure.once('error', onError);
    secure.once('secureConnect', () => {
      secure.off('error', onError);
      resolve(secure);
    });
  });
}
