/**
 * Small files of a backup set (checkpoint list, checkpoint XML, checksums)
 * written so that a crash never leaves half a file under the final name:
 * write `<path>.partial`, fsync, rename. A failure removes the partial file.
 */
import { open, rename, unlink } from 'node:fs/promises';
import { partialFileName } from '../format/naming.js';

export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const partial = partialFileName(path);
  const handle = await open(partial, 'w');
  try {
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(partial, path);
  } catch (e) {
    await unlink(partial).catch(() => undefined);
    throw e;
  }
}
