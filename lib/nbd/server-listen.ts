/**
 * Listening on a unix socket that only its owner can connect to.
 *
 * A socket file gets its mode from the umask when bind() creates it, and a
 * chmod afterwards leaves a window in which anyone may connect. So we bind
 * inside a fresh private directory (mkdtemp: mode 0700), chmod the socket to
 * 0600 there, and only then hard-link it to the requested path; link() also
 * refuses to replace an existing file, so we never steal a live socket.
 * When that detour would exceed the 107-byte sun_path limit we bind at the
 * path directly under a temporary umask of 0177 instead.
 */
import { chmod, link, lstat, mkdtemp, rmdir, unlink } from 'node:fs/promises';
import type { Server } from 'node:net';
import { dirname, join } from 'node:path';

/** sun_path holds 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

/** The socket path cannot be used (exists, too long, directory not writable...). */
export class SocketPathError extends Error {
  override name = 'SocketPathError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export interface UnixListener {
  path: string;
  /** Remove the socket file if it is still the one we created. */
  remove(): Promise<void>;
}

function listenOn(server: Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    server.listen({ path }, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

export async function listenUnix(server: Server, path: string): Promise<UnixListener> {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
    throw new SocketPathError(`unix socket path is longer than ${MAX_SOCKET_PATH} bytes: ${path}`);
  }
  if (await exists(path)) {
    throw new SocketPathError(`unix socket path already exists: ${path} (remove it if no server uses it)`);
  }
  try {
    const privateDir = await mkdtemp(join(dirname(path), '.'));
    const staged = join(privateDir, 's');
    try {
      if (Buffer.byteLength(staged) <= MAX_SOCKET_PATH) {
        await listenOn(server, staged);
        await chmod(staged, 0o600);
        await link(staged, path);
      } else {
        await listenWithUmask(server, path);
      }
    } finally {
      await unlink(staged).catch(() => {});
      await rmdir(privateDir).catch(() => {});
    }
  } catch (err) {
    if (server.listening) server.close();
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'EEXIST' ? 'it was created by someone else meanwhile' : (err as Error).message;
    throw new SocketPathError(`cannot listen on unix socket ${path}: ${why}`, { cause: err });
  }
  const { ino, dev } = await lstat(path);
  return {
    path,
    async remove() {
      try {
        const now = await lstat(path);
        if (now.ino === ino && now.dev === dev) await unlink(path);
      } catch {
        // Already gone.
      }
    },
  };
}

async function listenWithUmask(server: Server, path: string): Promise<void> {
  let previous: number | undefined;
  try {
    previous = process.umask(0o177);
  } catch {
    // Worker threads cannot change the umask; chmod right after bind below.
  }
  try {
    // bind() happens synchronously inside listen(), so the umask covers exactly it.
    const listening = listenOn(server, path);
    if (previous !== undefined) process.umask(previous);
    previous = undefined;
    await listening;
    await chmod(path, 0o600);
  } finally {
    if (previous !== undefined) process.umask(previous);
  }
}
