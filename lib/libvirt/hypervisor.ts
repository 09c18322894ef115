/**
 * Hypervisor: a connection to one libvirt daemon, shaped like
 * node-libvirt's, with promises. connect() opens the URI's transport,
 * authenticates (REMOTE_PROC_AUTH_LIST; polkit, or SASL with the
 * credentials given as options, see sasl.ts), opens the driver
 * (REMOTE_PROC_CONNECT_OPEN) and starts keepalive; close() sends
 * REMOTE_PROC_CONNECT_CLOSE and ends the transport.
 */
import { RpcConnection } from './connection.js';
import { Domain } from './domain.js';
import {
  LibvirtAuthError,
  LibvirtError,
  VIR_ERR_AUTH_FAILED,
  VIR_ERR_AUTH_UNAVAILABLE,
  VIR_ERR_INVALID_CONN,
  VIR_ERR_NO_SUPPORT,
  VIR_FROM_AUTH,
  VIR_FROM_REMOTE,
} from './errors.js';
import { VIR_CONNECT_RO } from './flags.js';
import { DrvFeature, RemoteProcedure } from './procedures.js';
import {
  REMOTE_AUTH_TYPE_LIST_MAX,
  REMOTE_DOMAIN_LIST_MAX,
  parseUuid,
  readDomainRef,
  readStoragePoolRef,
  readString,
  writeOptionalString,
  writeString,
} from './remote-types.js';
import { authenticateSasl, type Credentials } from './sasl.js';
import { StoragePool } from './storage-pool.js';
import { connectTcp, connectTls, connectUnix, spawnTransport, type Transport } from './transport.js';
import { flagParam, localSocketPath, parseLibvirtUri, sshCommand, tcpPort, type LibvirtUri } from './uri.js';

/** remote_auth_type */
export const REMOTE_AUTH_NONE = 0;
export const REMOTE_AUTH_SASL = 1;
export const REMOTE_AUTH_POLKIT = 2;

export interface HypervisorOptions {
  /** Open read-only (VIR_CONNECT_RO; the read-only socket for local URIs). */
  readOnly?: boolean;
  /** Seconds of silence before we PING the daemon; 0 turns keepalive off. libvirt's default: 5. */
  keepaliveInterval?: number;
  /** Unanswered intervals before the connection is declared dead. libvirt's default: 5. */
  keepaliveCount?: number;
  /** Opens the byte pipe instead of the URI's own transport (custom ssh, tests). */
  transport?: (uri: LibvirtUri) => Promise<Transport>;
  /**
   * User name and password for daemons that demand SASL (auth_tcp or
   * auth_tls = "sasl"). Without a username here, the URI's user is used.
   */
  credentials?: { username?: string; password: string };
}

/** 9000000 -> "9.0.0", libvirt's major * 1,000,000 + minor * 1,000 + release. */
export function versionToString(version: number): string {
  return `${Math.floor(version / 1_000_000)}.${Math.floor(version / 1000) % 1000}.${version % 1000}`;
}

/** The transport a URI names: unix socket, TCP, or ssh running virt-ssh-helper. */
export function openTransport(uri: LibvirtUri, readOnly = false): Promise<Transport> {
  switch (uri.transport) {
    case 'unix':
      return connectUnix(localSocketPath(uri, readOnly));
    case 'tcp':
      return connectTcp(uri.host!, tcpPort(uri));
    case 'tls':
      return connectTls(uri.host!, tcpPort(uri), { pkipath: uri.params.pkipath, noVerify: flagParam(uri, 'no_verify') });
    case 'ssh': {
      const { command, args } = sshCommand(uri, readOnly);
      const host = uri.host!.includes(':') ? `[${uri.host}]` : uri.host;
      return spawnTransport(command, args, `ssh ${uri.user ? `${uri.user}@` : ''}${host}${uri.port !== undefined ? `:${uri.port}` : ''}`);
    }
    default:
      return Promise.reject(
        new LibvirtError({
          code: VIR_ERR_NO_SUPPORT,
          domain: VIR_FROM_REMOTE,
          message: `the ${uri.transport} transport of '${uri.uri}' is not supported yet; use qemu+ssh:// or a local URI`,
        }),
      );
  }
}

export class Hypervisor {
  readonly uri: LibvirtUri;
  private rpc: RpcConnection | null = null;
  private connecting: Promise<void> | null = null;
  private readonly options: HypervisorOptions;

