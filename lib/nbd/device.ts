/**
 * NbdBlockDevice: what the stream stages need from an NBD export, so they
 * work the same over one connection (NbdClient) or several (NbdPool).
 */
import type { BlockStatusResult, WriteOptions, WriteZeroesOptions } from './client.js';

export interface NbdBlockDevice {
  /** Export size in bytes. */
  readonly size: number;
  readonly maxRequestSize: number;
  readonly minimumBlockSize: number;
  readonly canFlush: boolean;
  readonly canWriteZeroes: boolean;
  /** Requests sent and not yet answered (over all connections). */
  readonly inFlight: number;
  canMetaContext(name: string): boolean;
  /** `length` bytes at `offset`; with `into`, landing in (and returning a view of) that buffer. */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void>;
  writeZeroes(offset: number, length: number, opts?: WriteZeroesOptions): Promise<void>;
  flush(): Promise<void>;
  blockStatusRange(offset: number, length: number): Promise<BlockStatusResult>;
}
