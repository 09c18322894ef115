/**
 * From the files a user names to one indexed chain per disk: each input is
 * a data file or a backup-set directory (all its data files); every file is
 * opened read-only and scanned (scan.ts); files are grouped by the disk
 * their metadata names; each disk's files are put in chain order by their
 * metadata (lib/restore/chain.ts: base, incs by checkpoint, the newest
 * diff), refusing holes, a missing full backup and mixed chains; and the
 * frames of the files in that order become the disk's ChainIndex.
 */
import { open, readdir, realpath, stat, type FileHandle } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Logger } from '../cli/logger.js';
import { parseDataFileName, type DataFileName } from '../format/naming.js';
import type { StreamMetadata } from '../format/metadata.js';
import { planDiskChain, type ChainFile } from '../restore/chain.js';
import { ChainError } from '../restore/errors.js';
import { ChainIndex } from './chainIndex.js';
import type { ChainFileHandle } from './chainExport.js';
import { MapChainError, MapInputError } from './errors.js';
import { scanStream, type ScannedStream, type ScanOptions } from './scan.js';

/** One disk's chain, indexed and with its files open. */
export interface LoadedChain {
  /** Disk target name (vda, sda). */
  disk: string;
  /** The scanned files in chain order (full or copy first). */
  streams: ScannedStream[];
  /** Their open handles, same order; ChainExport takes them over. */
  files: ChainFileHandle[];
  index: ChainIndex;
  /** The checkpoint the chain reaches. */
  checkpoint: string;
  /** The newest file's metadata. */
  metadata: StreamMetadata;
  /** Files given but left out, and why (for the log). */
  notes: string[];
}

export interface LoadOptions extends Pick<ScanOptions, 'unitSize'> {
  logger?: Logger;
  /** Refuse files of more than one disk (a plain mapping serves one disk). */
  singleDisk?: boolean;
}

interface OpenStream {
  path: string;
  handle: FileHandle;
  stream: ScannedStream;
}

/** The data files an input names: itself, or a directory's `*.data` files. */
async function expand(input: string): Promise<string[]> {
  let info;
  try {
    info = await stat(input);
  } catch (err) {
    throw new MapInputError(input, `cannot be read: ${(err as Error).message}`, { cause: err });
  }
  if (!info.isDirectory()) return [input];
  const names = (await readdir(input)).filter((n) => parseDataFileName(n) !== undefined).sort();
  if (names.length === 0) throw new MapInputError(input, 'is a directory without data files (<disk>.full.data, <disk>.inc.<checkpoint>.data, ...)');
  return names.map((n) => join(input, n));
}

/** What the file name says, or what the metadata says for a renamed file. */
function nameOf(path: string, metadata: StreamMetadata): DataFileName {
  const parsed = parseDataFileName(basename(path));
  if (parsed) return parsed;
  if (!metadata.incremental) return { disk: metadata.diskName, level: 'full' };
  return { disk: metadata.diskName, level: 'inc', ident: metadata.checkpointName || undefined };
}

function diskOf(s: OpenStream): string {
  return s.stream.metadata.diskName || parseDataFileName(basename(s.path))?.disk || '';
}

/** Plan one disk's chain; chain problems become MapChainErrors worded for mapping. */
function plan(disk: string, streams: readonly OpenStream[]): ReturnType<typeof planDiskChain> {
  const files: ChainFile[] = streams.map((s) => ({ file: s.path, name: nameOf(s.path, s.stream.metadata), metadata: s.stream.metadata }));
  try {
    return planDiskChain(disk, files);
  } catch (err) {
    if (!(err instanceof ChainError)) throw err;
    if (err.problem === 'no-base') {
      throw new MapChainError(`No full or copy backup of disk ${disk} among the files given (${files.map((f) => f.file).join(', ')}): a chain starts with one`);
    }
    if (err.problem === 'hole') {
      throw new MapChainError(
        `The files given for disk ${disk} do not form one chain: checkpoint ${err.checkpoint ?? '?'} was created by none of them, ` +
          'but a later file continues from it. Add the missing data file, or leave out the files after the gap',
      );
    }
    throw new MapChainError(err.message);
  }
}

/**
 * Open, scan and index the chains of `inputs`. On failure every file
 * opened is closed again; on success the caller owns the handles.
 */
export async function loadChains(inputs: readonly string[], options: LoadOptions = {}): Promise<LoadedChain[]> {
  if (inputs.length === 0) throw new MapInputError('-f', 'no data files given');
  const opened: OpenStream[] = [];
  const closeAll = async (list: readonly { handle: FileHandle }[]): Promise<void> => {
    await Promise.all(list.map((s) => s.handle.close().catch(() => undefined)));
  };
  let handle: FileHandle | undefined;
  try {
    const seen = new Set<string>();
    for (const input of inputs) {
      for (const path of await expand(input)) {
        const real = await realpath(path).catch(() => path);
        if (seen.has(real)) continue;
        seen.add(real);
        try {
          handle = await open(path, 'r');
        } catch (err) {
          throw new MapInputError(path, `cannot be opened: ${(err as Error).message}`, { cause: err });
        }
        const stream = await scanStream(handle, path, { unitSize: options.unitSize });
        opened.push({ path, handle, stream });
        handle = undefined;
        options.logger?.debug(
          `${path}: disk ${stream.metadata.diskName}, checkpoint ${stream.metadata.checkpointName || '-'}, ${stream.frames.length} frames` +
            `, payloads ${stream.located}${stream.trailerProblem ? ` (no usable trailer: ${stream.trailerProblem})` : ''}, ${stream.reads} reads`,
        );
        if (stream.trailerProblem) options.logger?.warn(`${path}: compression trailer not usable (${stream.trailerProblem}); located the LZ4 frames by their headers instead`);
      }
    }
    const byDisk = new Map<string, OpenStream[]>();
    for (const s of opened) byDisk.set(diskOf(s), [...(byDisk.get(diskOf(s)) ?? []), s]);
    if (options.singleDisk && byDisk.size > 1) {
      const listing = [...byDisk].map(([disk, list]) => `${disk}: ${list.map((s) => s.path).join(', ')}`).join('; ');
      throw new MapChainError(`The files given hold different disks (${listing}); map one disk at a time (or use --boot to start the VM from all of them)`);
    }
    const chains: LoadedChain[] = [];
    for (const [disk, list] of byDisk) {
      const planned = plan(disk, list);
      const steps = planned.steps.map((step) => list.find((s) => s.path === step.file)!);
      const unused = list.filter((s) => !steps.includes(s));
      await closeAll(unused);
      for (const s of unused) opened.splice(opened.indexOf(s), 1);
      steps.forEach((s, position) => {
        for (const frame of s.stream.frames) frame.file = position;
      });
      const metadata = steps[steps.length - 1]!.stream.metadata;
      const index = ChainIndex.build(
        metadata.virtualSize,
        steps.map((s) => s.stream.frames),
      );
      chains.push({
        disk,
        streams: steps.map((s) => s.stream),
        files: steps.map((s) => ({ file: s.path, handle: s.handle })),
        index,
        checkpoint: planned.checkpoint,
        metadata,
        notes: planned.notes,
      });
    }
    return chains;
  } catch (err) {
    await closeAll(opened);
    await handle?.close().catch(() => undefined);
    throw err;
  }
}