  /** Parses the URI now (a bad one throws LibvirtError); connects on connect(). */
  constructor(uri = 'qemu:///system', options: HypervisorOptions = {}) {
    this.uri = parseLibvirtUri(uri);
    this.options = options;
  }

  /** The RPC connection; throws when not connected. */
  get connection(): RpcConnection {
    if (!this.rpc || !this.rpc.isOpen) {
      throw new LibvirtError({
        code: VIR_ERR_INVALID_CONN,
        domain: VIR_FROM_REMOTE,
        message: `not connected to ${this.uri.uri}: call connect() first`,
      });
    }
    return this.rpc;
  }

  get isConnected(): boolean {
    return this.rpc !== null && this.rpc.isOpen;
  }

  /** Opens the connection; concurrent calls share one attempt; after a lost connection, reconnects. */
  async connect(): Promise<void> {
    if (this.isConnected) return;
    this.connecting ??= this.open().finally(() => (this.connecting = null));
    return this.connecting;
  }

  private async open(): Promise<void> {
    const open = this.options.transport ?? ((u: LibvirtUri) => openTransport(u, this.options.readOnly));
    const rpc = new RpcConnection(await open(this.uri));
    try {
      await this.authenticate(rpc);
      await rpc.remote(RemoteProcedure.CONNECT_OPEN, (w) => {
        writeOptionalString(w, this.uri.remoteName);
        w.uint(this.options.readOnly ? VIR_CONNECT_RO : 0);
      });
      const interval = this.options.keepaliveInterval ?? 5;
      if (interval > 0 && (await supportsFeature(rpc, DrvFeature.PROGRAM_KEEPALIVE))) {
        rpc.startKeepalive(interval, this.options.keepaliveCount ?? 5);
      }
    } catch (err) {
      rpc.destroy('connect failed');
      throw err;
    }
    this.rpc = rpc;
  }

  private async authenticate(rpc: RpcConnection): Promise<void> {
    const types = await rpc.remote(RemoteProcedure.AUTH_LIST, undefined, (r) => r.array((rr) => rr.int(), REMOTE_AUTH_TYPE_LIST_MAX));
    if (types.length === 0 || types.includes(REMOTE_AUTH_NONE)) return;
    const where = rpc.transport.description;
    if (types.includes(REMOTE_AUTH_POLKIT)) {
      const complete = await rpc.remote(RemoteProcedure.AUTH_POLKIT, undefined, (r) => r.int());
      if (complete === 0) {
        throw new LibvirtError({ code: VIR_ERR_AUTH_FAILED, domain: VIR_FROM_AUTH, message: `polkit authentication at ${where} did not complete` });
      }
      return;
    }
    if (types.includes(REMOTE_AUTH_SASL)) {
      const kind = rpc.transport.kind;
      await authenticateSasl(rpc, this.saslCredentials(), { where, confidential: kind === 'tls' || kind === 'unix', plainTcp: kind === 'tcp' });
      return;
    }
    throw new LibvirtError({
      code: VIR_ERR_AUTH_UNAVAILABLE,
      domain: VIR_FROM_AUTH,
      message: `libvirt at ${where} offers only unknown authentication types ${types.join(', ')}`,
    });
  }

  private saslCredentials(): Credentials | undefined {
    const given = this.options.credentials;
    if (!given) return undefined;
    const username = given.username ?? this.uri.user;
    if (username === undefined || username === '') {
      throw new LibvirtAuthError(
        VIR_ERR_AUTH_UNAVAILABLE,
        `libvirt at ${this.uri.uri} requires SASL authentication and a password was given, but no user name: pass --user (or user@ in the URI)`,
        undefined,
      );
    }
    return { username, password: given.password };
  }

  /** Says goodbye (CONNECT_CLOSE) and closes the transport. Idempotent. */
  async close(): Promise<void> {
    const rpc = this.rpc;
    if (!rpc) return;
    this.rpc = null;
    if (rpc.isOpen) {
      try {
        await rpc.remote(RemoteProcedure.CONNECT_CLOSE);
      } catch {
        // The daemon may already be gone; closing must not fail for that.
      }
    }
    await rpc.close();
  }

  /** The daemon's libvirt version, e.g. 9000000 for 9.0.0 (see versionToString). */
  async getLibVersion(): Promise<number> {
    return this.connection.remote(RemoteProcedure.CONNECT_GET_LIB_VERSION, undefined, (r) => r.uhyperNumber('lib_ver'));
  }

  /** The hypervisor's version, e.g. 7002022 for QEMU 7.2.22. */
  async getVersion(): Promise<number> {
    return this.connection.remote(RemoteProcedure.CONNECT_GET_VERSION, undefined, (r) => r.uhyperNumber('hv_ver'));
  }

