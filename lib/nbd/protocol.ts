/**
 * NBD wire protocol: constants and codecs shared by client and server,
 * written from doc/proto.md of the NetworkBlockDevice/nbd repository.
 * All integers are big-endian. 64-bit offsets and sizes are JS numbers
 * (checked to be safe integers on decode); cookies (the spec's "handle") are
 * bigint because a server must echo any 64-bit value exactly.
 *
 * Decoders take a Buffer and a start position, check magics and lengths,
 * and throw NbdProtocolError on anything malformed; they never read past the
 * buffer they are given.
 */
import { NbdProtocolError } from './errors.js';

// ---- magics ---------------------------------------------------------------

/** "NBDMAGIC": first 8 bytes the server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle greeting, and prefix of every option request. */
export const NBD_IHAVEOPT = 0x49484156454f5054n;
/** Old-style negotiation magic (not supported by us, recognised to refuse it clearly). */
export const NBD_OLDSTYLE_MAGIC = 0x00420281861253n;
/** Magic of every option reply. */
export const NBD_OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_EXTENDED_REQUEST_MAGIC = 0x21e41c71;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const NBD_EXTENDED_REPLY_MAGIC = 0x6e8a278c;

export const NBD_DEFAULT_PORT = 10809;

// ---- handshake flags ------------------------------------------------------

/** Server handshake flags (16 bits). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client flags (32 bits). */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// ---- transmission flags (16 bits, per export) -----------------------------

export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;
export const NBD_FLAG_BLOCK_STAT_PAYLOAD = 1 << 12;
/** The spec's spelling of the same flag. */
export const NBD_FLAG_BLOCK_STATUS_PAYLOAD = NBD_FLAG_BLOCK_STAT_PAYLOAD;

// ---- options --------------------------------------------------------------

export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

export const OPTION_NAMES: Readonly<Record<number, string>> = {
  [NBD_OPT_EXPORT_NAME]: 'NBD_OPT_EXPORT_NAME',
  [NBD_OPT_ABORT]: 'NBD_OPT_ABORT',
  [NBD_OPT_LIST]: 'NBD_OPT_LIST',
  [NBD_OPT_PEEK_EXPORT]: 'NBD_OPT_PEEK_EXPORT',
  [NBD_OPT_STARTTLS]: 'NBD_OPT_STARTTLS',
  [NBD_OPT_INFO]: 'NBD_OPT_INFO',
  [NBD_OPT_GO]: 'NBD_OPT_GO',
  [NBD_OPT_STRUCTURED_REPLY]: 'NBD_OPT_STRUCTURED_REPLY',
  [NBD_OPT_LIST_META_CONTEXT]: 'NBD_OPT_LIST_META_CONTEXT',
  [NBD_OPT_SET_META_CONTEXT]: 'NBD_OPT_SET_META_CONTEXT',
  [NBD_OPT_EXTENDED_HEADERS]: 'NBD_OPT_EXTENDED_HEADERS',
};

export function optionName(option: number): string {
  return OPTION_NAMES[option] ?? `NBD_OPT_${option}`;
}

// ---- option reply types ---------------------------------------------------

export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
/** Bit 31 set marks an error reply. */
export const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;
export const NBD_REP_ERR_EXT_HEADER_REQD = NBD_REP_FLAG_ERROR + 10;

