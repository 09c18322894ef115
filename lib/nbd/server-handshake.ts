/**
 * Server side of the fixed newstyle handshake (doc/proto.md, "Handshake"):
 * greeting, client flags, then option haggling until the client picks an
 * export (NBD_OPT_GO or the old NBD_OPT_EXPORT_NAME), aborts, or leaves.
 * Handles NBD_OPT_STARTTLS (upgrading the socket in place), LIST, INFO,
 * STRUCTURED_REPLY and the meta context options for `base:allocation`;
 * anything else gets NBD_REP_ERR_UNSUP so the client can carry on.
 */
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import type { Export } from './export.js';
import { blockSizeOf, transmissionFlags } from './server-export-info.js';
import type { ServerLogger } from './server-log.js';
import { SocketReader } from './server-reader.js';
import type { ServerTlsCredentials } from './server-tls.js';
import {
  BASE_ALLOCATION,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  CLIENT_FLAGS_SIZE,
  OPTION_REQUEST_HEADER_SIZE,
  decodeClientFlags,
  decodeGoRequest,
  decodeMetaContextRequest,
  decodeOptionRequestHeader,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeMetaContextReply,
  encodeOptionReply,
  encodeServerGreeting,
  encodeServerReply,
  optionName,
} from './protocol.js';

/** Context id we hand out for `base:allocation` (any non-zero value would do). */
export const BASE_ALLOCATION_CONTEXT_ID = 1;

/** Option payloads above this are refused by dropping the connection (no legitimate option is near it). */
const MAX_OPTION_DATA = 1024 * 1024;

/** Handshake flags the client may send back. */
const KNOWN_CLIENT_FLAGS = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

/** The exports a server offers, as the handshake sees them. */
export interface ExportCatalog {
  /** Canonical name and export for a client-given name ('' = the default export). */
  resolve(name: string): { name: string; export: Export } | undefined;
  list(): Array<{ name: string; export: Export }>;
}

export interface HandshakeContext {
  socket: Duplex;
  catalog: ExportCatalog;
  tls?: ServerTlsCredentials;
  maxPayload: number;
  log: ServerLogger;
  /** Who is talking (for log lines). */
  peer: string;
  isShuttingDown(): boolean;
  /** Called when STARTTLS replaces the socket, so the owner can close the right one. */
  onSocketChange(socket: Duplex): void;
}

/** Outcome of a successful handshake: the session enters transmission with this. */
export interface Negotiated {
  socket: Duplex;
  reader: SocketReader;
  exportName: string;
  export: Export;
  structuredReplies: boolean;
  /** Context id for base:allocation block status, if the client selected it. */
  allocationContextId?: number;
  transmissionFlags: number;
  tls: boolean;
}

/** The client broke the protocol badly enough that we hang up. */
export class HandshakeAbort extends Error {
  override name = 'HandshakeAbort';
}

interface OptionReplier {
  ack(): void;
  reply(type: number, data?: Buffer): void;
  error(type: number, message: string): void;
}

class Handshake {
  private socket: Duplex;
  private reader: SocketReader;
  private fixedNewstyle = false;
  private noZeroes = false;
  private tlsActive = false;
  private structuredReplies = false;
  private metaSelection: { exportName: string; allocation: boolean } | undefined;

  constructor(private readonly ctx: HandshakeContext) {
    this.socket = ctx.socket;
    this.reader = new SocketReader(ctx.socket);
  }

