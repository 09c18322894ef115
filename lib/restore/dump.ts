/**
 * `--action dump` (or `-o dump`): each data file's metadata, as stored in
 * its meta frame, printed as one JSON list the way virtnbdrestore prints it
 * (Python's `json.dumps(list, indent=4)`), ordered by disk, then by backup
 * date (or in --sequence order). Only meta frames are read. A file whose
 * metadata cannot be read is reported and makes the dump fail after the rest
 * has been printed; raw images have no metadata and are skipped.
 */
import type { Logger } from '../cli/logger.js';
import { pythonJsonDumps, type PythonJsonValue } from '../format/pythonJson.js';
import type { StreamMetadata } from '../format/metadata.js';
import type { SetEntry } from './entries.js';
import { RestoreError } from './errors.js';
import { readDataHead } from './set.js';
import { classifySetFile } from './setFiles.js';

export interface DumpOptions {
  /** Only data files of this disk. */
  disk?: string;
  /** Keep the order in which the entries come (--sequence). */
  keepOrder?: boolean;
}

interface Dumped {
  file: string;
  metadata: StreamMetadata;
  raw: Record<string, unknown>;
}

export interface DumpResult {
  /** Each readable data file's metadata, as stored. */
  list: Record<string, unknown>[];
  /** Data files whose metadata could not be read (already logged). */
  failed: string[];
}

export async function dumpMetadata(entries: AsyncIterable<SetEntry>, options: DumpOptions, logger: Logger): Promise<DumpResult> {
  logger.info('Dumping saveset meta information');
  const found: Dumped[] = [];
  const failed: string[] = [];
  for await (const entry of entries) {
    const kind = classifySetFile(entry.name);
    if (kind.kind !== 'data') continue;
    if (options.disk !== undefined && kind.data!.disk !== options.disk) continue;
    try {
      const head = await readDataHead(await entry.open(), entry.name);
      if (head.format === 'raw') {
        logger.warn(`${entry.name} is a raw image: it has no metadata to dump`);
        continue;
      }
      logger.info(entry.name);
      if (head.metadata.compressed !== false) logger.info(`Compressed stream found: [${head.metadata.compressionMethod}].`);
      found.push({ file: entry.name, metadata: head.metadata, raw: head.rawMetadata });
    } catch (error) {
      if (!(error instanceof RestoreError)) throw error;
      logger.error(error.message);
      failed.push(entry.name);
    }
  }
  if (!options.keepOrder) {
    found.sort((a, b) => {
      const da = a.metadata.diskName || a.file;
      const db = b.metadata.diskName || b.file;
      if (da !== db) return da < db ? -1 : 1;
      if (a.metadata.date !== b.metadata.date) return a.metadata.date < b.metadata.date ? -1 : 1;
      return a.file < b.file ? -1 : 1;
    });
  }
  return { list: found.map((d) => d.raw), failed };
}

/** The JSON text dump prints (with its final newline). */
export function formatDump(list: Record<string, unknown>[]): string {
  return `${pythonJsonDumps(list as PythonJsonValue, 4)}\n`;
}