export const REPLY_NAMES: Readonly<Record<number, string>> = {
  [NBD_REP_ACK]: 'NBD_REP_ACK',
  [NBD_REP_SERVER]: 'NBD_REP_SERVER',
  [NBD_REP_INFO]: 'NBD_REP_INFO',
  [NBD_REP_META_CONTEXT]: 'NBD_REP_META_CONTEXT',
  [NBD_REP_ERR_UNSUP]: 'NBD_REP_ERR_UNSUP',
  [NBD_REP_ERR_POLICY]: 'NBD_REP_ERR_POLICY',
  [NBD_REP_ERR_INVALID]: 'NBD_REP_ERR_INVALID',
  [NBD_REP_ERR_PLATFORM]: 'NBD_REP_ERR_PLATFORM',
  [NBD_REP_ERR_TLS_REQD]: 'NBD_REP_ERR_TLS_REQD',
  [NBD_REP_ERR_UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
  [NBD_REP_ERR_SHUTDOWN]: 'NBD_REP_ERR_SHUTDOWN',
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
  [NBD_REP_ERR_TOO_BIG]: 'NBD_REP_ERR_TOO_BIG',
  [NBD_REP_ERR_EXT_HEADER_REQD]: 'NBD_REP_ERR_EXT_HEADER_REQD',
};

export function replyName(reply: number): string {
  return REPLY_NAMES[reply] ?? `NBD_REP_${reply >>> 0}`;
}

export function isErrorReply(reply: number): boolean {
  return (reply & NBD_REP_FLAG_ERROR) !== 0;
}

// ---- info types (NBD_OPT_INFO / NBD_OPT_GO) -------------------------------

export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ---- commands and command flags -------------------------------------------

export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;
export const NBD_CMD_RESIZE = 8;

export const COMMAND_NAMES: Readonly<Record<number, string>> = {
  [NBD_CMD_READ]: 'NBD_CMD_READ',
  [NBD_CMD_WRITE]: 'NBD_CMD_WRITE',
  [NBD_CMD_DISC]: 'NBD_CMD_DISC',
  [NBD_CMD_FLUSH]: 'NBD_CMD_FLUSH',
  [NBD_CMD_TRIM]: 'NBD_CMD_TRIM',
  [NBD_CMD_CACHE]: 'NBD_CMD_CACHE',
  [NBD_CMD_WRITE_ZEROES]: 'NBD_CMD_WRITE_ZEROES',
  [NBD_CMD_BLOCK_STATUS]: 'NBD_CMD_BLOCK_STATUS',
  [NBD_CMD_RESIZE]: 'NBD_CMD_RESIZE',
};

export function commandName(type: number): string {
  return COMMAND_NAMES[type] ?? `NBD_CMD_${type}`;
}

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;
export const NBD_CMD_FLAG_PAYLOAD_LEN = 1 << 5;

// ---- structured replies ---------------------------------------------------

export const NBD_REPLY_FLAG_DONE = 1 << 0;

export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_BLOCK_STATUS_EXT = 6;
/** Bit 15 set marks an error chunk. */
export const NBD_REPLY_TYPE_FLAG_ERROR = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_FLAG_ERROR + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_FLAG_ERROR + 2;

export function isErrorChunk(type: number): boolean {
  return (type & NBD_REPLY_TYPE_FLAG_ERROR) !== 0;
}

// ---- meta contexts --------------------------------------------------------

export const BASE_ALLOCATION = 'base:allocation';
export const QEMU_DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';
/** base:allocation flags. */
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
/** qemu:dirty-bitmap:<name> flag: the block is dirty. */
export const NBD_STATE_DIRTY = 1 << 0;

// ---- error numbers (transmission phase) -----------------------------------

export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

export const ERRNO_NAMES: Readonly<Record<number, string>> = {
  [NBD_EPERM]: 'EPERM',
  [NBD_EIO]: 'EIO',
  [NBD_ENOMEM]: 'ENOMEM',
  [NBD_EINVAL]: 'EINVAL',
  [NBD_ENOSPC]: 'ENOSPC',
  [NBD_EOVERFLOW]: 'EOVERFLOW',
  [NBD_ENOTSUP]: 'ENOTSUP',
  [NBD_ESHUTDOWN]: 'ESHUTDOWN',
};

/** Name of an NBD error number: 'EIO', ... or 'E<n>' for values the spec does not define. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `E${errno >>> 0}`;
}

/**
 * NBD error number for a Node/POSIX error code (e.g. from fs: 'ENOSPC'),
 * for a server to send. Codes the protocol lacks map to EIO (or EINVAL for
 * argument errors), as the spec asks servers to do.
 */
export function errnoFromCode(code: string | undefined): number {
  switch (code) {
    case 'EPERM':
    case 'EACCES':
    case 'EROFS':
      return NBD_EPERM;
    case 'ENOMEM':
      return NBD_ENOMEM;
    case 'EINVAL':
    case 'ERANGE':
      return NBD_EINVAL;
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NBD_ENOSPC;
    case 'EOVERFLOW':
      return NBD_EOVERFLOW;
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      return NBD_ENOTSUP;
    case 'ESHUTDOWN':
      return NBD_ESHUTDOWN;
    default:
      return NBD_EIO;
  }
}

// ---- sizes ----------------------------------------------------------------

/** Server greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export const SERVER_GREETING_SIZE = 18;
export const CLIENT_FLAGS_SIZE = 4;
export const OPTION_REQUEST_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;
/** Reply to NBD_OPT_EXPORT_NAME: size u64 + flags u16 (+ 124 zeroes unless NO_ZEROES). */
export const EXPORT_NAME_REPLY_SIZE = 10;
export const EXPORT_NAME_REPLY_ZEROES = 124;
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_HEADER_SIZE = 16;
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
/** Largest string (export name, context name...) the spec allows. */
export const NBD_MAX_STRING = 4096;
/** Default maximum payload when the server advertises no block sizes. */
export const NBD_DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;
/** Largest option payload we accept/send; far above anything legitimate. */
export const NBD_MAX_OPTION_LENGTH = 64 * 1024 * 1024;

// ---- helpers --------------------------------------------------------------

function need(buf: Buffer, at: number, size: number, what: string): void {
  if (at < 0 || buf.length - at < size) {
    throw new NbdProtocolError(`${what}: need ${size} bytes, have ${Math.max(0, buf.length - at)}`);
  }
}

/** Read a u64 that must fit a JS safe integer (offsets, sizes). */
export function readSafeU64(buf: Buffer, at: number, what: string): number {
  const v = buf.readBigUInt64BE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new NbdProtocolError(`${what} ${v} is larger than 2^53-1`);
  }
  return Number(v);
}

