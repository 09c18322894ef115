/**
 * Typed errors of the NBD layer. Every failure a caller can meet is one of
 * these, so callers can branch on the class (and on `errno` / `code`) instead
 * of parsing messages.
 *
 * - NbdProtocolError: the peer sent bytes that break the protocol (bad magic,
 *   unknown cookie, truncated or oversized chunk). The connection is unusable.
 * - NbdHandshakeError: the server refused something during option haggling
 *   (no such export, TLS required, meta context not offered...). `reply`
 *   holds the NBD_REP_ERR_* name when the server sent one.
 * - NbdError: a transmission command failed on the server; carries the
 *   server's errno (EIO, ENOSPC...), the command and the offset.
 * - NbdConnectionError: the connection was lost or closed while requests
 *   were in flight, or a call was made on a dead connection.
 */

export class NbdProtocolError extends Error {
  override name = 'NbdProtocolError';
  constructor(message: string) {
    super(message);
  }
}

export class NbdHandshakeError extends Error {
  override name = 'NbdHandshakeError';
  /** NBD_REP_ERR_* name the server answered with, if any (e.g. 'NBD_REP_ERR_UNKNOWN'). */
  readonly reply?: string;
  /** The option that was refused (e.g. 'NBD_OPT_GO'). */
  readonly option?: string;
  constructor(message: string, opts: { reply?: string; option?: string; cause?: unknown } = {}) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.reply = opts.reply;
    this.option = opts.option;
  }
}

export class NbdError extends Error {
  override name = 'NbdError';
  /** NBD error number as sent by the server (5 = EIO, 28 = ENOSPC...). */
  readonly errno: number;
  /** Its name: EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN, or E<number>. */
  readonly code: string;
  /** Command that failed, e.g. 'NBD_CMD_READ'. */
  readonly command: string;
  readonly offset: number;
  readonly length: number;
  /** Message text of a structured error chunk, if the server sent one. */
  readonly serverMessage?: string;
  constructor(opts: {
    errno: number;
    code: string;
    command: string;
    offset: number;
    length: number;
    serverMessage?: string;
  }) {
    const where = `offset ${opts.offset} length ${opts.length}`;
    const why = opts.serverMessage ? `: ${opts.serverMessage}` : '';
    super(`${opts.command} failed with ${opts.code} at ${where}${why}`);
    this.errno = opts.errno;
    this.code = opts.code;
    this.command = opts.command;
    this.offset = opts.offset;
    this.length = opts.length;
    this.serverMessage = opts.serverMessage;
  }
}

export class NbdConnectionError extends Error {
  override name = 'NbdConnectionError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * The caller asked for something the connection cannot do: a command the
 * server did not advertise (trim on an export without NBD_FLAG_SEND_TRIM),
 * a range outside the export, a request longer than the maximum request
 * size, or a call in the wrong state. Nothing was sent to the server.
 */
export class NbdUsageError extends Error {
  override name = 'NbdUsageError';
  constructor(message: string) {
    super(message);
  }
}
