/**
 * Program and procedure numbers of the libvirt RPC protocol, taken from
 * src/remote/remote_protocol.x (enum remote_procedure),
 * src/remote/qemu_protocol.x and src/rpc/virkeepaliveprotocol.x.
 * Only the procedures virtnbd calls are listed; the numbers never change.
 */

export const REMOTE_PROGRAM = 0x20008086;
export const REMOTE_PROTOCOL_VERSION = 1;
export const QEMU_PROGRAM = 0x20008087;
export const QEMU_PROTOCOL_VERSION = 1;
export const KEEPALIVE_PROGRAM = 0x6b656570;
export const KEEPALIVE_PROTOCOL_VERSION = 1;

export const RemoteProcedure = {
  CONNECT_OPEN: 1,
  CONNECT_CLOSE: 2,
  CONNECT_GET_TYPE: 3,
  CONNECT_GET_VERSION: 4,
  CONNECT_GET_CAPABILITIES: 7,
  DOMAIN_CREATE_XML: 10,
  DOMAIN_DEFINE_XML: 11,
  DOMAIN_GET_XML_DESC: 14,
  DOMAIN_GET_AUTOSTART: 15,
  DOMAIN_GET_INFO: 16,
  DOMAIN_LOOKUP_BY_ID: 22,
  DOMAIN_LOOKUP_BY_NAME: 23,
  DOMAIN_LOOKUP_BY_UUID: 24,
  DOMAIN_RESUME: 28,
  DOMAIN_SET_AUTOSTART: 29,
  DOMAIN_SUSPEND: 34,
  CONNECT_GET_HOSTNAME: 59,
  CONNECT_SUPPORTS_FEATURE: 60,
  AUTH_LIST: 66,
  AUTH_SASL_INIT: 67,
  AUTH_SASL_START: 68,
  AUTH_SASL_STEP: 69,
  AUTH_POLKIT: 70,
  STORAGE_POOL_REFRESH: 83,
  STORAGE_POOL_LOOKUP_BY_NAME: 84,
  STORAGE_POOL_GET_XML_DESC: 88,
  CONNECT_GET_URI: 110,
  DOMAIN_IS_ACTIVE: 150,
  DOMAIN_IS_PERSISTENT: 151,
  CONNECT_GET_LIB_VERSION: 157,
  DOMAIN_GET_JOB_INFO: 163,
  DOMAIN_ABORT_JOB: 164,
  DOMAIN_GET_BLOCK_INFO: 194,
  DOMAIN_CREATE_WITH_FLAGS: 196,
  DOMAIN_GET_STATE: 212,
  DOMAIN_UNDEFINE_FLAGS: 231,
  DOMAIN_DESTROY_FLAGS: 234,
  DOMAIN_SHUTDOWN_FLAGS: 258,
  CONNECT_LIST_ALL_DOMAINS: 273,
  DOMAIN_GET_JOB_STATS: 298,
  DOMAIN_FSFREEZE: 335,
  DOMAIN_FSTHAW: 336,
  DOMAIN_DEFINE_XML_FLAGS: 350,
  STORAGE_POOL_LOOKUP_BY_TARGET_PATH: 391,
  DOMAIN_CHECKPOINT_CREATE_XML: 411,
  DOMAIN_CHECKPOINT_GET_XML_DESC: 412,
  DOMAIN_LIST_ALL_CHECKPOINTS: 413,
  DOMAIN_CHECKPOINT_LIST_ALL_CHILDREN: 414,
  DOMAIN_CHECKPOINT_LOOKUP_BY_NAME: 415,
  DOMAIN_CHECKPOINT_GET_PARENT: 416,
  DOMAIN_CHECKPOINT_DELETE: 417,
  DOMAIN_GET_GUEST_INFO: 418,
  DOMAIN_BACKUP_BEGIN: 421,
  DOMAIN_BACKUP_GET_XML_DESC: 422,
  DOMAIN_ABORT_JOB_FLAGS: 442,
} as const;
export type RemoteProcedure = (typeof RemoteProcedure)[keyof typeof RemoteProcedure];

export const QemuProcedure = {
  DOMAIN_MONITOR_COMMAND: 1,
  DOMAIN_AGENT_COMMAND: 3,
} as const;
export type QemuProcedure = (typeof QemuProcedure)[keyof typeof QemuProcedure];

export const KeepaliveProcedure = {
  PING: 1,
  PONG: 2,
} as const;

/** Feature numbers for CONNECT_SUPPORTS_FEATURE (libvirt's VIR_DRV_FEATURE_*). */
export const DrvFeature = {
  TYPED_PARAM_STRING: 9,
  PROGRAM_KEEPALIVE: 10,
} as const;

const remoteNames = new Map<number, string>(
  Object.entries(RemoteProcedure).map(([name, n]) => [n, `REMOTE_PROC_${name}`]),
);
const qemuNames = new Map<number, string>(
  Object.entries(QemuProcedure).map(([name, n]) => [n, `QEMU_PROC_${name}`]),
);

/** A readable name for error messages, e.g. "REMOTE_PROC_DOMAIN_BACKUP_BEGIN". */
export function procedureName(program: number, procedure: number): string {
  if (program === REMOTE_PROGRAM) return remoteNames.get(procedure) ?? `REMOTE_PROC_${procedure}`;
  if (program === QEMU_PROGRAM) return qemuNames.get(procedure) ?? `QEMU_PROC_${procedure}`;
  if (program === KEEPALIVE_PROGRAM) return procedure === KeepaliveProcedure.PING ? 'KEEPALIVE_PROC_PING' : 'KEEPALIVE_PROC_PONG';
  return `program 0x${program.toString(16)} procedure ${procedure}`;
}