/** u32 length + UTF-8 bytes; used in option payloads. */
export function encodeString32(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  const out = Buffer.allocUnsafe(4 + bytes.length);
  out.writeUInt32BE(bytes.length, 0);
  bytes.copy(out, 4);
  return out;
}

/** Decode a u32-length-prefixed string at `at`; returns the string and the position after it. */
export function decodeString32(buf: Buffer, at: number, what: string): { value: string; next: number } {
  need(buf, at, 4, what);
  const len = buf.readUInt32BE(at);
  if (len > NBD_MAX_STRING) throw new NbdProtocolError(`${what}: string length ${len} exceeds ${NBD_MAX_STRING}`);
  need(buf, at + 4, len, what);
  return { value: buf.toString('utf8', at + 4, at + 4 + len), next: at + 4 + len };
}

// ---- handshake ------------------------------------------------------------

export function encodeServerGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(SERVER_GREETING_SIZE);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags & 0xffff, 16);
  return b;
}

/** Decode the 18-byte newstyle greeting; returns the handshake flags. */
export function decodeServerGreeting(buf: Buffer, at = 0): { handshakeFlags: number } {
  need(buf, at, SERVER_GREETING_SIZE, 'server greeting');
  const magic = buf.readBigUInt64BE(at);
  if (magic !== NBD_MAGIC) {
    throw new NbdProtocolError(`server greeting: bad magic 0x${magic.toString(16)} (not an NBD server)`);
  }
  const second = buf.readBigUInt64BE(at + 8);
  if (second === NBD_OLDSTYLE_MAGIC) {
    throw new NbdProtocolError('server greeting: old-style negotiation is not supported');
  }
  if (second !== NBD_IHAVEOPT) {
    throw new NbdProtocolError(`server greeting: bad magic 0x${second.toString(16)} after NBDMAGIC`);
  }
  return { handshakeFlags: buf.readUInt16BE(at + 16) };
}

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(CLIENT_FLAGS_SIZE);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

export function decodeClientFlags(buf: Buffer, at = 0): number {
  need(buf, at, CLIENT_FLAGS_SIZE, 'client flags');
  return buf.readUInt32BE(at);
}

// ---- option haggling ------------------------------------------------------

export interface OptionRequestHeader {
  option: number;
  length: number;
}

export function encodeOptionRequest(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(OPTION_REQUEST_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, OPTION_REQUEST_HEADER_SIZE);
  return b;
}

export function decodeOptionRequestHeader(buf: Buffer, at = 0): OptionRequestHeader {
  need(buf, at, OPTION_REQUEST_HEADER_SIZE, 'option request');
  const magic = buf.readBigUInt64BE(at);
  if (magic !== NBD_IHAVEOPT) {
    throw new NbdProtocolError(`option request: bad magic 0x${magic.toString(16)}`);
  }
  return { option: buf.readUInt32BE(at + 8), length: buf.readUInt32BE(at + 12) };
}

export interface OptionReplyHeader {
  option: number;
  reply: number;
  length: number;
}

