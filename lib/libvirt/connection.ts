/**
 * RpcConnection: one libvirt RPC conversation over a Transport. Calls get
 * increasing serials and may be many in flight; replies are matched by
 * serial, so they may come back in any order. Keepalive PINGs from the
 * daemon are answered with PONG; events (VIR_NET_MESSAGE of other programs)
 * are passed on as 'event' and otherwise ignored. When the transport dies,
 * every call in flight is rejected with a LibvirtError; nothing hangs.
 *
 * States: open -> closing (close() asked) -> closed, or open -> closed (lost).
 */
import { EventEmitter } from 'node:events';
import { LibvirtError, VIR_ERR_INVALID_CONN, VIR_FROM_RPC, invalidArg, rpcError } from './errors.js';
import {
  MessageStatus,
  MessageType,
  PacketDecoder,
  PacketError,
  encodePacket,
  type Packet,
  type PacketHeader,
} from './packet.js';
import {
  KEEPALIVE_PROGRAM,
  KEEPALIVE_PROTOCOL_VERSION,
  KeepaliveProcedure,
  QEMU_PROGRAM,
  QEMU_PROTOCOL_VERSION,
  REMOTE_PROGRAM,
  REMOTE_PROTOCOL_VERSION,
  procedureName,
} from './procedures.js';
import { readRemoteError } from './remote-types.js';
import type { Transport } from './transport.js';
import { XdrReader, XdrWriter } from './xdr.js';

export type ArgsEncoder = (w: XdrWriter) => void;
export type RetDecoder<T> = (r: XdrReader) => T;

interface PendingCall {
  name: string;
  program: number;
  procedure: number;
  decode: RetDecoder<unknown> | undefined;
  resolve: (value: unknown) => void;
  reject: (err: LibvirtError) => void;
}

export interface RpcConnectionEvents {
  /** The connection is gone; `error` is null after a close() we asked for. */
  close: [error: LibvirtError | null];
  /** A keepalive message arrived from the daemon. */
  keepalive: [kind: 'ping' | 'pong'];
  /** An asynchronous message (event) we do not handle. */
  event: [packet: Packet];
}

/** How long close() waits for the daemon to hang up before cutting the pipe. */
const CLOSE_GRACE_MS = 2000;

export class RpcConnection extends EventEmitter<RpcConnectionEvents> {
  private serial = 0;
  private readonly pending = new Map<number, PendingCall>();
  private readonly decoder = new PacketDecoder();
  private state: 'open' | 'closing' | 'closed' = 'open';
  private failure: LibvirtError | null = null;
  private lastReceived = Date.now();
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private readonly closedPromise: Promise<void>;
  private resolveClosed!: () => void;

