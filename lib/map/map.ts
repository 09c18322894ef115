/**
 * map(): serve a backup chain over NBD, what `virtnbdmap` does. The data
 * files are scanned and indexed (chains.ts), each disk's chain becomes a
 * ChainExport (read-only) or a CowOverlay over one (writable, the default,
 * as virtnbdmap's nbdkit cow filter: changes are discarded at the end), and
 * our NbdServer serves it, on TCP (virtnbdmap's 127.0.0.1:10809) or a unix
 * socket. Then, as asked: attach it to a kernel NBD device (device.ts),
 * or boot the backed-up VM from it (boot.ts), or just serve it.
 *
 * It returns a Mapping; close() undoes everything in reverse order (domain,
 * device, server, overlays, work directory). A failure while setting up
 * undoes what was done before it is thrown. The backup files are only
 * ever opened read-only.
 *
 *     const m = await map({ files: ['/backup/vda.full.data', '/backup/vda.inc.virtnbdbackup.1.data'], listen: { socketPath: '/run/vda.sock' }, device: false }, { logger });
 *     // qemu-img compare 'nbd+unix:///sda?socket=/run/vda.sock' restored.qcow2
 *     await m.close();
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import type { Logger } from '../cli/logger.js';
import { parseDataFileName } from '../format/naming.js';
import type { Export } from '../nbd/export.js';
import { NbdServer, type ListenTarget, type ServerAddress } from '../nbd/server.js';
import { bootInstant, type BootedDomain } from './boot.js';
import { ChainExport } from './chainExport.js';
import { loadChains, type LoadedChain } from './chains.js';
import { connectDevice, type DeviceConnection } from './device.js';
import { MapError } from './errors.js';
import { CowOverlay } from './overlay.js';
import { PieceCache, type PieceCacheOptions } from './pieceCache.js';
import { exportUri } from './usage.js';

export interface MapOptions {
  /** Data files, or backup-set directories (all their data files). */
  files: readonly string[];
  /** Export name of a plain mapping (default `sda`, as virtnbdmap); with boot, exports are named by disk. */
  exportName?: string;
  /** Where to listen: default 127.0.0.1:10809, with boot a unix socket in the work directory. */
  listen?: ListenTarget;
  /** Kernel NBD device to attach (default /dev/nbd0); false: never attach one. Ignored with boot. */
  device?: string | false;
  /** Serve read-only, without a copy-on-write overlay. */
  readOnly?: boolean;
  /** Start the backed-up VM from the mapped disks (instant recovery). */
  boot?: boolean;
  /** Name of the instant domain (default instant_<name>). */
  name?: string;
  /** libvirt URI for boot (default qemu:///system). */
  uri?: string;
  /** Where the private work directory goes (default os.tmpdir()). */
  tempDir?: string;
  cache?: PieceCacheOptions;
  /** LZ4 piece size of compressed backups without content sizes (default 32 MiB). */
  unitSize?: number;
}

export interface MapContext {
  logger: Logger;
}

export interface MappedDisk {
  disk: string;
  exportName: string;
  /** nbd:// or nbd+unix:// URI of the export. */
  uri: string;
  size: number;
  /** The data files, in chain order. */
  files: string[];
  checkpoint: string;
  writable: boolean;
  /** The copy-on-write overlay file of a writable mapping. */
  overlay?: string;
}

export interface Mapping {
  readonly disks: readonly MappedDisk[];
  readonly address: ServerAddress;
  /** The kernel device the export is attached to, when it is. */
  readonly device?: string;
  /** Why no device was attached (a plain mapping without one). */
  readonly deviceProblem?: string;
  /** The instant-recovery domain, with boot. */
  readonly domain?: BootedDomain;
  /** Private work directory (overlays, default socket); removed by close(). */
  readonly workDir: string;
  /** Resolves, with a reason, if the mapping ends by itself (the booted domain stopped). Never for plain mappings. */
  readonly ended: Promise<string>;
  close(): Promise<void>;
}

/**
 * Read bytes a connection may have in flight (being read or queued on its
 * socket): what bounds the read buffers, 4 connections x 2 MiB; nbdcopy's
 * 256 KiB requests still get 8 deep per connection. 4 MiB read no faster
 * (bench map rows) and peaked ~8 MB higher with the spare buffers that follow.
 */
const MAX_IN_FLIGHT_BYTES = 2 * 1024 * 1024;

/** Undo steps, run last first. */
type Undo = { label: string; run: () => Promise<void> };

async function unwind(undo: Undo[], logger: Logger): Promise<void> {
  for (const step of undo.splice(0).reverse()) {
    try {
      await step.run();
    } catch (err) {
      logger.warn(`Cleanup: ${step.label} failed: ${(err as Error).message}`);
    }
  }
}

function idents(chain: LoadedChain): string[] {
  const out: string[] = [];
  for (const s of [...chain.streams].reverse()) {
    const name = parseDataFileName(basename(s.file));
    for (const ident of [name?.ident, s.metadata.checkpointName, name?.level === 'copy' ? 'copy' : undefined]) {
      if (ident && !out.includes(ident)) out.push(ident);
    }
  }
  return out;
}

