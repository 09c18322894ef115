/**
 * Codecs for the shared structs of remote_protocol.x: object references
 * (remote_nonnull_domain, _domain_checkpoint, _storage_pool), remote_error
 * and UUIDs. Per-procedure args and rets are encoded where they are called.
 */
import { LibvirtError, invalidArg } from './errors.js';
import type { XdrReader, XdrWriter } from './xdr.js';

/** REMOTE_STRING_MAX: longest string libvirt accepts or sends. */
export const REMOTE_STRING_MAX = 4194304;
export const VIR_UUID_BUFLEN = 16;
export const REMOTE_DOMAIN_LIST_MAX = 16384;
export const REMOTE_DOMAIN_CHECKPOINT_LIST_MAX = 16384;
export const REMOTE_AUTH_TYPE_LIST_MAX = 20;
export const REMOTE_DOMAIN_JOB_STATS_MAX = 64;
export const REMOTE_DOMAIN_GUEST_INFO_PARAMS_MAX = 2048;
export const REMOTE_DOMAIN_FSFREEZE_MOUNTPOINTS_MAX = 256;

/** remote_nonnull_domain: how the protocol names a domain. */
export interface DomainRef {
  name: string;
  uuid: Buffer;
  id: number;
}

/** remote_nonnull_domain_checkpoint */
export interface CheckpointRef {
  name: string;
  dom: DomainRef;
}

/** remote_nonnull_storage_pool */
export interface StoragePoolRef {
  name: string;
  uuid: Buffer;
}

export function writeString(w: XdrWriter, s: string): void {
  w.string(s, REMOTE_STRING_MAX);
}

export function readString(r: XdrReader): string {
  return r.string(REMOTE_STRING_MAX);
}

/** remote_string: a string that may be NULL. */
export function writeOptionalString(w: XdrWriter, s: string | null | undefined): void {
  w.optional(s, writeString);
}

export function readOptionalString(r: XdrReader): string | null {
  return r.optional(readString);
}

export function writeDomainRef(w: XdrWriter, d: DomainRef): void {
  writeString(w, d.name);
  w.fixedOpaque(d.uuid, VIR_UUID_BUFLEN);
  w.int(d.id);
}

export function readDomainRef(r: XdrReader): DomainRef {
  return { name: readString(r), uuid: r.fixedOpaque(VIR_UUID_BUFLEN), id: r.int() };
}

export function writeCheckpointRef(w: XdrWriter, c: CheckpointRef): void {
  writeString(w, c.name);
  writeDomainRef(w, c.dom);
}

export function readCheckpointRef(r: XdrReader): CheckpointRef {
  return { name: readString(r), dom: readDomainRef(r) };
}

export function writeStoragePoolRef(w: XdrWriter, p: StoragePoolRef): void {
  writeString(w, p.name);
  w.fixedOpaque(p.uuid, VIR_UUID_BUFLEN);
}

export function readStoragePoolRef(r: XdrReader): StoragePoolRef {
  return { name: readString(r), uuid: r.fixedOpaque(VIR_UUID_BUFLEN) };
}

/** remote_error, as the daemon sends it with status VIR_NET_ERROR. */
export function readRemoteError(r: XdrReader, procedure: string): LibvirtError {
  const code = r.int();
  const domain = r.int();
  const message = readOptionalString(r);
  const level = r.int();
  r.optional(readDomainRef); // dom: unused by libvirt
  const str1 = readOptionalString(r);
  const str2 = readOptionalString(r);
  const str3 = readOptionalString(r);
  const int1 = r.int();
  const int2 = r.int();
  r.optional((rr) => ({ name: readString(rr), uuid: rr.fixedOpaque(VIR_UUID_BUFLEN) })); // net: unused
  return new LibvirtError({
    code,
    domain,
    level,
    message: message ?? `libvirt error ${code} (no message) in ${procedure}`,
    str1,
    str2,
    str3,
    int1,
    int2,
    procedure,
  });
}

/** 16 raw bytes -> "8-4-4-4-12" lower-case hex, as virsh domuuid prints. */
export function formatUuid(uuid: Buffer): string {
  const h = uuid.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** A UUID string (with or without dashes) -> 16 raw bytes; throws LibvirtError on bad input. */
export function parseUuid(uuid: string): Buffer {
  const hex = uuid.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) {
    throw invalidArg(`invalid UUID '${uuid}': expected 32 hex digits`);
  }
  return Buffer.from(hex, 'hex');
}
