/**
 * LibvirtError: every failure of the libvirt client. Errors the daemon
 * reports (remote_error) keep libvirt's code, domain and message as they
 * are, so "Domain not found: no domain with matching name 'x'" reaches the
 * user verbatim; failures of our own side (socket, protocol, arguments) use
 * the libvirt code that fits them best.
 */

/** virErrorNumber values (include/libvirt/virterror.h) virtnbd refers to. */
export const VIR_ERR_OK = 0;
export const VIR_ERR_INTERNAL_ERROR = 1;
export const VIR_ERR_NO_SUPPORT = 3;
export const VIR_ERR_NO_CONNECT = 5;
export const VIR_ERR_INVALID_CONN = 6;
export const VIR_ERR_INVALID_DOMAIN = 7;
export const VIR_ERR_INVALID_ARG = 8;
export const VIR_ERR_OPERATION_FAILED = 9;
export const VIR_ERR_XML_ERROR = 27;
export const VIR_ERR_DOM_EXIST = 28;
export const VIR_ERR_OPERATION_DENIED = 29;
export const VIR_ERR_RPC = 39;
export const VIR_ERR_NO_DOMAIN = 42;
export const VIR_ERR_AUTH_FAILED = 45;
export const VIR_ERR_NO_STORAGE_POOL = 49;
export const VIR_ERR_OPERATION_INVALID = 55;
export const VIR_ERR_CONFIG_UNSUPPORTED = 67;
export const VIR_ERR_OPERATION_TIMEOUT = 68;
export const VIR_ERR_ARGUMENT_UNSUPPORTED = 74;
export const VIR_ERR_OPERATION_ABORTED = 78;
export const VIR_ERR_OPERATION_UNSUPPORTED = 84;
export const VIR_ERR_AGENT_UNRESPONSIVE = 86;
export const VIR_ERR_RESOURCE_BUSY = 87;
export const VIR_ERR_ACCESS_DENIED = 88;
export const VIR_ERR_AUTH_UNAVAILABLE = 94;
export const VIR_ERR_INVALID_DOMAIN_CHECKPOINT = 102;
export const VIR_ERR_NO_DOMAIN_CHECKPOINT = 103;
export const VIR_ERR_NO_DOMAIN_BACKUP = 104;
export const VIR_ERR_CHECKPOINT_INCONSISTENT = 109;

/** virErrorDomain values (where an error came from) virtnbd refers to. */
export const VIR_FROM_NONE = 0;
export const VIR_FROM_RPC = 7;
export const VIR_FROM_QEMU = 10;
export const VIR_FROM_REMOTE = 13;
export const VIR_FROM_STORAGE = 18;
export const VIR_FROM_DOMAIN = 20;
export const VIR_FROM_URI = 45;
export const VIR_FROM_AUTH = 46;
export const VIR_FROM_DOMAIN_CHECKPOINT = 69;

/** virErrorLevel */
export const VIR_ERR_NONE = 0;
export const VIR_ERR_WARNING = 1;
export const VIR_ERR_ERROR = 2;

