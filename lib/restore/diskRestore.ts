/**
 * One disk's new image while it is being rebuilt: a qcow2 file made by
 * qemu-img (the source's virtual size and qcow2 options), served by a
 * qemu-nbd of ours on a unix socket in a private directory, written through
 * our NBD client. Each data file is applied by the pipeline
 *
 *     bytes -> ChecksumTap -> SparseParser -> Lz4StreamDecompress -> NbdWriter
 *
 * (progress counts the data bytes the server acknowledged).
 *
 * On the fresh image zero frames and unallocated ranges are simply not
 * written (the new qcow2 reads as zero there and stays thin); later files
 * (inc, diff) may zero ranges that hold older data, so for them zero
 * frames become NBD write-zeroes. The data file's adler32 is checked
 * against its `.chksum` when there is one.
 *
 * qemu-nbd runs with --cache=unsafe (flushes are no-ops, which is what
 * makes it fast); durability comes from close(): the client disconnects,
 * qemu-nbd closes the image and exits (status 0 required), then we fsync
 * the file ourselves. The image lives under a temporary name; the caller
 * moves it to its final name (commitImage) only after close() succeeded,
 * and discard() removes it, and the server, whatever state they are in.
 *
 * Restoring to a remote hypervisor (target.ts), the image is created there
 * by qemu-img over ssh and served by a qemu-nbd there on TCP
 * (lib/remote/remoteQemuNbd.ts); close() stops it (SIGTERM: it closes the
 * image cleanly), checks the image with qemu-img (the signalled qemu-nbd
 * leaves no exit status to go by) and syncs the file there.
 */
