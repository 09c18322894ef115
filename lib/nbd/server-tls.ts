/**
 * TLS credentials of the NBD server, from a directory laid out as QEMU's
 * `tls-creds-x509` object expects (and qemu-nbd, libvirt's nbd_tls_x509_cert_dir):
 * `server-cert.pem`, `server-key.pem`, and `ca-cert.pem` (needed to verify
 * client certificates; optional otherwise). Also `ca-crl.pem` when present.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tls from 'node:tls';

export interface ServerTlsOptions {
  /** Directory with server-cert.pem, server-key.pem, ca-cert.pem. */
  certDir?: string;
  /** Ready-made credentials instead of certDir (PEM strings/buffers). */
  context?: tls.SecureContextOptions;
  /** Demand and verify a client certificate signed by the CA (QEMU's verify-peer). Default false. */
  verifyPeer?: boolean;
  /** FORCEDTLS: every option but STARTTLS and ABORT is refused until TLS is up. Default true. */
  required?: boolean;
}

/** Credentials could not be loaded: names the file and what is wrong. */
export class TlsCredentialsError extends Error {
  override name = 'TlsCredentialsError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export interface ServerTlsCredentials {
  context: tls.SecureContext;
  verifyPeer: boolean;
  required: boolean;
}

async function readOptional(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new TlsCredentialsError(`cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
}

async function readRequired(path: string): Promise<Buffer> {
  const data = await readOptional(path);
  if (data === undefined) throw new TlsCredentialsError(`TLS credentials: ${path} does not exist`);
  return data;
}

export async function loadServerTls(options: ServerTlsOptions): Promise<ServerTlsCredentials> {
  const verifyPeer = options.verifyPeer ?? false;
  let contextOptions: tls.SecureContextOptions;
  if (options.context) {
    contextOptions = options.context;
  } else if (options.certDir) {
    const dir = options.certDir;
    const ca = verifyPeer ? await readRequired(join(dir, 'ca-cert.pem')) : await readOptional(join(dir, 'ca-cert.pem'));
    const crl = await readOptional(join(dir, 'ca-crl.pem'));
    contextOptions = {
      cert: await readRequired(join(dir, 'server-cert.pem')),
      key: await readRequired(join(dir, 'server-key.pem')),
      ...(ca ? { ca } : {}),
      ...(crl ? { crl } : {}),
    };
  } else {
    throw new TlsCredentialsError('TLS options need certDir or context');
  }
  let context: tls.SecureContext;
  try {
    // The spec asks for TLS 1.2 at least and no older versions by default.
    context = tls.createSecureContext({ minVersion: 'TLSv1.2', ...contextOptions });
  } catch (err) {
    const where = options.certDir ? ` in ${options.certDir}` : '';
    throw new TlsCredentialsError(`invalid TLS credentials${where}: ${(err as Error).message}`, { cause: err });
  }
  return { context, verifyPeer, required: options.required ?? true };
}
