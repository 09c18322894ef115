/**
 * What a restore, dump or verify is asked to do (the CLI's flags, typed),
 * what it needs from its caller, and what it reports back.
 */
import type { Readable, Writable } from 'node:stream';
import type { Logger } from '../cli/logger.js';

export type RestoreAction = 'restore' | 'dump' | 'verify';

export interface RestoreOptions {
  action: RestoreAction;
  /** Backup set: a directory, a zip file, or `-` for a zip read from `stdin`. */
  input: string;
  /** Target directory for the restored images and config (restore only). */
  output: string;
  /** Stop after this checkpoint, or after the diff with this ident. */
  until?: string;
  /** Apply exactly these data files (names in the set), in this order. */
  sequence?: string[];
  /** Only this disk (target dev name). */
  disk?: string;
  /** Copy raw-format disks as they are (and keep them in an adjusted config). */
  raw?: boolean;
  /** Write an adjusted domain config for the restored images. */
  adjustConfig?: boolean;
  /** Define the restored domain in libvirt (implies adjustConfig). */
  define?: boolean;
  /** File name of the domain config written to the output directory (default vmconfig.xml). */
  configFile?: string;
  /** Name of the restored domain (default restore_<name>). */
  name?: string;
  /** Fully preallocate the restored qcow2 images. */
  preallocate?: boolean;
  /** Replace images that exist under the final names. */
  overwrite?: boolean;
  /**
   * libvirt URI for --define (default qemu:///system); when its daemon is on
   * another host, the restore writes there (lib/restore/target.ts).
   */
  uri?: string;
  /** libvirt login (SASL) for `uri`, when its daemon asks for one. */
  credentials?: { username?: string; password: string };
  /** Remote restores: ssh login (default: the URI's user and port, its ?keyfile=). */
  sshUser?: string;
  sshPort?: number;
  sshPrivateKey?: string;
  /** Remote restores: qemu-nbd's TCP port there (default 10809) and address (default: the host name libvirtd reports). */
  nbdPort?: number;
  /** --tls: the remote qemu-nbd serves with TLS; certificates (server side there, CA and client here) in `tlsCert`. */
  tls?: boolean;
  tlsCert?: string;
  nbdIp?: string;
  /** Where `-i -` reads from (default process.stdin). */
  stdin?: Readable;
  /** Where dump writes its JSON (default process.stdout). */
  stdout?: Writable;
  /** Directory for the private work directory (sockets, spooled entries); default os.tmpdir(). */
  tempDir?: string;
  signal?: AbortSignal;
}

/** A progress display for one task (the CLI's bar, or nothing). */
export interface ProgressSink {
  update(bytes: number): void;
  done(): void;
}

export interface RestoreContext {
  logger: Logger;
  /** Makes a progress display; default none. */
  progress?: (label: string, total: number) => ProgressSink;
}

export interface RestoredImage {
  disk: string;
  path: string;
  format: 'qcow2' | 'raw';
  /** Data files applied, in order (for a raw copy, the one file copied). */
  files: string[];
}

export interface RestoreResult {
  action: RestoreAction;
  /** restore: the images written. */
  images: RestoredImage[];
  /** restore: the domain config written to the output directory. */
  configFile?: string;
  /** restore with --define: the name of the domain defined. */
  domain?: string;
  /** dump: each data file's metadata, as stored. */
  metadata?: Record<string, unknown>[];
  /** verify: files whose checksum matched, and files without a .chksum. */
  verified?: string[];
  unchecked?: string[];
}

export function noProgress(): ProgressSink {
  return { update: () => {}, done: () => {} };
}
