/**
 * Client side of the fixed newstyle handshake: greeting, client flags,
 * optional STARTTLS, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT and
 * NBD_OPT_GO (asking for NBD_INFO_BLOCK_SIZE), falling back to
 * NBD_OPT_EXPORT_NAME for servers without NBD_OPT_GO. Also the listing
 * options (NBD_OPT_LIST, NBD_OPT_LIST_META_CONTEXT) and NBD_OPT_ABORT.
 * Every refusal becomes an NbdHandshakeError saying what was refused.
 */
import { NbdHandshakeError, NbdProtocolError } from './errors.js';
import type { NbdTlsOptions } from './tls.js';
import {
  EXPORT_NAME_REPLY_SIZE,
  EXPORT_NAME_REPLY_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAX_OPTION_LENGTH,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  OPTION_REPLY_HEADER_SIZE,
  SERVER_GREETING_SIZE,
  decodeInfoReply,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  decodeServerGreeting,
  decodeServerReply,
  encodeClientFlags,
  encodeGoRequest,
  encodeMetaContextRequest,
  encodeOptionRequest,
  isErrorReply,
  optionName,
  readSafeU64,
  replyName,
} from './protocol.js';

/** What the handshake needs from the connection. */
export interface HandshakeIO {
  readExact(n: number): Promise<Buffer>;
  send(bufs: Buffer[]): Promise<void>;
  upgradeTls(opts: NbdTlsOptions, host?: string): Promise<void>;
}