  constructor(readonly transport: Transport) {
    super();
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve));
    const { readable, writable } = transport;
    readable.on('data', (chunk: Buffer) => this.onData(chunk));
    readable.on('end', () => this.onHangup());
    readable.on('close', () => this.onHangup());
    readable.on('error', (err: Error) => this.onTransportError(err));
    // A socket is both ends: listen for its errors once.
    if ((writable as object) !== (readable as object)) writable.on('error', (err: Error) => this.onTransportError(err));
  }

  get isOpen(): boolean {
    return this.state === 'open';
  }

  /** Calls in flight, awaiting their reply. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Calls a procedure of the remote program (0x20008086). */
  remote<T = void>(procedure: number, encode?: ArgsEncoder, decode?: RetDecoder<T>): Promise<T> {
    return this.call(REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, procedure, encode, decode);
  }

  /** Calls a procedure of the QEMU program (0x20008087). */
  qemu<T = void>(procedure: number, encode?: ArgsEncoder, decode?: RetDecoder<T>): Promise<T> {
    return this.call(QEMU_PROGRAM, QEMU_PROTOCOL_VERSION, procedure, encode, decode);
  }

  call<T = void>(
    program: number,
    version: number,
    procedure: number,
    encode?: ArgsEncoder,
    decode?: RetDecoder<T>,
  ): Promise<T> {
    const name = procedureName(program, procedure);
    if (this.state !== 'open') {
      const why = this.failure ? this.failure.message : 'the connection was closed';
      return Promise.reject(
        new LibvirtError({ code: VIR_ERR_INVALID_CONN, domain: VIR_FROM_RPC, message: `cannot call ${name}: ${why}`, procedure: name }),
      );
    }
    let packet: Buffer;
    const serial = this.nextSerial();
    try {
      const w = new XdrWriter();
      encode?.(w);
      packet = encodePacket({ program, version, procedure, type: MessageType.CALL, serial, status: MessageStatus.OK }, w.finish());
    } catch (err) {
      return Promise.reject(invalidArg(`invalid arguments for ${name}: ${(err as Error).message}`));
    }
    return new Promise<T>((resolve, reject) => {
      this.pending.set(serial, {
        name,
        program,
        procedure,
        decode,
        resolve: resolve as (value: unknown) => void,
        reject,
      });
      this.transport.writable.write(packet);
    });
  }

  /**
   * Sends a PING when the daemon has been quiet for `intervalSec`, and gives
   * the connection up after `count` such intervals without any message, as
   * libvirt's own client does. Only useful once the daemon said it supports
   * the keepalive program.
   */
  startKeepalive(intervalSec: number, count: number): void {
    if (this.keepaliveTimer || intervalSec <= 0 || this.state !== 'open') return;
    const intervalMs = intervalSec * 1000;
    this.keepaliveTimer = setInterval(() => {
      const quiet = Date.now() - this.lastReceived;
      if (quiet >= intervalMs * count) {
        this.fail(rpcError(`no keepalive response from libvirt at ${this.transport.description} for ${Math.round(quiet / 1000)} s; connection considered dead`));
      } else if (quiet >= intervalMs) {
        this.sendKeepalive(KeepaliveProcedure.PING);
      }
    }, intervalMs);
    // The timer alone must not keep a process alive.
    this.keepaliveTimer.unref();
  }

  /**
   * Ends the conversation: our side is closed, calls still in flight are
   * rejected, and the promise resolves once the pipe is gone. Idempotent.
   */
  async close(): Promise<void> {
    if (this.state === 'open') {
      this.state = 'closing';
      this.stopKeepalive();
      this.transport.end();
      const timer = setTimeout(() => this.finish(null), CLOSE_GRACE_MS);
      timer.unref();
      this.closedPromise.finally(() => clearTimeout(timer)).catch(() => {});
    }
    return this.closedPromise;
  }

  /** Cuts the pipe now; calls in flight are rejected with `reason`. */
  destroy(reason = 'connection destroyed by the client'): void {
    this.fail(rpcError(reason));
  }

  private nextSerial(): number {
    do {
      this.serial = (this.serial + 1) >>> 0;
    } while (this.pending.has(this.serial));
    return this.serial;
  }

  private onData(chunk: Buffer): void {
    if (this.state === 'closed') return;
    this.lastReceived = Date.now();
    let packets: Packet[];
    try {
      packets = this.decoder.push(chunk);
    } catch (err) {
      const msg = err instanceof PacketError ? err.message : String(err);
      this.fail(rpcError(`protocol error from libvirt at ${this.transport.description}: ${msg}`, err));
      return;
    }
    for (const packet of packets) this.dispatch(packet);
  }

  private dispatch(packet: Packet): void {
    const h = packet.header;
    if (h.program === KEEPALIVE_PROGRAM) {
      this.onKeepalive(h);
      return;
    }
    switch (h.type) {
      case MessageType.REPLY:
      case MessageType.REPLY_WITH_FDS:
        this.onReply(packet);
        return;
      case MessageType.MESSAGE:
        this.emit('event', packet);
        return;
      default:
        // Stream data or calls from the daemon: we open no streams and serve nothing.
        return;
    }
  }

  private onKeepalive(h: PacketHeader): void {
    if (h.version !== KEEPALIVE_PROTOCOL_VERSION || h.type !== MessageType.MESSAGE) return;
    if (h.procedure === KeepaliveProcedure.PING) {
      this.sendKeepalive(KeepaliveProcedure.PONG);
      this.emit('keepalive', 'ping');
    } else if (h.procedure === KeepaliveProcedure.PONG) {
      this.emit('keepalive', 'pong');
    }
  }

  private sendKeepalive(procedure: number): void {
    if (this.state !== 'open') return;
    this.transport.writable.write(
      encodePacket({
        program: KEEPALIVE_PROGRAM,
        version: KEEPALIVE_PROTOCOL_VERSION,
        procedure,
        type: MessageType.MESSAGE,
        serial: 0,
        status: MessageStatus.OK,
      }),
    );
  }

  private onReply(packet: Packet): void {
    const h = packet.header;
    const call = this.pending.get(h.serial);
    // A reply nobody waits for (a call already rejected locally): drop it.
    if (!call) return;
    this.pending.delete(h.serial);
    if (h.program !== call.program || h.procedure !== call.procedure) {
      call.reject(rpcError(`reply with serial ${h.serial} is for ${procedureName(h.program, h.procedure)}, expected ${call.name}`));
      return;
    }
    if (h.type === MessageType.REPLY_WITH_FDS) {
      call.reject(rpcError(`${call.name}: the reply passes file descriptors, which this client does not support`));
      return;
    }
    const r = new XdrReader(packet.body);
    if (h.status === MessageStatus.OK) {
      try {
        const value = call.decode ? call.decode(r) : undefined;
        r.assertEnd(`the reply to ${call.name}`);
        call.resolve(value);
      } catch (err) {
        call.reject(rpcError(`malformed reply to ${call.name}: ${(err as Error).message}`, err));
      }
    } else if (h.status === MessageStatus.ERROR) {
      try {
        call.reject(readRemoteError(r, call.name));
      } catch (err) {
        call.reject(rpcError(`${call.name} failed, and its error could not be decoded: ${(err as Error).message}`, err));
      }
    } else {
      call.reject(rpcError(`reply to ${call.name} has unexpected status ${h.status}`));
    }
  }

  private onHangup(): void {
    if (this.state === 'closed') return;
    if (this.state === 'closing') {
      this.finish(null);
      return;
    }
    const diag = this.transport.diagnostics();
    this.fail(rpcError(`connection to libvirt at ${this.transport.description} was closed by the other end${diag ? `: ${diag}` : ''}`));
  }

  private onTransportError(err: Error): void {
    if (this.state === 'closed') return;
    const diag = this.transport.diagnostics();
    this.fail(rpcError(`connection to libvirt at ${this.transport.description} failed: ${err.message}${diag ? ` (${diag})` : ''}`, err));
  }

  private fail(err: LibvirtError): void {
    if (this.state === 'closed') return;
    this.failure = err;
    this.finish(err);
  }

  private finish(err: LibvirtError | null): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.stopKeepalive();
    this.transport.destroy();
    const why = err ? err.message : 'the connection was closed';
    for (const call of this.pending.values()) {
      call.reject(
        new LibvirtError({
          code: err ? err.code : VIR_ERR_INVALID_CONN,
          domain: VIR_FROM_RPC,
          message: `${call.name} got no reply: ${why}`,
          procedure: call.name,
          cause: err ?? undefined,
        }),
      );
    }
    this.pending.clear();
    this.resolveClosed();
    this.emit('close', err);
  }

  private stopKeepalive(): void {
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
  }
}