  async run(): Promise<Negotiated | null> {
    const handshakeFlags = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;
    this.socket.write(encodeServerGreeting(handshakeFlags));
    const clientFlags = decodeClientFlags(await this.reader.read(CLIENT_FLAGS_SIZE, 'client flags'));
    if ((clientFlags & ~KNOWN_CLIENT_FLAGS) !== 0) {
      throw new HandshakeAbort(`client sent unknown handshake flags 0x${clientFlags.toString(16)}`);
    }
    this.fixedNewstyle = (clientFlags & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
    this.noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;

    for (;;) {
      const header = decodeOptionRequestHeader(await this.reader.read(OPTION_REQUEST_HEADER_SIZE, 'option header'));
      const name = optionName(header.option);
      if (header.length > MAX_OPTION_DATA) {
        throw new HandshakeAbort(`${name} carries ${header.length} bytes of data; refusing`);
      }
      const data = await this.reader.read(header.length, `${name} data`);
      this.ctx.log('debug', `${this.ctx.peer}: ${name} (${data.length} bytes)`);
      const result = await this.handleOption(header.option, data);
      if (result !== undefined) return result;
    }
  }

  /** Returns a Negotiated to enter transmission, null to end quietly, undefined to keep haggling. */
  private async handleOption(option: number, data: Buffer): Promise<Negotiated | null | undefined> {
    const r = this.replier(option);
    if (option === NBD_OPT_EXPORT_NAME) return this.exportName(data);
    if (option === NBD_OPT_ABORT) {
      r.ack();
      return null;
    }
    if (this.ctx.isShuttingDown()) {
      r.error(NBD_REP_ERR_SHUTDOWN, 'server is shutting down');
      return undefined;
    }
    if (option === NBD_OPT_STARTTLS) return this.startTls(data, r);
    if (this.ctx.tls?.required && !this.tlsActive) {
      r.error(NBD_REP_ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
      return undefined;
    }
    switch (option) {
      case NBD_OPT_LIST:
        this.list(data, r);
        return undefined;
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) {
          r.error(NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        } else {
          this.structuredReplies = true;
          r.ack();
        }
        return undefined;
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        this.metaContext(option, data, r);
        return undefined;
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.infoOrGo(option, data, r);
      default:
        r.error(NBD_REP_ERR_UNSUP, `${optionName(option)} is not supported by this server`);
        return undefined;
    }
  }

  private replier(option: number): OptionReplier {
    const send = (type: number, payload?: Buffer): void => {
      this.socket.write(encodeOptionReply(option, type, payload));
    };
    return {
      ack: () => send(NBD_REP_ACK),
      reply: send,
      error: (type, message) => {
        this.ctx.log('debug', `${this.ctx.peer}: ${optionName(option)} refused: ${message}`);
        send(type, Buffer.from(message, 'utf8'));
      },
    };
  }

  private exportName(data: Buffer): Negotiated {
    // This option cannot fail politely: the spec says to hang up instead.
    if (this.ctx.isShuttingDown()) throw new HandshakeAbort('server is shutting down');
    if (this.ctx.tls?.required && !this.tlsActive) {
      throw new HandshakeAbort('NBD_OPT_EXPORT_NAME before STARTTLS on a TLS-only server');
    }
    const requested = data.toString('utf8');
    const found = this.ctx.catalog.resolve(requested);
    if (!found) throw new HandshakeAbort(`NBD_OPT_EXPORT_NAME: no export named '${requested}'`);
    const flags = transmissionFlags(found.export, this.structuredReplies);
    this.socket.write(encodeExportNameReply(found.export.size, flags, this.noZeroes));
    return this.negotiated(found.name, found.export, flags);
  }

  private negotiated(name: string, exp: Export, flags: number): Negotiated {
    const allocation = this.metaSelection?.exportName === name && this.metaSelection.allocation;
    return {
      socket: this.socket,
      reader: this.reader,
      exportName: name,
      export: exp,
      structuredReplies: this.structuredReplies,
      allocationContextId: allocation ? BASE_ALLOCATION_CONTEXT_ID : undefined,
      transmissionFlags: flags,
      tls: this.tlsActive,
    };
  }

  private async startTls(data: Buffer, r: OptionReplier): Promise<undefined> {
    const creds = this.ctx.tls;
    if (!creds) return void r.error(NBD_REP_ERR_POLICY, 'TLS is not configured on this server');
    if (!this.fixedNewstyle) return void r.error(NBD_REP_ERR_POLICY, 'TLS needs fixed newstyle negotiation');
    if (this.tlsActive) return void r.error(NBD_REP_ERR_INVALID, 'TLS is already active');
    if (data.length !== 0) return void r.error(NBD_REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
    r.ack();
    this.reader.detach();
    const secure = new tls.TLSSocket(this.socket, {
      isServer: true,
      secureContext: creds.context,
      requestCert: creds.verifyPeer,
      rejectUnauthorized: creds.verifyPeer,
    });
    this.socket = secure;
    this.ctx.onSocketChange(secure);
    await new Promise<void>((resolve, reject) => {
      const fail = (err: Error): void => {
        secure.off('secure', done);
        reject(new HandshakeAbort(`TLS handshake failed: ${err.message}`, { cause: err }));
      };
      const done = (): void => {
        secure.off('error', fail);
        resolve();
      };
      secure.once('secure', done);
      secure.once('error', fail);
    });
    this.reader = new SocketReader(secure);
    this.tlsActive = true;
    // The spec: no negotiation state survives STARTTLS.
    this.structuredReplies = false;
    this.metaSelection = undefined;
    this.ctx.log('debug', `${this.ctx.peer}: TLS established (${secure.getProtocol() ?? 'unknown version'})`);
    return undefined;
  }

  private list(data: Buffer, r: OptionReplier): void {
    if (data.length !== 0) return r.error(NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
    for (const { name, export: exp } of this.ctx.catalog.list()) {
      r.reply(NBD_REP_SERVER, encodeServerReply(name, exp.description ?? ''));
    }
    r.ack();
  }

  private metaContext(option: number, data: Buffer, r: OptionReplier): void {
    const setting = option === NBD_OPT_SET_META_CONTEXT;
    // A SET replaces the previous selection even when it fails.
    if (setting) this.metaSelection = undefined;
    if (setting && !this.structuredReplies) {
      return r.error(NBD_REP_ERR_INVALID, 'negotiate NBD_OPT_STRUCTURED_REPLY before NBD_OPT_SET_META_CONTEXT');
    }
    let request;
    try {
      request = decodeMetaContextRequest(data);
    } catch (err) {
      return r.error(NBD_REP_ERR_INVALID, (err as Error).message);
    }
    if (request.queries.length > 1024) return r.error(NBD_REP_ERR_TOO_BIG, 'too many meta context queries');
    const found = this.ctx.catalog.resolve(request.exportName);
    if (!found) return r.error(NBD_REP_ERR_UNKNOWN, `no export named '${request.exportName}'`);
    for (const q of request.queries) {
      if (!q.includes(':')) return r.error(NBD_REP_ERR_INVALID, `meta context query '${q}' lacks a namespace`);
    }
    let allocation: boolean;
    if (setting) {
      allocation = request.queries.includes(BASE_ALLOCATION);
    } else {
      // For listing, no query and the `base:` wildcard both mean "everything in base".
      allocation = request.queries.length === 0 || request.queries.some((q) => q === 'base:' || q === BASE_ALLOCATION);
    }
    if (allocation) {
      r.reply(NBD_REP_META_CONTEXT, encodeMetaContextReply(setting ? BASE_ALLOCATION_CONTEXT_ID : 0, BASE_ALLOCATION));
    }
    if (setting) this.metaSelection = { exportName: found.name, allocation };
    r.ack();
  }

  private infoOrGo(option: number, data: Buffer, r: OptionReplier): Negotiated | undefined {
    let request;
    try {
      request = decodeGoRequest(data);
    } catch (err) {
      r.error(NBD_REP_ERR_INVALID, (err as Error).message);
      return undefined;
    }
    const found = this.ctx.catalog.resolve(request.name);
    if (!found) {
      r.error(NBD_REP_ERR_UNKNOWN, `no export named '${request.name}'`);
      return undefined;
    }
    const exp = found.export;
    const flags = transmissionFlags(exp, this.structuredReplies);
    r.reply(NBD_REP_INFO, encodeInfoExport(exp.size, flags));
    if (request.infos.includes(NBD_INFO_NAME) || request.name !== found.name) {
      r.reply(NBD_REP_INFO, encodeInfoName(found.name));
    }
    if (request.infos.includes(NBD_INFO_DESCRIPTION) && exp.description) {
      r.reply(NBD_REP_INFO, encodeInfoDescription(exp.description));
    }
    // Always sent: it tells every client our maximum payload, harmless to those that did not ask.
    const bs = blockSizeOf(exp, this.ctx.maxPayload);
    r.reply(NBD_REP_INFO, encodeInfoBlockSize(bs.minimum, bs.preferred, bs.maximum));
    r.ack();
    if (option === NBD_OPT_INFO) return undefined;
    return this.negotiated(found.name, exp, flags);
  }
}

/**
 * Run the handshake on a fresh connection. Resolves with the negotiated
 * export, or null when the client aborted; rejects (HandshakeAbort,
 * ConnectionClosedError, NbdProtocolError) when the connection must be dropped.
 */
export function negotiate(ctx: HandshakeContext): Promise<Negotiated | null> {
  return new Handshake(ctx).run();
}
