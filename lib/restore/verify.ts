/**
 * `--action verify` (or `-o verify`): the adler32 of every data file
 * compared with the one its backup stored in `<file>.chksum`. Every file is
 * checked (not just up to the first bad one) and every damaged file is
 * named; files without a `.chksum` are listed as unchecked. Works on any
 * entry order, so a zip read from a pipe can be verified in one pass.
 */
import type { Readable } from 'node:stream';
import type { Logger } from '../cli/logger.js';
import { Adler32, parseChecksumFile } from '../format/adler32.js';
import type { SetEntry } from './entries.js';
import { RestoreError } from './errors.js';
import { classifySetFile } from './setFiles.js';

/** Some data files do not match their checksums. */
export class VerifyError extends RestoreError {
  override readonly name: string = 'VerifyError';

  constructor(readonly damaged: string[]) {
    super(`Verification failed: ${damaged.length} data file${damaged.length === 1 ? ' does' : 's do'} not match ${damaged.length === 1 ? 'its' : 'their'} checksum: ${damaged.join(', ')}`);
  }
}

export interface VerifyResult {
  verified: string[];
  unchecked: string[];
}

async function adler32Of(stream: Readable): Promise<number> {
  const sum = new Adler32();
  for await (const chunk of stream) sum.update(chunk as Buffer);
  return sum.digest();
}

async function readText(stream: Readable, max = 1024): Promise<string> {
  let text = '';
  for await (const chunk of stream) {
    text += (chunk as Buffer).toString('latin1');
    if (text.length > max) {
      stream.destroy();
      break;
    }
  }
  return text;
}

export async function verifyChecksums(entries: AsyncIterable<SetEntry>, options: { disk?: string }, logger: Logger): Promise<VerifyResult> {
  const computed = new Map<string, number>();
  const stored = new Map<string, string>();
  for await (const entry of entries) {
    const kind = classifySetFile(entry.name);
    if (kind.kind === 'data') {
      if (options.disk !== undefined && kind.data!.disk !== options.disk) continue;
      logger.info(`Computing checksum for: ${entry.name}`);
      computed.set(entry.name, await adler32Of(await entry.open()));
    } else if (kind.kind === 'checksum') {
      stored.set(kind.dataFile!, await readText(await entry.open()));
    }
  }
  const damaged: string[] = [];
  const verified: string[] = [];
  const unchecked: string[] = [];
  for (const [file, sum] of [...computed].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const text = stored.get(file);
    if (text === undefined) {
      logger.info(`No checksum found, skipping: [${file}]`);
      unchecked.push(file);
      continue;
    }
    let expected: number;
    try {
      expected = parseChecksumFile(text, `${file}.chksum`);
    } catch (error) {
      logger.error((error as Error).message);
      damaged.push(file);
      continue;
    }
    if (expected !== sum) {
      logger.error(`${file}: adler32 is ${sum}, ${file}.chksum says ${expected}: the file is damaged`);
      damaged.push(file);
    } else {
      logger.info(`${file}: checksum ${sum} OK`);
      verified.push(file);
    }
  }
  if (computed.size === 0) throw new RestoreError(`No data files${options.disk ? ` of disk ${options.disk}` : ''} found to verify`);
  if (damaged.length > 0) throw new VerifyError(damaged);
  return { verified, unchecked };
}