export function encodeOptionReply(option: number, reply: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(NBD_OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(reply >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

export function decodeOptionReplyHeader(buf: Buffer, at = 0): OptionReplyHeader {
  need(buf, at, OPTION_REPLY_HEADER_SIZE, 'option reply');
  const magic = buf.readBigUInt64BE(at);
  if (magic !== NBD_OPT_REPLY_MAGIC) {
    throw new NbdProtocolError(`option reply: bad magic 0x${magic.toString(16)}`);
  }
  return {
    option: buf.readUInt32BE(at + 8),
    reply: buf.readUInt32BE(at + 12),
    length: buf.readUInt32BE(at + 16),
  };
}

/** Reply to NBD_OPT_EXPORT_NAME (no option-reply framing). */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : EXPORT_NAME_REPLY_ZEROES));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(transmissionFlags & 0xffff, 8);
  return b;
}

/** Payload of NBD_OPT_INFO / NBD_OPT_GO: export name and requested info types. */
export interface GoRequest {
  name: string;
  infos: number[];
}

export function encodeGoRequest(req: GoRequest): Buffer {
  const name = encodeString32(req.name);
  const b = Buffer.allocUnsafe(name.length + 2 + 2 * req.infos.length);
  name.copy(b, 0);
  b.writeUInt16BE(req.infos.length, name.length);
  req.infos.forEach((info, i) => b.writeUInt16BE(info, name.length + 2 + 2 * i));
  return b;
}

export function decodeGoRequest(buf: Buffer): GoRequest {
  const { value: name, next } = decodeString32(buf, 0, 'NBD_OPT_GO export name');
  need(buf, next, 2, 'NBD_OPT_GO info count');
  const count = buf.readUInt16BE(next);
  if (buf.length !== next + 2 + 2 * count) {
    throw new NbdProtocolError(`NBD_OPT_GO: payload length ${buf.length} does not match ${count} info requests`);
  }
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(buf.readUInt16BE(next + 2 + 2 * i));
  return { name, infos };
}

/** A decoded NBD_REP_INFO payload. */
export type InfoReply =
  | { type: typeof NBD_INFO_EXPORT; size: number; transmissionFlags: number }
  | { type: typeof NBD_INFO_NAME; name: string }
  | { type: typeof NBD_INFO_DESCRIPTION; description: string }
  | { type: typeof NBD_INFO_BLOCK_SIZE; minimum: number; preferred: number; maximum: number }
  | { type: number; unknown: Buffer };

export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(transmissionFlags & 0xffff, 10);
  return b;
}

export function encodeInfoName(name: string): Buffer {
  const s = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(2 + s.length);
  b.writeUInt16BE(NBD_INFO_NAME, 0);
  s.copy(b, 2);
  return b;
}

export function encodeInfoDescription(description: string): Buffer {
  const s = Buffer.from(description, 'utf8');
  const b = Buffer.alloc(2 + s.length);
  b.writeUInt16BE(NBD_INFO_DESCRIPTION, 0);
  s.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum >>> 0, 2);
  b.writeUInt32BE(preferred >>> 0, 6);
  b.writeUInt32BE(maximum >>> 0, 10);
  return b;
}

export function decodeInfoReply(buf: Buffer): InfoReply {
  need(buf, 0, 2, 'NBD_REP_INFO');
  const type = buf.readUInt16BE(0);
  switch (type) {
    case NBD_INFO_EXPORT:
      if (buf.length !== 12) throw new NbdProtocolError(`NBD_INFO_EXPORT: length ${buf.length}, expected 12`);
      return {
        type,
        size: readSafeU64(buf, 2, 'NBD_INFO_EXPORT size'),
        transmissionFlags: buf.readUInt16BE(10),
      };
    case NBD_INFO_NAME:
      return { type, name: buf.toString('utf8', 2) };
    case NBD_INFO_DESCRIPTION:
      return { type, description: buf.toString('utf8', 2) };
    case NBD_INFO_BLOCK_SIZE:
      if (buf.length !== 14) throw new NbdProtocolError(`NBD_INFO_BLOCK_SIZE: length ${buf.length}, expected 14`);
      return {
        type,
        minimum: buf.readUInt32BE(2),
        preferred: buf.readUInt32BE(6),
        maximum: buf.readUInt32BE(10),
      };
    default:
      return { type, unknown: buf.subarray(2) };
  }
}

