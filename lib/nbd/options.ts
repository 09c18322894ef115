/**
 * Public option and result types of the NBD client (NbdClient, NbdPool).
 */
import type { NbdTlsOptions } from './tls.js';
import type { NbdUri } from './uri.js';

export type NbdClientState = 'handshake' | 'transmission' | 'closing' | 'dead';

/** Where to connect: an NBD URI (string or parsed), a unix socket, or a TCP address. */
export type NbdTarget = string | NbdUri | { socket: string } | { host: string; port?: number };

export interface NbdClientOptions {
  /** Export name; overrides the URI's. Default: the URI's, or '' (the default export). */
  exportName?: string;
  /**
   * Meta contexts to select, e.g. ['base:allocation', 'qemu:dirty-bitmap:b0'].
   * The handshake fails with NbdHandshakeError if the server does not offer one.
   */
  metaContexts?: string[];
  /** Negotiate structured replies (default true; forced when meta contexts are asked). */
  structuredReplies?: boolean;
  /**
   * TLS: `true` or options to require STARTTLS; `false` to refuse it even for nbds URIs.
   * Default: what the URI says (nbds schemes, with its tls-certificates).
   */
  tls?: boolean | NbdTlsOptions;
  /** Give up the handshake after this many milliseconds (default 30000). */
  handshakeTimeout?: number;
}

export interface WriteOptions {
  /** NBD_CMD_FLAG_FUA: reply only once the data is on stable storage. */
  fua?: boolean;
}

export interface WriteZeroesOptions extends WriteOptions {
  /** NBD_CMD_FLAG_NO_HOLE: allocate, do not punch a hole. */
  noHole?: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP unless zeroing is faster than writing. */
  fastZero?: boolean;
}

/** One block status extent of one meta context, with an absolute offset. */
export interface BlockStatusExtent {
  offset: number;
  length: number;
  flags: number;
}

/** Block status answer: extents per meta context name, in offset order. */
export type BlockStatusResult = Map<string, BlockStatusExtent[]>;
