/**
 * A deliberately naive reader of sparse-stream files (DESIGN.md, stream
 * version 2), for tests that check what Debian's virtnbdbackup writes. It
 * takes the whole file as one Buffer and shares no code with lib/format,
 * so it can serve as a second opinion on virtnbd's own parser.
 */

export type FrameKind = 'meta' | 'data' | 'zero' | 'stop' | 'comp';

export interface PeekFrame {
  kind: FrameKind;
  /** Start and length from the header (for data: the uncompressed range). */
  offset: number;
  length: number;
  /** Where the 40-byte header starts in the file. */
  at: number;
  /** Payload bytes in the file after the header (compressed size for compressed data). */
  payloadSize: number;
}

export interface StreamPeek {
  /** The first frame header, 40 bytes of ASCII incl. `\r\n`. */
  firstHeader: string;
  metaText: string;
  meta: Record<string, unknown>;
  frames: PeekFrame[];
  /** Compressed streams: the JSON text of the trailer and its parsed list. */
  trailerText?: string;
  trailer?: (number | Record<string, number[]>)[];
}

const HEADER = /^(meta|data|zero|stop|comp) ([0-9a-f]{16}) ([0-9a-f]{16})\r\n$/;
const HEADER_SIZE = 40;

function header(buf: Buffer, at: number): { kind: FrameKind; offset: number; length: number } {
  const text = buf.toString('latin1', at, at + HEADER_SIZE);
  const m = HEADER.exec(text);
  if (!m) throw new Error(`no frame header at byte ${at}: ${JSON.stringify(text)}`);
  return { kind: m[1] as FrameKind, offset: parseInt(m[2]!, 16), length: parseInt(m[3]!, 16) };
}

function expectCrLf(buf: Buffer, at: number): void {
  if (buf[at] !== 0x0d || buf[at + 1] !== 0x0a) throw new Error(`expected \\r\\n at byte ${at}`);
}

export function peekStream(buf: Buffer): StreamPeek {
  const first = header(buf, 0);
  if (first.kind !== 'meta') throw new Error(`stream starts with ${first.kind}, not meta`);
  const metaText = buf.toString('utf8', HEADER_SIZE, HEADER_SIZE + first.length);
  expectCrLf(buf, HEADER_SIZE + first.length);
  const meta = JSON.parse(metaText) as Record<string, unknown>;
  const compressed = meta.compressed !== false && meta.compressed !== undefined;

  let trailerText: string | undefined;
  let trailer: StreamPeek['trailer'];
  if (compressed) {
    // The trailer sits behind the stop frame: JSON, \r\n, then `comp 0 <json length>\r\n` at the very end.
    const comp = header(buf, buf.length - HEADER_SIZE);
    if (comp.kind !== 'comp') throw new Error(`compressed stream does not end with a comp frame`);
    const jsonEnd = buf.length - HEADER_SIZE - 2;
    expectCrLf(buf, jsonEnd);
    trailerText = buf.toString('utf8', jsonEnd - comp.length, jsonEnd);
    trailer = JSON.parse(trailerText) as StreamPeek['trailer'];
  }

  const frames: PeekFrame[] = [{ ...first, at: 0, payloadSize: first.length }];
  let at = HEADER_SIZE + first.length + 2;
  let sizeIndex = 0;
  for (;;) {
    const h = header(buf, at);
    let payloadSize = 0;
    if (h.kind === 'data') {
      if (compressed) {
        const entry = trailer![sizeIndex++];
        if (entry === undefined) throw new Error(`trailer has no size for the data frame at byte ${at}`);
        payloadSize = typeof entry === 'number' ? entry : Object.values(entry)[0]!.reduce((a, b) => a + b, 0);
      } else {
        payloadSize = h.length;
      }
    }
    frames.push({ ...h, at, payloadSize });
    if (h.kind === 'stop') break;
    at += HEADER_SIZE;
    if (h.kind === 'data') {
      at += payloadSize;
      expectCrLf(buf, at);
      at += 2;
    }
  }
  return { firstHeader: buf.toString('latin1', 0, HEADER_SIZE), metaText, meta, frames, trailerText, trailer };
}