export interface BlockSizeConstraints {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface HandshakeOptions {
  exportName: string;
  /** Require TLS (STARTTLS) with these credentials. */
  tls?: NbdTlsOptions;
  /** TCP host name, for certificate checks. */
  host?: string;
  /** Negotiate structured replies (default true). */
  structuredReplies?: boolean;
  /** Meta contexts that must be selected; the handshake fails if one is not offered. */
  metaContexts?: string[];
}

export interface Negotiated {
  exportName: string;
  size: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  /** Selected meta contexts: name -> id. */
  metaContexts: Map<string, number>;
  /** Server's size constraints, if it sent NBD_INFO_BLOCK_SIZE. */
  blockSize?: BlockSizeConstraints;
  description?: string;
  tls: boolean;
  /** The server answered NBD_OPT_GO with ERR_UNSUP and we used NBD_OPT_EXPORT_NAME. */
  usedExportName: boolean;
}

interface OptionReply {
  reply: number;
  data: Buffer;
}

/** Server greeting state kept between the phases of a handshake. */
export interface Greeting {
  fixedNewstyle: boolean;
  noZeroes: boolean;
}

export async function exchangeGreeting(io: HandshakeIO): Promise<Greeting> {
  const { handshakeFlags } = decodeServerGreeting(await io.readExact(SERVER_GREETING_SIZE));
  const fixedNewstyle = (handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
  let clientFlags = 0;
  if (fixedNewstyle) clientFlags |= NBD_FLAG_C_FIXED_NEWSTYLE;
  if (noZeroes) clientFlags |= NBD_FLAG_C_NO_ZEROES;
  await io.send([encodeClientFlags(clientFlags)]);
  return { fixedNewstyle, noZeroes };
}

async function readReply(io: HandshakeIO, option: number): Promise<OptionReply> {
  const h = decodeOptionReplyHeader(await io.readExact(OPTION_REPLY_HEADER_SIZE));
  if (h.option !== option) {
    throw new NbdProtocolError(`reply for ${optionName(h.option)} while waiting for the reply to ${optionName(option)}`);
  }
  if (h.length > NBD_MAX_OPTION_LENGTH) {
    throw new NbdProtocolError(`${replyName(h.reply)} reply to ${optionName(option)} claims ${h.length} bytes`);
  }
  const data = h.length > 0 ? await io.readExact(h.length) : Buffer.alloc(0);
  return { reply: h.reply, data };
}

async function sendOption(io: HandshakeIO, option: number, data?: Buffer): Promise<void> {
  await io.send([encodeOptionRequest(option, data)]);
}

/** Message text of an error reply, for the user. */
function serverSays(r: OptionReply): string {
  const text = r.data.toString('utf8').replace(/[\x00-\x1f]+/g, ' ').trim();
  return text ? `: ${text}` : '';
}

function tlsRequired(option: number, r: OptionReply): NbdHandshakeError {
  return new NbdHandshakeError(
    `the NBD server requires TLS (${replyName(r.reply)} to ${optionName(option)}${serverSays(r)}); ` +
      'connect with nbds:// or nbds+unix:// and tls-certificates=DIR',
    { reply: replyName(r.reply), option: optionName(option) },
  );
}

function refused(option: number, r: OptionReply, what: string): NbdHandshakeError {
  if (r.reply === NBD_REP_ERR_TLS_REQD) return tlsRequired(option, r);
  return new NbdHandshakeError(`the NBD server refused ${what} (${replyName(r.reply)}${serverSays(r)})`, {
    reply: replyName(r.reply),
    option: optionName(option),
  });
}

function unexpected(option: number, r: OptionReply): NbdProtocolError {
  return new NbdProtocolError(`unexpected reply ${replyName(r.reply)} to ${optionName(option)}`);
}

/** NBD_OPT_STARTTLS, then the TLS handshake over the same socket. */
export async function startTlsOption(io: HandshakeIO, g: Greeting, tls: NbdTlsOptions, host?: string): Promise<void> {
  if (!g.fixedNewstyle) {
    throw new NbdHandshakeError('TLS was requested but the NBD server does not speak fixed newstyle negotiation, so it cannot do STARTTLS');
  }
  await sendOption(io, NBD_OPT_STARTTLS);
  const r = await readReply(io, NBD_OPT_STARTTLS);
  if (r.reply !== NBD_REP_ACK) {
    if (isErrorReply(r.reply)) throw refused(NBD_OPT_STARTTLS, r, 'TLS (NBD_OPT_STARTTLS)');
    throw unexpected(NBD_OPT_STARTTLS, r);
  }
  await io.upgradeTls(tls, host);
}

/** NBD_OPT_STRUCTURED_REPLY: true if the server agreed. */
export async function structuredRepliesOption(io: HandshakeIO): Promise<boolean> {
  await sendOption(io, NBD_OPT_STRUCTURED_REPLY);
  const r = await readReply(io, NBD_OPT_STRUCTURED_REPLY);
  if (r.reply === NBD_REP_ACK) return true;
  if (r.reply === NBD_REP_ERR_TLS_REQD) throw tlsRequired(NBD_OPT_STRUCTURED_REPLY, r);
  if (isErrorReply(r.reply)) return false;
  throw unexpected(NBD_OPT_STRUCTURED_REPLY, r);
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: contexts the server names, name -> id. */
async function metaContextOption(io: HandshakeIO, option: number, exportName: string, queries: string[]): Promise<Map<string, number>> {
  await sendOption(io, option, encodeMetaContextRequest({ exportName, queries }));
  const out = new Map<string, number>();
  for (;;) {
    const r = await readReply(io, option);
    if (r.reply === NBD_REP_META_CONTEXT) {
      const { id, name } = decodeMetaContextReply(r.data);
      out.set(name, id);
    } else if (r.reply === NBD_REP_ACK) {
      return out;
    } else if (isErrorReply(r.reply)) {
      const what = option === NBD_OPT_SET_META_CONTEXT ? `meta contexts ${queries.join(', ')}` : 'listing meta contexts';
      throw refused(option, r, `${what} for export '${exportName}'`);
    } else {
      throw unexpected(option, r);
    }
  }
}

export async function listMetaContexts(io: HandshakeIO, exportName: string, queries: string[] = []): Promise<string[]> {
  return [...(await metaContextOption(io, NBD_OPT_LIST_META_CONTEXT, exportName, queries)).keys()];
}

export async function listExports(io: HandshakeIO): Promise<Array<{ name: string; description: string }>> {
  await sendOption(io, NBD_OPT_LIST);
  const out: Array<{ name: string; description: string }> = [];
  for (;;) {
    const r = await readReply(io, NBD_OPT_LIST);
    if (r.reply === NBD_REP_SERVER) out.push(decodeServerReply(r.data));
    else if (r.reply === NBD_REP_ACK) return out;
    else if (isErrorReply(r.reply)) throw refused(NBD_OPT_LIST, r, 'listing exports (NBD_OPT_LIST)');
    else throw unexpected(NBD_OPT_LIST, r);
  }
}

/** Soft disconnect during option haggling. The server may close without replying; both are fine. */
export async function abortHandshake(io: HandshakeIO): Promise<void> {
  try {
    await sendOption(io, NBD_OPT_ABORT);
    await readReply(io, NBD_OPT_ABORT);
  } catch {
    /* a closed connection is an acceptable answer to NBD_OPT_ABORT */
  }
}

async function goOption(io: HandshakeIO, exportName: string): Promise<Omit<Negotiated, 'structuredReplies' | 'metaContexts' | 'tls'> | undefined> {
  await sendOption(io, NBD_OPT_GO, encodeGoRequest({ name: exportName, infos: [NBD_INFO_BLOCK_SIZE] }));
  let size: number | undefined;
  let transmissionFlags = 0;
  let blockSize: BlockSizeConstraints | undefined;
  let canonical = exportName;
  let description: string | undefined;
  for (;;) {
    const r = await readReply(io, NBD_OPT_GO);
    if (r.reply === NBD_REP_INFO) {
      const info = decodeInfoReply(r.data);
      if (info.type === NBD_INFO_EXPORT && 'size' in info) {
        size = info.size;
        transmissionFlags = info.transmissionFlags;
      } else if (info.type === NBD_INFO_BLOCK_SIZE && 'minimum' in info) {
        blockSize = { minimum: info.minimum, preferred: info.preferred, maximum: info.maximum };
      } else if (info.type === NBD_INFO_NAME && 'name' in info) {
        canonical = info.name;
      } else if (info.type === NBD_INFO_DESCRIPTION && 'description' in info) {
        description = info.description;
      }
      // Unknown info types are ignored, as the spec asks.
    } else if (r.reply === NBD_REP_ACK) {
      if (size === undefined) throw new NbdProtocolError('server accepted NBD_OPT_GO without sending NBD_INFO_EXPORT');
      return { exportName: canonical, size, transmissionFlags, blockSize, description, usedExportName: false };
    } else if (r.reply === NBD_REP_ERR_UNSUP) {
      return undefined; // old server: fall back to NBD_OPT_EXPORT_NAME
    } else if (r.reply === NBD_REP_ERR_UNKNOWN) {
      throw new NbdHandshakeError(`the NBD server has no export named '${exportName}' (${replyName(r.reply)}${serverSays(r)})`, {
        reply: replyName(r.reply),
        option: optionName(NBD_OPT_GO),
      });
    } else if (isErrorReply(r.reply)) {
      throw refused(NBD_OPT_GO, r, `export '${exportName}'`);
    } else {
      throw unexpected(NBD_OPT_GO, r);
    }
  }
}

async function exportNameOption(io: HandshakeIO, exportName: string, g: Greeting): Promise<{ size: number; transmissionFlags: number }> {
  await sendOption(io, NBD_OPT_EXPORT_NAME, Buffer.from(exportName, 'utf8'));
  let reply: Buffer;
  try {
    reply = await io.readExact(EXPORT_NAME_REPLY_SIZE + (g.noZeroes ? 0 : EXPORT_NAME_REPLY_ZEROES));
  } catch {
    // With NBD_OPT_EXPORT_NAME a server can only refuse by hanging up.
    throw new NbdHandshakeError(
      `the NBD server closed the connection after NBD_OPT_EXPORT_NAME: export '${exportName}' does not exist or requires TLS`,
      { option: optionName(NBD_OPT_EXPORT_NAME) },
    );
  }
  return { size: readSafeU64(reply, 0, 'export size'), transmissionFlags: reply.readUInt16BE(8) };
}

/** Run option haggling after the greeting, ending in transmission mode. */
export async function negotiate(io: HandshakeIO, g: Greeting, opts: HandshakeOptions): Promise<Negotiated> {
  const wantContexts = opts.metaContexts ?? [];
  let tls = false;
  if (opts.tls) {
    await startTlsOption(io, g, opts.tls, opts.host);
    tls = true;
  }
  if (!g.fixedNewstyle) {
    if (wantContexts.length) throw new NbdHandshakeError('meta contexts were requested but the NBD server does not speak fixed newstyle negotiation');
    const r = await exportNameOption(io, opts.exportName, g);
    return { exportName: opts.exportName, ...r, structuredReplies: false, metaContexts: new Map(), tls, usedExportName: true };
  }

  const structuredReplies = opts.structuredReplies === false && wantContexts.length === 0 ? false : await structuredRepliesOption(io);
  let metaContexts = new Map<string, number>();
  if (wantContexts.length) {
    if (!structuredReplies) {
      throw new NbdHandshakeError(`the NBD server refused structured replies, so meta contexts (${wantContexts.join(', ')}) cannot be used`, {
        option: optionName(NBD_OPT_STRUCTURED_REPLY),
      });
    }
    metaContexts = await metaContextOption(io, NBD_OPT_SET_META_CONTEXT, opts.exportName, wantContexts);
    const missing = wantContexts.filter((c) => !metaContexts.has(c));
    if (missing.length) {
      let offered = [...metaContexts.keys()];
      try {
        offered = await listMetaContexts(io, opts.exportName);
      } catch {
        /* the list is only for the message */
      }
      throw new NbdHandshakeError(
        `the NBD server does not offer meta context ${missing.map((m) => `'${m}'`).join(', ')} for export '${opts.exportName}'` +
          ` (offered: ${offered.length ? offered.join(', ') : 'none'})`,
        { option: optionName(NBD_OPT_SET_META_CONTEXT) },
      );
    }
  }

  const go = await goOption(io, opts.exportName);
  if (go) return { ...go, structuredReplies, metaContexts, tls };
  const r = await exportNameOption(io, opts.exportName, g);
  return { exportName: opts.exportName, ...r, structuredReplies, metaContexts, tls, usedExportName: true };
}
