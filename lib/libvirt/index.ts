/**
 * virtnbd's libvirt client: libvirt's RPC protocol in TypeScript over the
 * daemon's unix socket (or ssh, or TCP), no native build. Start at
 * `new Hypervisor('qemu:///system')`.
 */
export { Hypervisor, openTransport, versionToString, type HypervisorOptions } from './hypervisor.js';
export { Domain, type BlockInfo, type DomainInfo, type DomainState, type JobInfo, type JobStats } from './domain.js';
export { Checkpoint } from './checkpoint.js';
export { StoragePool } from './storage-pool.js';
export { RpcConnection, type RpcConnectionEvents } from './connection.js';
export { LibvirtError } from './errors.js';
export * from './errors.js';
export * from './flags.js';
export { connectTcp, connectTls, connectUnix, spawnTransport, tlsFiles, type TlsConnectOptions, type TlsFiles, type Transport, type TransportKind } from './transport.js';
export { authenticateSasl, chooseMechanism, parseMechanisms, type Credentials, type SaslContext } from './sasl.js';
export { ScramClient, ScramError, saslPrep, type ScramHash, type ScramOptions } from './scram.js';
export { localSocketPath, parseLibvirtUri, sshCommand, tcpPort, type LibvirtUri, type UriTransport } from './uri.js';
export {
  VIR_TYPED_PARAM_BOOLEAN,
  VIR_TYPED_PARAM_DOUBLE,
  VIR_TYPED_PARAM_INT,
  VIR_TYPED_PARAM_LLONG,
  VIR_TYPED_PARAM_STRING,
  VIR_TYPED_PARAM_UINT,
  VIR_TYPED_PARAM_ULLONG,
  type TypedParam,
  type TypedParamValue,
  type TypedParams,
} from './typed-params.js';
export { formatUuid, parseUuid } from './remote-types.js';