  async getHostname(): Promise<string> {
    return this.connection.remote(RemoteProcedure.CONNECT_GET_HOSTNAME, undefined, readString);
  }

  /** The driver name, e.g. "QEMU". */
  async getType(): Promise<string> {
    return this.connection.remote(RemoteProcedure.CONNECT_GET_TYPE, undefined, readString);
  }

  /** The URI as the daemon canonicalised it, e.g. "qemu:///system". */
  async getUri(): Promise<string> {
    return this.connection.remote(RemoteProcedure.CONNECT_GET_URI, undefined, readString);
  }

  async getCapabilities(): Promise<string> {
    return this.connection.remote(RemoteProcedure.CONNECT_GET_CAPABILITIES, undefined, readString);
  }

  /** Domains matching VIR_CONNECT_LIST_DOMAINS_* flags (0: all). */
  async listAllDomains(flags = 0): Promise<Domain[]> {
    const rpc = this.connection;
    const refs = await rpc.remote(
      RemoteProcedure.CONNECT_LIST_ALL_DOMAINS,
      (w) => {
        w.int(1); // need_results
        w.uint(flags);
      },
      (r) => {
        const list = r.array(readDomainRef, REMOTE_DOMAIN_LIST_MAX);
        r.uint(); // ret: the count again
        return list;
      },
    );
    return refs.map((ref) => new Domain(rpc, ref));
  }

  /** A missing domain rejects with VIR_ERR_NO_DOMAIN: "Domain not found: no domain with matching name 'x'". */
  async lookupDomainByName(name: string): Promise<Domain> {
    const rpc = this.connection;
    const ref = await rpc.remote(RemoteProcedure.DOMAIN_LOOKUP_BY_NAME, (w) => writeString(w, name), readDomainRef);
    return new Domain(rpc, ref);
  }

  async lookupDomainByUUID(uuid: string): Promise<Domain> {
    const rpc = this.connection;
    const bytes = parseUuid(uuid);
    const ref = await rpc.remote(RemoteProcedure.DOMAIN_LOOKUP_BY_UUID, (w) => w.fixedOpaque(bytes, 16), readDomainRef);
    return new Domain(rpc, ref);
  }

  async lookupDomainById(id: number): Promise<Domain> {
    const rpc = this.connection;
    const ref = await rpc.remote(RemoteProcedure.DOMAIN_LOOKUP_BY_ID, (w) => w.int(id), readDomainRef);
    return new Domain(rpc, ref);
  }

  /** Defines (or updates) a persistent domain (flags: VIR_DOMAIN_DEFINE_*). */
  async defineXML(xml: string, flags = 0): Promise<Domain> {
    const rpc = this.connection;
    const ref = await rpc.remote(
      RemoteProcedure.DOMAIN_DEFINE_XML_FLAGS,
      (w) => {
        writeString(w, xml);
        w.uint(flags);
      },
      readDomainRef,
    );
    return new Domain(rpc, ref);
  }

  /** Creates and starts a transient domain (flags: VIR_DOMAIN_START_*). */
  async createXML(xml: string, flags = 0): Promise<Domain> {
    const rpc = this.connection;
    const ref = await rpc.remote(
      RemoteProcedure.DOMAIN_CREATE_XML,
      (w) => {
        writeString(w, xml);
        w.uint(flags);
      },
      readDomainRef,
    );
    return new Domain(rpc, ref);
  }

  /** The pool whose target directory is `path`; none rejects with VIR_ERR_NO_STORAGE_POOL. */
  async storagePoolLookupByTargetPath(path: string): Promise<StoragePool> {
    const rpc = this.connection;
    const ref = await rpc.remote(RemoteProcedure.STORAGE_POOL_LOOKUP_BY_TARGET_PATH, (w) => writeString(w, path), readStoragePoolRef);
    return new StoragePool(rpc, ref);
  }

  async storagePoolLookupByName(name: string): Promise<StoragePool> {
    const rpc = this.connection;
    const ref = await rpc.remote(RemoteProcedure.STORAGE_POOL_LOOKUP_BY_NAME, (w) => writeString(w, name), readStoragePoolRef);
    return new StoragePool(rpc, ref);
  }
}

async function supportsFeature(rpc: RpcConnection, feature: number): Promise<boolean> {
  return rpc.remote(RemoteProcedure.CONNECT_SUPPORTS_FEATURE, (w) => w.int(feature), (r) => r.int() !== 0);
}
