/**
 * SocketReader: "give me exactly n bytes" over a Readable (a net or TLS
 * socket) for the server's handshake and request loop. It uses the stream's
 * paused mode (`read(n)`), so the socket's own buffer is the only buffer and
 * TCP backpressure reaches the client whenever we stop asking. `detach()`
 * lets go of the socket so it can be wrapped in a TLSSocket after STARTTLS.
 */
import type { Readable } from 'node:stream';

/** The peer closed the connection (or it failed) while we waited for bytes. */
export class ConnectionClosedError extends Error {
  override name = 'ConnectionClosedError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export class SocketReader {
  private ended = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;
  private readonly onReadable = (): void => this.notify();
  private readonly onEnd = (): void => {
    this.ended = true;
    this.notify();
  };
  private readonly onError = (err: Error): void => {
    this.failure ??= err;
    this.ended = true;
    this.notify();
  };

  constructor(private readonly stream: Readable) {
    stream.on('readable', this.onReadable);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  /** Exactly `n` bytes, or ConnectionClosedError if the stream ends first. */
  async read(n: number, what: string): Promise<Buffer> {
    if (n === 0) return Buffer.alloc(0);
    for (;;) {
      if (this.failure === undefined) {
        const buf = this.stream.read(n) as Buffer | null;
        if (buf !== null) {
          if (buf.length === n) return buf;
          this.ended = true; // read() returns a short tail only at end of stream
        }
      }
      if (this.ended) {
        throw new ConnectionClosedError(`connection closed while reading ${what}`, { cause: this.failure });
      }
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  /** Read and drop `n` bytes in bounded pieces (payload of a refused request). */
  async skip(n: number, what: string): Promise<void> {
    const piece = 1024 * 1024;
    for (let left = n; left > 0; left -= piece) await this.read(Math.min(piece, left), what);
  }

  /** Make a pending read fail, e.g. when the server shuts down. */
  cancel(reason: string): void {
    this.failure ??= new Error(reason);
    this.ended = true;
    this.notify();
  }

  /** Stop listening to the stream (before handing it to TLS). */
  detach(): void {
    this.stream.off('readable', this.onReadable);
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
    this.stream.off('error', this.onError);
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}
