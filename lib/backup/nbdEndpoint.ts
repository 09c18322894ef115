/**
 * Where the backup job's NBD server listens and how we reach it: a unix
 * socket (local backups, the default) or TCP, optionally with TLS (remote
 * domains, whose socket would sit on another machine; or a local backup
 * given -P/--nbd-port, -I/--nbd-ip or --tls explicitly). With TLS, QEMU
 * takes its server certificate from qemu.conf's backup_tls_x509_cert_dir,
 * and our client verifies it against `<certDir>/ca-cert.pem`, presenting
 * `<certDir>/client-cert.pem` + `client-key.pem` when they exist (libvirt's
 * backup_tls_x509_verify, on by default, demands them). Pure, no I/O.
 */
import type { NbdUri } from '../nbd/uri.js';
import { formatNbdUri } from '../nbd/uri.js';
import type { BackupServer } from '../xml/backupXml.js';

export type NbdEndpoint =
  | { kind: 'unix'; socket: string }
  | { kind: 'tcp'; host: string; port: number; tls?: { certDir: string } };

/** QEMU's NBD server port (and virtnbdbackup's -P default). */
export const DEFAULT_NBD_PORT = 10809;
/** libvirt's default_tls_x509_cert_dir, virtnbdbackup's --tls-cert default. */
export const DEFAULT_TLS_CERT_DIR = '/etc/pki/qemu';

/** The fields of a backup request that pick the endpoint (virtnbdbackup's -f, -P, -I, --tls, --tls-cert). */
export interface NbdEndpointRequest {
  /** -f: the unix socket of a local backup. */
  socketFile: string;
  /** -P: the server's TCP port (default 10809); TCP is used for remote domains, or when -P, -I or --tls is given. */
  nbdPort?: number;
  /** -I: address the server binds to and we connect to; default: the host name libvirt reports. */
  nbdIp?: string;
  /** --tls: the server on TCP with TLS; --tls-cert: our CA and client certificate (default /etc/pki/qemu). */
  tls?: boolean;
  tlsCert?: string;
  /**
   * Long names of the options given on the command line: `--nbd-port`
   * there asks for TCP on a local domain even with the default port.
   */
  given?: ReadonlySet<string>;
}

/**
 * Whether the job serves NBD on TCP: always for a remote domain; for a
 * local one only when asked (--tls, -I, or -P given explicitly).
 */
export function wantsTcp(request: NbdEndpointRequest, remote: boolean): boolean {
  return remote || request.tls === true || request.nbdIp !== undefined || request.given?.has('--nbd-port') === true;
}

/**
 * The endpoint of a run. `hypervisorHost` is asked only when TCP is used
 * without -I (the name libvirt reports, so QEMU binds where we connect).
 */
export async function chooseEndpoint(request: NbdEndpointRequest, remote: boolean, hypervisorHost: () => Promise<string>): Promise<NbdEndpoint> {
  if (!wantsTcp(request, remote)) return { kind: 'unix', socket: request.socketFile };
  const host = request.nbdIp ?? (await hypervisorHost());
  const port = request.nbdPort ?? DEFAULT_NBD_PORT;
  return request.tls ? { kind: 'tcp', host, port, tls: { certDir: (request.tlsCert ?? DEFAULT_TLS_CERT_DIR).replace(/(.)\/+$/, '$1') } } : { kind: 'tcp', host, port };
}

/** The `<server>` element of the backup XML. */
export function backupServerOf(endpoint: NbdEndpoint): BackupServer {
  if (endpoint.kind === 'unix') return { transport: 'unix', socket: endpoint.socket };
  return { transport: 'tcp', name: endpoint.host, port: endpoint.port, tls: endpoint.tls !== undefined };
}

/** The NBD URI of one export: our client connects to it, nbdinfo (-q) reads it, -s prints it. */
export function exportUri(endpoint: NbdEndpoint, exportName: string): NbdUri {
  if (endpoint.kind === 'unix') return { transport: 'unix', tls: false, exportName, socket: endpoint.socket };
  return {
    transport: 'tcp',
    tls: endpoint.tls !== undefined,
    exportName,
    host: endpoint.host,
    port: endpoint.port,
    ...(endpoint.tls ? { tlsCertificates: endpoint.tls.certDir } : {}),
  };
}

/** exportUri() as a string: `nbd+unix:///vda?socket=...`, `nbd://host:10809/vda`, `nbds://...?tls-certificates=DIR`. */
export function exportUriString(endpoint: NbdEndpoint, exportName: string): string {
  return formatNbdUri(exportUri(endpoint, exportName));
}

/** For messages: "socket /var/tmp/x", "TCP host:10809", "TCP host:10809 with TLS (certificates in DIR, --tls-cert)". */
export function describeEndpoint(endpoint: NbdEndpoint): string {
  if (endpoint.kind === 'unix') return `socket ${endpoint.socket}`;
  const address = endpoint.host.includes(':') ? `[${endpoint.host}]:${endpoint.port}` : `${endpoint.host}:${endpoint.port}`;
  return endpoint.tls ? `TCP ${address} with TLS (certificates in ${endpoint.tls.certDir}, --tls-cert)` : `TCP ${address}`;
}