const codeNames = new Map<number, string>([
  [VIR_ERR_OK, 'VIR_ERR_OK'],
  [VIR_ERR_INTERNAL_ERROR, 'VIR_ERR_INTERNAL_ERROR'],
  [VIR_ERR_NO_SUPPORT, 'VIR_ERR_NO_SUPPORT'],
  [VIR_ERR_NO_CONNECT, 'VIR_ERR_NO_CONNECT'],
  [VIR_ERR_INVALID_CONN, 'VIR_ERR_INVALID_CONN'],
  [VIR_ERR_INVALID_DOMAIN, 'VIR_ERR_INVALID_DOMAIN'],
  [VIR_ERR_INVALID_ARG, 'VIR_ERR_INVALID_ARG'],
  [VIR_ERR_OPERATION_FAILED, 'VIR_ERR_OPERATION_FAILED'],
  [VIR_ERR_XML_ERROR, 'VIR_ERR_XML_ERROR'],
  [VIR_ERR_DOM_EXIST, 'VIR_ERR_DOM_EXIST'],
  [VIR_ERR_OPERATION_DENIED, 'VIR_ERR_OPERATION_DENIED'],
  [VIR_ERR_RPC, 'VIR_ERR_RPC'],
  [VIR_ERR_NO_DOMAIN, 'VIR_ERR_NO_DOMAIN'],
  [VIR_ERR_AUTH_FAILED, 'VIR_ERR_AUTH_FAILED'],
  [VIR_ERR_NO_STORAGE_POOL, 'VIR_ERR_NO_STORAGE_POOL'],
  [VIR_ERR_OPERATION_INVALID, 'VIR_ERR_OPERATION_INVALID'],
  [VIR_ERR_CONFIG_UNSUPPORTED, 'VIR_ERR_CONFIG_UNSUPPORTED'],
  [VIR_ERR_OPERATION_TIMEOUT, 'VIR_ERR_OPERATION_TIMEOUT'],
  [VIR_ERR_ARGUMENT_UNSUPPORTED, 'VIR_ERR_ARGUMENT_UNSUPPORTED'],
  [VIR_ERR_OPERATION_ABORTED, 'VIR_ERR_OPERATION_ABORTED'],
  [VIR_ERR_OPERATION_UNSUPPORTED, 'VIR_ERR_OPERATION_UNSUPPORTED'],
  [VIR_ERR_AGENT_UNRESPONSIVE, 'VIR_ERR_AGENT_UNRESPONSIVE'],
  [VIR_ERR_RESOURCE_BUSY, 'VIR_ERR_RESOURCE_BUSY'],
  [VIR_ERR_ACCESS_DENIED, 'VIR_ERR_ACCESS_DENIED'],
  [VIR_ERR_AUTH_UNAVAILABLE, 'VIR_ERR_AUTH_UNAVAILABLE'],
  [VIR_ERR_INVALID_DOMAIN_CHECKPOINT, 'VIR_ERR_INVALID_DOMAIN_CHECKPOINT'],
  [VIR_ERR_NO_DOMAIN_CHECKPOINT, 'VIR_ERR_NO_DOMAIN_CHECKPOINT'],
  [VIR_ERR_NO_DOMAIN_BACKUP, 'VIR_ERR_NO_DOMAIN_BACKUP'],
  [VIR_ERR_CHECKPOINT_INCONSISTENT, 'VIR_ERR_CHECKPOINT_INCONSISTENT'],
]);

export interface LibvirtErrorFields {
  code: number;
  domain: number;
  message: string;
  level?: number;
  str1?: string | null;
  str2?: string | null;
  str3?: string | null;
  int1?: number;
  int2?: number;
  /** The RPC procedure that failed, e.g. "REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME". */
  procedure?: string;
  cause?: unknown;
}

export class LibvirtError extends Error {
  /** virErrorNumber, e.g. VIR_ERR_NO_DOMAIN (42). */
  readonly code: number;
  /** virErrorDomain: which part of libvirt raised it. */
  readonly domain: number;
  readonly level: number;
  readonly str1: string | null;
  readonly str2: string | null;
  readonly str3: string | null;
  readonly int1: number;
  readonly int2: number;
  readonly procedure: string | undefined;

  constructor(fields: LibvirtErrorFields) {
    super(fields.message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.name = 'LibvirtError';
    this.code = fields.code;
    this.domain = fields.domain;
    this.level = fields.level ?? VIR_ERR_ERROR;
    this.str1 = fields.str1 ?? null;
    this.str2 = fields.str2 ?? null;
    this.str3 = fields.str3 ?? null;
    this.int1 = fields.int1 ?? 0;
    this.int2 = fields.int2 ?? 0;
    this.procedure = fields.procedure;
  }

  /** libvirt's name for the code, e.g. "VIR_ERR_NO_DOMAIN", or "VIR_ERR_<n>". */
  get codeName(): string {
    return codeNames.get(this.code) ?? `VIR_ERR_${this.code}`;
  }
}

/**
 * A login to libvirtd that failed (VIR_ERR_AUTH_FAILED: wrong user name or
 * password) or could not be tried (VIR_ERR_AUTH_UNAVAILABLE: no
 * credentials, no usable mechanism). Names the user, never the password.
 */
export class LibvirtAuthError extends LibvirtError {
  readonly user: string | undefined;

  constructor(code: number, message: string, user: string | undefined, cause?: unknown) {
    super({ code, domain: VIR_FROM_AUTH, message, cause });
    this.name = 'LibvirtAuthError';
    this.user = user;
  }
}

/** Connection-level failure: socket lost, protocol violated, keepalive timed out. */
export function rpcError(message: string, cause?: unknown): LibvirtError {
  return new LibvirtError({ code: VIR_ERR_RPC, domain: VIR_FROM_RPC, message, cause });
}

export function invalidArg(message: string): LibvirtError {
  return new LibvirtError({ code: VIR_ERR_INVALID_ARG, domain: VIR_FROM_NONE, message });
}
