/**
 * The files of a backup set as one sequence of entries, whatever the input:
 * from a directory or zip file in an order we choose (each opened only when
 * asked), or from a zip on a pipe in archive order (each must be used, or
 * left, before the next one comes). Dump and verify walk a set this way.
 */
import type { Readable } from 'node:stream';
import { ZipSource } from '../../streams/ZipSource.js';
import type { BackupSetReader } from './set.js';
import { safeEntryName } from './setFiles.js';

export interface SetEntry {
  /** Name relative to the set's root, checked to stay inside it. */
  name: string;
  /** The entry's bytes; call at most once. Not calling it skips the entry. */
  open(): Promise<Readable>;
}

/** Entries of a random-access set, in the order of `names` (default: all, sorted). */
export async function* readerEntries(reader: BackupSetReader, names: readonly string[] = reader.names): AsyncGenerator<SetEntry> {
  for (const name of names) yield { name, open: () => reader.open(name) };
}

/** Entries of a zip arriving as a byte stream, in archive order; unsafe names are refused. */
export async function* streamEntries(input: Readable | string, label: string): AsyncGenerator<SetEntry> {
  for await (const entry of new ZipSource(input, { label })) {
    const name = safeEntryName(entry.name, label);
    yield { name, open: async () => entry.stream };
  }
}
