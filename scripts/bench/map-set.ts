/**
 * The backup set `npm run bench -- map` maps: full backups of the bench
 * disk, plain and compressed, written as virtnbdbackup's offline full
 * backup writes them (qemu-nbd serving the image read-only, then our
 * stages: ExtentSource -> NbdReader -> [Lz4Compress] -> SparseFramer), and
 * the qcow2 our restore makes of the plain one. Built once under
 * BENCH_DIR/map-set/ and reused while the bench disk's manifest is the
 * same; files appear under their final names only when complete.
 */
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Extent } from '../../lib/extent.js';
import { createMetadata } from '../../lib/format/metadata.js';
import { NbdClient } from '../../lib/nbd/client.js';
import { restore } from '../../lib/restore/restore.js';
import { createLogger } from '../../lib/cli/logger.js';
import { ExtentSource } from '../../streams/ExtentSource.js';
import { Lz4Compress } from '../../streams/Lz4Compress.js';
import { NbdReader } from '../../streams/NbdReader.js';
import { SparseFramer } from '../../streams/SparseFramer.js';
import { BENCH_DIR, type BenchDisk } from './disk.js';
import { run } from './exec.js';

export interface MapSet {
  /** Directory of the plain set (vda.full.data). */
  plain: string;
  /** Directory of the compressed set. */
  lz4: string;
  /** The qcow2 restored from the plain set. */
  restored: string;
}

/** Stream the image's data as one full backup file (`<out>.partial`, renamed when complete). */
async function writeFullBackup(image: string, out: string, compress: boolean, work: string): Promise<void> {
  const socket = join(work, 'source.sock');
  const pidFile = join(work, 'source.pid');
  await run('qemu-nbd', ['-r', '-t', '-f', 'qcow2', '-x', 'vda', '-k', socket, '--fork', '--pid-file', pidFile, image]);
  try {
    const client = await NbdClient.connect({ socket }, { exportName: 'vda', metaContexts: ['base:allocation'] });
    try {
      const extents: Extent[] = [];
      for await (const e of new ExtentSource(client, { maxDataLength: Infinity })) extents.push(e as Extent);
      const metadata = createMetadata({
        virtualSize: client.size,
        dataSize: extents.filter((e) => e.data).reduce((sum, e) => sum + e.length, 0),
        diskName: 'vda',
        diskFormat: 'qcow2',
        checkpointName: 'virtnbdbackup.0',
        compressed: compress ? 2 : false,
      });
      const stages = [
        Readable.from(extents, { objectMode: true }),
        new NbdReader(client),
        ...(compress ? [new Lz4Compress({ unitSize: client.maxRequestSize, depth: 2 })] : []),
        new SparseFramer({ metadata, maxRequestSize: client.maxRequestSize }),
        createWriteStream(`${out}.partial`),
      ];
      await pipeline(stages);
      await rename(`${out}.partial`, out);
    } finally {
      await client.disconnect().catch(() => undefined);
    }
  } finally {
    const pid = Number.parseInt(await readFile(pidFile, 'utf8').catch(() => ''), 10);
    if (pid > 1) process.kill(pid, 'SIGTERM');
  }
}

export async function mapSet(disk: BenchDisk, log: (m: string) => void): Promise<MapSet> {
  const root = join(BENCH_DIR, 'map-set');
  const set: MapSet = { plain: join(root, 'plain'), lz4: join(root, 'lz4'), restored: join(root, 'restored', 'vda') };
  const stamp = join(root, 'source.json');
  const source = await readFile(join(BENCH_DIR, 'bench.json'), 'utf8').catch(() => '?');
  const ready = existsSync(stamp) && (await readFile(stamp, 'utf8')) === source && existsSync(set.restored) && existsSync(join(set.lz4, 'vda.full.data'));
  if (ready) return set;
  log(`building the map bench set in ${root} (full backups of ${disk.path}, plain and lz4, and a restore)`);
  await rm(root, { recursive: true, force: true });
  const work = join(root, 'work');
  await mkdir(work, { recursive: true });
  await mkdir(set.plain);
  await mkdir(set.lz4);
  await writeFullBackup(disk.path, join(set.plain, 'vda.full.data'), false, work);
  await writeFullBackup(disk.path, join(set.lz4, 'vda.full.data'), true, work);
  const logger = createLogger({ quiet: true });
  await restore({ action: 'restore', input: set.plain, output: join(root, 'restored'), disk: 'vda' }, { logger });
  await logger.close();
  await rm(work, { recursive: true, force: true });
  await writeFile(stamp, source);
  return set;
}
