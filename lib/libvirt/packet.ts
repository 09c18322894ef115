/**
 * Framing of libvirt RPC messages (virnetprotocol.x): each message is a
 * 4-byte big-endian length that counts itself, a 24-byte header
 * {program, version, procedure, type, serial, status}, then the XDR payload.
 */
import { XdrReader, XdrWriter } from './xdr.js';

/** Largest message, header and payload, not counting the length word. */
export const VIR_NET_MESSAGE_MAX = 16 * 1024 * 1024;
export const VIR_NET_MESSAGE_HEADER_SIZE = 24;
export const VIR_NET_MESSAGE_LEN_SIZE = 4;

export const MessageType = {
  CALL: 0,
  REPLY: 1,
  MESSAGE: 2,
  STREAM: 3,
  CALL_WITH_FDS: 4,
  REPLY_WITH_FDS: 5,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

export const MessageStatus = {
  OK: 0,
  ERROR: 1,
  CONTINUE: 2,
} as const;
export type MessageStatus = (typeof MessageStatus)[keyof typeof MessageStatus];

export interface PacketHeader {
  program: number;
  version: number;
  procedure: number;
  type: number;
  serial: number;
  status: number;
}

export interface Packet {
  header: PacketHeader;
  /** The XDR payload after the header. */
  body: Buffer;
}

/** A stream of bytes that does not frame into valid messages. */
export class PacketError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PacketError';
  }
}

export function encodePacket(header: PacketHeader, body: Buffer = Buffer.alloc(0)): Buffer {
  const total = VIR_NET_MESSAGE_LEN_SIZE + VIR_NET_MESSAGE_HEADER_SIZE + body.length;
  if (total - VIR_NET_MESSAGE_LEN_SIZE > VIR_NET_MESSAGE_MAX) {
    throw new PacketError(`message of ${total} bytes exceeds libvirt's limit of ${VIR_NET_MESSAGE_MAX}`);
  }
  const w = new XdrWriter(VIR_NET_MESSAGE_LEN_SIZE + VIR_NET_MESSAGE_HEADER_SIZE);
  w.uint(total)
    .uint(header.program)
    .uint(header.version)
    .int(header.procedure)
    .int(header.type)
    .uint(header.serial)
    .int(header.status);
  return Buffer.concat([w.finish(), body]);
}

export function decodeHeader(r: XdrReader): PacketHeader {
  return {
    program: r.uint(),
    version: r.uint(),
    procedure: r.int(),
    type: r.int(),
    serial: r.uint(),
    status: r.int(),
  };
}

/**
 * Cuts a byte stream into packets. Buffers at most one partial message
 * (bounded by VIR_NET_MESSAGE_MAX); a length outside the protocol's bounds
 * throws PacketError, since the stream can no longer be trusted.
 */
export class PacketDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  push(chunk: Buffer): Packet[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const packets: Packet[] = [];
    for (;;) {
      if (this.buffered < VIR_NET_MESSAGE_LEN_SIZE) break;
      const head = this.peek(VIR_NET_MESSAGE_LEN_SIZE);
      const total = head.readUInt32BE(0);
      if (total < VIR_NET_MESSAGE_LEN_SIZE + VIR_NET_MESSAGE_HEADER_SIZE) {
        throw new PacketError(`message length ${total} is shorter than a message header`);
      }
      if (total - VIR_NET_MESSAGE_LEN_SIZE > VIR_NET_MESSAGE_MAX) {
        throw new PacketError(`message length ${total} exceeds libvirt's limit of ${VIR_NET_MESSAGE_MAX}`);
      }
      if (this.buffered < total) break;
      const message = this.take(total);
      const r = new XdrReader(message, VIR_NET_MESSAGE_LEN_SIZE);
      const header = decodeHeader(r);
      packets.push({ header, body: message.subarray(VIR_NET_MESSAGE_LEN_SIZE + VIR_NET_MESSAGE_HEADER_SIZE) });
    }
    return packets;
  }

  /** Bytes of an incomplete message still waiting for the rest. */
  get pending(): number {
    return this.buffered;
  }

  private peek(n: number): Buffer {
    // Merge once so a split length word does not cost a copy per chunk.
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0].subarray(0, n);
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const message = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return message;
  }
}