export async function map(options: MapOptions, ctx: MapContext): Promise<Mapping> {
  const { logger } = ctx;
  const boot = options.boot ?? false;
  const chains = await loadChains(options.files, { logger, singleDisk: !boot, unitSize: options.unitSize });
  const undo: Undo[] = [];
  const exports: ChainExport[] = [];
  for (const chain of chains) {
    const exp = new ChainExport(chain.index, chain.files, {
      description: `backup of disk ${chain.disk} up to checkpoint ${chain.checkpoint}`,
      cache: new PieceCache(options.cache),
      onCorruptFrame: (p) => logger.error(`${p.file}: ${p.reason}: reads of disk range ${p.offset}+${p.length} fail with EIO`),
    });
    exports.push(exp);
    undo.push({ label: `closing the data files of ${chain.disk}`, run: () => exp.close() });
  }
  try {
    for (const chain of chains) {
      for (const note of chain.notes) logger.info(`Disk ${chain.disk}: ${note}`);
      const stats = chain.index.stats();
      logger.info(
        `Disk ${chain.disk}: ${chain.streams.length} data file(s) up to checkpoint ${chain.checkpoint || '-'}, ` +
          `${chain.index.size} bytes, ${stats.dataBytes} bytes of data in ${chain.index.rangeCount} ranges`,
      );
    }
    const workDir = await mkdtemp(join(options.tempDir ?? tmpdir(), 'virtnbdmap-'));
    undo.push({ label: `removing ${workDir}`, run: () => rm(workDir, { recursive: true, force: true }) });

    const served = new Map<string, Export>();
    const disks: MappedDisk[] = [];
    for (const [i, chain] of chains.entries()) {
      const exportName = boot ? chain.disk : (options.exportName ?? 'sda');
      let exp: Export = exports[i]!;
      let overlay: string | undefined;
      // With boot, the VM writes into qcow2 overlays: the exports stay read-only.
      if (!options.readOnly && !boot) {
        overlay = join(workDir, `${chain.disk}.overlay.raw`);
        const cow = await CowOverlay.create(exp, { path: overlay, description: exports[i]!.description });
        undo.push({ label: `removing the overlay ${overlay}`, run: () => cow.close() });
        logger.info(`Disk ${chain.disk}: writes go to the copy-on-write overlay ${overlay} (removed when mapping ends)`);
        exp = cow;
      }
      served.set(exportName, exp);
      disks.push({ disk: chain.disk, exportName, uri: '', size: chain.index.size, files: chain.files.map((f) => f.file), checkpoint: chain.checkpoint, writable: overlay !== undefined, overlay });
    }

    const server = new NbdServer({
      exports: served,
      maxInFlightBytes: MAX_IN_FLIGHT_BYTES,
      logger: (level, message) => (level === 'error' ? logger.error(message) : level === 'warn' ? logger.warn(message) : logger.debug(message)),
    });
    const listen: ListenTarget = options.listen ?? (boot ? { socketPath: join(workDir, 'nbd.sock') } : { host: '127.0.0.1', port: 10809 });
    let address: ServerAddress;
    try {
      address = await server.listen(listen);
    } catch (err) {
      const where = 'socketPath' in listen ? listen.socketPath : `${listen.host ?? '127.0.0.1'}:${listen.port}`;
      throw new MapError(`Cannot serve on ${where}: ${(err as Error).message} (is another virtnbdmap running? choose another -p port or --socket path)`, { cause: err });
    }
    undo.push({ label: 'stopping the NBD server', run: () => server.close() });
    for (const d of disks) d.uri = exportUri(address, d.exportName);
    logger.info(`NBD server listening on ${'socketPath' in address ? address.socketPath : `${address.host}:${address.port}`}`);

    let device: DeviceConnection | undefined;
    let deviceProblem: string | undefined;
    let domain: BootedDomain | undefined;
    let ended: Promise<string> = new Promise<string>(() => {});
    if (boot) {
      if (!('socketPath' in address)) throw new MapError('--boot needs the NBD server on a unix socket (--socket PATH), not TCP');
      domain = await bootInstant({
        disks: disks.map((d) => ({ disk: d.disk, exportName: d.exportName, size: d.size })),
        setDir: dirname(chains[0]!.files[0]!.file),
        idents: idents(chains[0]!),
        socketPath: address.socketPath,
        workDir,
        name: options.name,
        uri: options.uri,
        logger,
      });
      const booted = domain;
      undo.push({ label: `stopping domain ${booted.name}`, run: () => booted.stop() });
      ended = booted.ended;
    } else if (options.device !== false) {
      const wanted = options.device ?? '/dev/nbd0';
      const result = await connectDevice({ device: wanted, server: listen, exportName: disks[0]!.exportName, readOnly: !disks[0]!.writable });
      if ('reason' in result) {
        deviceProblem = result.reason;
      } else {
        device = result;
        undo.push({ label: `disconnecting ${wanted}`, run: () => result.disconnect() });
        logger.info(`Done mapping backup image to [${wanted}] (with ${result.tool})`);
      }
    }

    let closing: Promise<void> | undefined;
    return {
      disks,
      address,
      device: device?.device,
      deviceProblem,
      domain,
      workDir,
      ended,
      close: () => (closing ??= unwind(undo, logger)),
    };
  } catch (err) {
    await unwind(undo, logger);
    throw err;
  }
}