import { link, open, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { StreamMetadata } from '../format/metadata.js';
import { NO_LOANS, type BufferLoans } from '../bufferLender.js';
import { NbdClient } from '../nbd/client.js';
import { createImage } from '../qemu/qemuImg.js';
import { QemuNbdServer } from '../qemu/qemuNbd.js';
import { RemoteQemuNbd } from '../remote/remoteQemuNbd.js';
import type { RemoteImageServer } from './target.js';
import { SshHostFiles } from '../remote/sshHostFiles.js';
import { ChecksumTap } from '../../streams/ChecksumTap.js';
import { Lz4StreamDecompress } from '../../streams/Lz4StreamDecompress.js';
import { NbdWriter } from '../../streams/NbdWriter.js';
import { SparseParser } from '../../streams/SparseParser.js';
import { ChecksumMismatchError, RestoreError, TargetExistsError } from './errors.js';

/** Uncompressed data is written in pieces of this size... */
const PIECE_SIZE = 1024 * 1024;
/** ...with this many NBD writes outstanding. */
const WRITES_IN_FLIGHT = 8;

export interface DiskImageOptions {
  /** Disk target (vda), for messages and as the NBD export name. */
  disk: string;
  /** The image file to create (a temporary name). */
  path: string;
  virtualSize: number;
  /** `qemu-img create -o` options (cluster_size, compat...). */
  createOptions?: ReadonlyArray<readonly [string, string]>;
  /** -A: fully preallocate the image. */
  preallocate?: boolean;
  /** Unix socket for qemu-nbd, inside a private directory. */
  socket: string;
  /** Restore on this remote hypervisor instead (the socket is not used then). */
  remote?: RemoteImageServer;
}

/** The qemu-nbd serving the image: ours locally, or one on the remote host. */
interface ImageServer {
  finish(): Promise<void>;
  stop(): Promise<void>;
}

export interface ApplyOptions {
  /** The image still reads as zero everywhere (nothing applied yet): zero frames need no writes. */
  fresh: boolean;
  /** adler32 from the file's `.chksum`, checked once all bytes have passed. */
  expectedChecksum?: number;
  /** The metadata read when the restore was planned: the file must still say the same. */
  expectedMetadata?: StreamMetadata;
  /** Called with the uncompressed length of each data chunk written. */
  onData?: (bytes: number) => void;
  signal?: AbortSignal;
  /** The source's lender (FileSource): buffers go back to it once written. */
  loans?: BufferLoans;
}

export interface ApplyResult {
  metadata: StreamMetadata;
  dataBytes: number;
  zeroedBytes: number;
  checksum: number;
}

/** A data file could not be applied: its stream is damaged or the image refused a write. */
export class ApplyError extends RestoreError {
  override readonly name: string = 'ApplyError';
}

async function fsyncPath(path: string, flags = 'r'): Promise<void> {
  const handle = await open(path, flags);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export class DiskImage {
  private closed = false;

  private constructor(
    readonly disk: string,
    readonly path: string,
    readonly size: number,
    private readonly server: ImageServer,
    private readonly client: NbdClient,
    /** Makes the image durable once the server has closed it. */
    private readonly syncImage: () => Promise<void>,
    private readonly removeImage: () => Promise<void>,
  ) {}

  /** Create the image, start qemu-nbd on it and connect. On failure nothing is left behind. */
  static async create(opts: DiskImageOptions): Promise<DiskImage> {
    if (opts.remote) return DiskImage.createRemote(opts, opts.remote);
    const createOptions: Array<readonly [string, string]> = [...(opts.createOptions ?? [])];
    if (opts.preallocate) createOptions.push(['preallocation', 'full']);
    await createImage(opts.path, { format: 'qcow2', size: opts.virtualSize, options: createOptions });
    let server: QemuNbdServer | undefined;
    try {
      server = await QemuNbdServer.start({
        image: opts.path,
        format: 'qcow2',
        socket: opts.socket,
        exportName: opts.disk,
        cache: 'unsafe',
        discard: 'unmap',
      });
      const client = await connectWithRetry(opts.socket, opts.disk);
      if (client.size < opts.virtualSize) {
        await client.disconnect();
        throw new RestoreError(`qemu-nbd serves ${opts.path} with ${client.size} bytes, expected ${opts.virtualSize}`);
      }
      return new DiskImage(opts.disk, opts.path, client.size, server, client, () => fsyncPath(opts.path), () => rm(opts.path, { force: true }));
    } catch (error) {
      await server?.stop();
      await rm(opts.path, { force: true });
      throw error;
    }
  }

  /** create() on a remote hypervisor: qemu-img and qemu-nbd run there, our client connects over TCP. */
  private static async createRemote(opts: DiskImageOptions, remote: RemoteImageServer): Promise<DiskImage> {
    const files = new SshHostFiles(remote.ssh);
    const createOptions: Array<readonly [string, string]> = [...(opts.createOptions ?? [])];
    if (opts.preallocate) createOptions.push(['preallocation', 'full']);
    await files.createImage(opts.path, { format: 'qcow2', size: opts.virtualSize, options: createOptions });
    let server: RemoteQemuNbd | undefined;
    let client: NbdClient | undefined;
    try {
      server = await RemoteQemuNbd.start(remote.ssh, {
        image: opts.path,
        format: 'qcow2',
        exportName: opts.disk,
        bind: remote.bind,
        port: remote.port,
        cache: 'unsafe',
        discard: 'unmap',
        ...(remote.tlsCertDir !== undefined ? { tlsCertDir: remote.tlsCertDir } : {}),
      });
      try {
        const tls = remote.tlsCertDir !== undefined ? { tls: true, tlsCertificates: remote.tlsCertDir } : { tls: false };
        client = await NbdClient.connect({ transport: 'tcp', host: remote.bind, port: remote.port, exportName: opts.disk, ...tls }, {});
      } catch (error) {
        throw new RestoreError(`Cannot connect to qemu-nbd on ${remote.ssh.description} at ${remote.bind}:${remote.port} for ${opts.path}: ${(error as Error).message}`, {
          cause: error,
        });
      }
      if (client.size < opts.virtualSize) {
        throw new RestoreError(`qemu-nbd on ${remote.ssh.description} serves ${opts.path} with ${client.size} bytes, expected ${opts.virtualSize}`);
      }
      const durable = async (): Promise<void> => {
        await files.checkImage(opts.path, 'qcow2');
        await files.sync(opts.path);
      };
      return new DiskImage(opts.disk, opts.path, client.size, server, client, durable, () => files.remove(opts.path));
    } catch (error) {
      client?.destroy();
      await server?.stop();
      await files.remove(opts.path).catch(() => undefined);
      throw error;
    }
  }

  /** Apply one data file's stream to the image. */
  async apply(source: Readable, file: string, opts: ApplyOptions): Promise<ApplyResult> {
    const tap = new ChecksumTap();
    const loans = opts.loans ?? NO_LOANS;
    // 1 MiB pieces x 8 writes in flight: as fast as bigger ones into qemu-nbd, and memory stays small.
    // LZ4 frames pass in parts and are decoded in 1 MiB pieces: memory stays the same whatever the frames' size.
    const parser = new SparseParser({ maxPieceSize: PIECE_SIZE, loans, lz4Parts: true });
    const decompress = new Lz4StreamDecompress({ pieceSize: PIECE_SIZE, loans });
    // A written piece is a view of the source's buffer, a piece the parser joined, or a decoded piece: each owner takes back its own.
    // Progress comes from here too: a stage counting on the way would hold four more pieces in its queues.
    const onWritten = (data: Buffer): void => {
      parser.release(data);
      decompress.release(data);
      opts.onData?.(data.length);
    };
    const writer = new NbdWriter(this.client, { targetIsZero: opts.fresh, inFlight: WRITES_IN_FLIGHT, onWritten });
    let mismatch: string | undefined;
    parser.once('metadata', (m: StreamMetadata) => {
      const e = opts.expectedMetadata;
      if (e && (m.diskName !== e.diskName || m.checkpointName !== e.checkpointName || m.date !== e.date)) {
        mismatch = `${file} changed since the restore was planned (its metadata now says disk ${m.diskName}, checkpoint ${m.checkpointName}, date ${m.date})`;
        parser.destroy(new ApplyError(mismatch));
      } else if (m.virtualSize > this.size) {
        mismatch = `${file} is for a disk of ${m.virtualSize} bytes, larger than the image being restored (${this.size} bytes)`;
        parser.destroy(new ApplyError(mismatch));
      }
    });
    try {
      await pipeline(source, tap, parser, decompress, writer, opts.signal ? { signal: opts.signal } : {});
    } catch (error) {
      if (error instanceof RestoreError) throw error;
      const err = error as Error;
      if (err.name === 'AbortError') throw err;
      throw new ApplyError(`${file}: ${err.message}`, { cause: err });
    }
    if (opts.expectedChecksum !== undefined && tap.checksum !== opts.expectedChecksum) {
      throw new ChecksumMismatchError(file, opts.expectedChecksum, tap.checksum);
    }
    return { metadata: parser.metadata!, dataBytes: writer.bytesWritten, zeroedBytes: writer.bytesZeroed, checksum: tap.checksum };
  }

  /** Disconnect, let qemu-nbd close the image and exit cleanly, then fsync the image: it is complete and on disk. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.client.disconnect();
      await this.server.finish();
    } catch (error) {
      await this.server.stop();
      throw error;
    }
    await this.syncImage();
  }

  /** Stop everything and remove the image. Never throws. */
  async discard(): Promise<void> {
    this.closed = true;
    this.client.destroy();
    await this.server.stop();
    await this.removeImage().catch(() => undefined);
  }
}

/** qemu-nbd creates its socket just before it listens: a refused first connection is retried briefly. */
async function connectWithRetry(socket: string, exportName: string): Promise<NbdClient> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await NbdClient.connect({ socket }, { exportName });
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? ((error as Error).cause as NodeJS.ErrnoException | undefined)?.code;
      if (attempt >= 20 || (code !== 'ECONNREFUSED' && code !== 'ENOENT')) throw error;
      await sleep(25);
    }
  }
}

/**
 * Move a complete image (or any restored file) from its temporary name to
 * its final one, then fsync the directory so the new name is durable.
 * Without `overwrite`, an existing file under the final name is refused
 * (atomically: link() fails if the name exists) and the temporary file is
 * left for the caller to remove.
 */
export async function commitFile(temp: string, final: string, options: { overwrite?: boolean } = {}): Promise<void> {
  if (options.overwrite) {
    await rename(temp, final);
  } else {
    try {
      await link(temp, final);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new TargetExistsError(`${final} exists already; not overwriting it (use --overwrite to replace it)`);
      }
      throw error;
    }
    await unlink(temp);
  }
  await fsyncPath(dirname(final));
}

/** True if `path` exists (any kind of file). */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
