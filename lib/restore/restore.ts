/**
 * restore(): the one entry point behind virtnbdrestore. It reads a backup
 * set (directory, zip file, or a zip on stdin) and, as asked, rebuilds its
 * disks into new qcow2 images (restore), prints each data file's metadata
 * (dump), or checks each data file against its checksum (verify). All
 * failures are RestoreErrors (or the typed errors of the layers below)
 * with a message meant for the user. A restore may write to a remote
 * hypervisor (target.ts) when -U names one.
 */
import { mkdir } from 'node:fs/promises';
import { BackupSetError, RestoreError } from './errors.js';
import { dumpMetadata, formatDump } from './dump.js';
import { readerEntries, streamEntries, type SetEntry } from './entries.js';
import { restoreFromSet } from './fromSet.js';
import { restoreFromStream } from './fromStream.js';
import type { RestoreContext, RestoreOptions, RestoreResult } from './options.js';
import { inputKind, openSetReader } from './set.js';
import { classifySetFile } from './setFiles.js';
import { verifyChecksums } from './verify.js';
import { openRestoreTarget } from './target.js';

async function entriesOf(options: RestoreOptions): Promise<{ entries: AsyncIterable<SetEntry>; stream: boolean; label: string }> {
  const kind = await inputKind(options.input);
  if (kind === 'stream') {
    const label = options.input === '-' ? 'zip archive on stdin' : options.input;
    const input = options.input === '-' ? options.stdin ?? process.stdin : options.input;
    return { entries: streamEntries(input, label), stream: true, label };
  }
  const reader = await openSetReader(options.input, kind);
  let names = reader.names;
  if (options.sequence) {
    const missing = options.sequence.filter((f) => !names.includes(f));
    if (missing.length > 0) throw new BackupSetError(`--sequence names files that are not in ${reader.label}: ${missing.join(', ')}`);
    names = options.sequence.flatMap((f) => (reader.names.includes(`${f}.chksum`) ? [f, `${f}.chksum`] : [f]));
  } else {
    names = names.filter((n) => classifySetFile(n).kind === 'data' || classifySetFile(n).kind === 'checksum');
  }
  return { entries: readerEntries(reader, names), stream: false, label: reader.label };
}

export async function restore(options: RestoreOptions, context: RestoreContext): Promise<RestoreResult> {
  const { logger } = context;
  if (options.sequence && options.input === '-') throw new RestoreError('--sequence needs a directory or zip file as input, not a stream');
  if (options.action === 'dump') {
    const { entries } = await entriesOf(options);
    const { list, failed } = await dumpMetadata(entries, { disk: options.disk, keepOrder: !!options.sequence }, logger);
    (options.stdout ?? process.stdout).write(formatDump(list));
    if (failed.length > 0) throw new RestoreError(`Cannot read the metadata of ${failed.join(', ')}`);
    return { action: 'dump', images: [], metadata: list };
  }
  if (options.action === 'verify') {
    const { entries } = await entriesOf(options);
    const result = await verifyChecksums(entries, { disk: options.disk }, logger);
    return { action: 'verify', images: [], ...result };
  }
  if (options.sequence && (options.adjustConfig || options.define)) {
    logger.info('Using manual specified sequence of files: disabling redefine and config adjust options.');
    options = { ...options, adjustConfig: false, define: false };
  }
  const kind = await inputKind(options.input);
  const target = await openRestoreTarget(options, logger);
  if (kind === 'stream') {
    if (target.files.remote) await target.files.mkdirp(options.output);
    else await mkdir(options.output, { recursive: true });
    const { entries, label } = await entriesOf(options);
    return restoreFromStream(entries, label, options, context, target);
  }
  return restoreFromSet(await openSetReader(options.input, kind), options, context, target);
}