/** NBD_REP_SERVER payload of NBD_OPT_LIST: export name and description. */
export function encodeServerReply(name: string, description = ''): Buffer {
  return Buffer.concat([encodeString32(name), Buffer.from(description, 'utf8')]);
}

export function decodeServerReply(buf: Buffer): { name: string; description: string } {
  const { value, next } = decodeString32(buf, 0, 'NBD_REP_SERVER');
  return { name: value, description: buf.toString('utf8', next) };
}

/** Payload of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

export function encodeMetaContextRequest(req: MetaContextRequest): Buffer {
  const parts = [encodeString32(req.exportName)];
  const count = Buffer.alloc(4);
  count.writeUInt32BE(req.queries.length, 0);
  parts.push(count);
  for (const q of req.queries) parts.push(encodeString32(q));
  return Buffer.concat(parts);
}

export function decodeMetaContextRequest(buf: Buffer): MetaContextRequest {
  const { value: exportName, next } = decodeString32(buf, 0, 'meta context request export name');
  need(buf, next, 4, 'meta context request query count');
  const count = buf.readUInt32BE(next);
  let at = next + 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    const q = decodeString32(buf, at, `meta context query ${i}`);
    queries.push(q.value);
    at = q.next;
  }
  if (at !== buf.length) {
    throw new NbdProtocolError(`meta context request: ${buf.length - at} trailing bytes`);
  }
  return { exportName, queries };
}

/** NBD_REP_META_CONTEXT payload: context id and name. */
export function encodeMetaContextReply(id: number, name: string): Buffer {
  const s = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + s.length);
  b.writeUInt32BE(id >>> 0, 0);
  s.copy(b, 4);
  return b;
}

export function decodeMetaContextReply(buf: Buffer): { id: number; name: string } {
  need(buf, 0, 4, 'NBD_REP_META_CONTEXT');
  return { id: buf.readUInt32BE(0), name: buf.toString('utf8', 4) };
}

// ---- transmission: requests -----------------------------------------------

export interface RequestHeader {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
}

/** Write a 28-byte request header into `out` at `at` (lets callers prepend it to a payload buffer). */
export function writeRequestHeader(out: Buffer, at: number, req: RequestHeader): void {
  out.writeUInt32BE(NBD_REQUEST_MAGIC, at);
  out.writeUInt16BE(req.flags & 0xffff, at + 4);
  out.writeUInt16BE(req.type & 0xffff, at + 6);
  out.writeBigUInt64BE(req.cookie, at + 8);
  out.writeBigUInt64BE(BigInt(req.offset), at + 16);
  out.writeUInt32BE(req.length >>> 0, at + 24);
}

export function encodeRequestHeader(req: RequestHeader): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  writeRequestHeader(b, 0, req);
  return b;
}

export function decodeRequestHeader(buf: Buffer, at = 0): RequestHeader {
  need(buf, at, REQUEST_HEADER_SIZE, 'request header');
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_REQUEST_MAGIC) {
    throw new NbdProtocolError(`request header: bad magic 0x${magic.toString(16)}`);
  }
  return {
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookie: buf.readBigUInt64BE(at + 8),
    offset: readSafeU64(buf, at + 16, 'request offset'),
    length: buf.readUInt32BE(at + 24),
  };
}

// ---- transmission: replies ------------------------------------------------

export interface SimpleReplyHeader {
  kind: 'simple';
  error: number;
  cookie: bigint;
}

export interface StructuredReplyHeader {
  kind: 'structured';
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

export type ReplyHeader = SimpleReplyHeader | StructuredReplyHeader;

export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_SIZE);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error >>> 0, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

export function encodeStructuredReplyHeader(h: Omit<StructuredReplyHeader, 'kind'>): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(h.flags & 0xffff, 4);
  b.writeUInt16BE(h.type & 0xffff, 6);
  b.writeBigUInt64BE(h.cookie, 8);
  b.writeUInt32BE(h.length >>> 0, 16);
  return b;
}

/** Size of the reply header starting at `at`, judged by its magic (needs 4 bytes). */
export function replyHeaderSize(buf: Buffer, at = 0): number {
  need(buf, at, 4, 'reply magic');
  const magic = buf.readUInt32BE(at);
  if (magic === NBD_SIMPLE_REPLY_MAGIC) return SIMPLE_REPLY_HEADER_SIZE;
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) return STRUCTURED_REPLY_HEADER_SIZE;
  throw new NbdProtocolError(`reply: bad magic 0x${magic.toString(16).padStart(8, '0')}`);
}

export function decodeReplyHeader(buf: Buffer, at = 0): ReplyHeader {
  const size = replyHeaderSize(buf, at);
  need(buf, at, size, 'reply header');
  if (size === SIMPLE_REPLY_HEADER_SIZE) {
    return { kind: 'simple', error: buf.readUInt32BE(at + 4), cookie: buf.readBigUInt64BE(at + 8) };
  }
  return {
    kind: 'structured',
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookie: buf.readBigUInt64BE(at + 8),
    length: buf.readUInt32BE(at + 16),
  };
}

// ---- structured reply chunk payloads --------------------------------------

/** NBD_REPLY_TYPE_OFFSET_DATA: u64 offset, then the data. Returns the 8-byte prefix. */
export function encodeOffsetDataPrefix(offset: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(offset), 0);
  return b;
}

export function encodeOffsetHole(offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeBigUInt64BE(BigInt(offset), 0);
  b.writeUInt32BE(length >>> 0, 8);
  return b;
}

export function decodeOffsetHole(buf: Buffer): { offset: number; length: number } {
  if (buf.length !== 12) throw new NbdProtocolError(`NBD_REPLY_TYPE_OFFSET_HOLE: length ${buf.length}, expected 12`);
  return { offset: readSafeU64(buf, 0, 'hole offset'), length: buf.readUInt32BE(8) };
}

export interface BlockStatusDescriptor {
  length: number;
  flags: number;
}

/** NBD_REPLY_TYPE_BLOCK_STATUS payload: context id, then (length u32, flags u32) pairs. */
export function encodeBlockStatus(contextId: number, descriptors: BlockStatusDescriptor[]): Buffer {
  const b = Buffer.allocUnsafe(4 + 8 * descriptors.length);
  b.writeUInt32BE(contextId >>> 0, 0);
  descriptors.forEach((d, i) => {
    b.writeUInt32BE(d.length >>> 0, 4 + 8 * i);
    b.writeUInt32BE(d.flags >>> 0, 8 + 8 * i);
  });
  return b;
}

export function decodeBlockStatus(buf: Buffer): { contextId: number; descriptors: BlockStatusDescriptor[] } {
  if (buf.length < 12 || (buf.length - 4) % 8 !== 0) {
    throw new NbdProtocolError(`NBD_REPLY_TYPE_BLOCK_STATUS: bad length ${buf.length}`);
  }
  const contextId = buf.readUInt32BE(0);
  const descriptors: BlockStatusDescriptor[] = [];
  for (let at = 4; at < buf.length; at += 8) {
    descriptors.push({ length: buf.readUInt32BE(at), flags: buf.readUInt32BE(at + 4) });
  }
  return { contextId, descriptors };
}

/** NBD_REPLY_TYPE_ERROR / _ERROR_OFFSET payload. */
export interface ErrorChunk {
  error: number;
  message: string;
  offset?: number;
}

export function encodeErrorChunk(error: number, message: string, offset?: number): Buffer {
  const msg = Buffer.from(message, 'utf8').subarray(0, 0xffff);
  const b = Buffer.alloc(6 + msg.length + (offset === undefined ? 0 : 8));
  b.writeUInt32BE(error >>> 0, 0);
  b.writeUInt16BE(msg.length, 4);
  msg.copy(b, 6);
  if (offset !== undefined) b.writeBigUInt64BE(BigInt(offset), 6 + msg.length);
  return b;
}

export function decodeErrorChunk(buf: Buffer, type: number): ErrorChunk {
  need(buf, 0, 6, 'error chunk');
  const error = buf.readUInt32BE(0);
  const msgLen = buf.readUInt16BE(4);
  const tail = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
  // The spec bounds the message by the chunk length; unknown error types may carry more fields after it.
  if (6 + msgLen + tail > buf.length) {
    throw new NbdProtocolError(`error chunk: message length ${msgLen} does not fit chunk length ${buf.length}`);
  }
  const message = buf.toString('utf8', 6, 6 + msgLen);
  if (tail) return { error, message, offset: readSafeU64(buf, 6 + msgLen, 'error offset') };
  return { error, message };
}
