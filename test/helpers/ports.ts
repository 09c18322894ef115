/**
 * TCP ports for servers the tests start (NBD over TCP): one the kernel
 * picks as free right now, so concurrent test files do not collide the way
 * random numbers in the ephemeral range can.
 */
import { createServer } from 'node:net';

/** A TCP port nothing listens on at this moment (bound to port 0, then released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, () => {
      const address = server.address();
      server.close(() => (address !== null && typeof address === 'object' ? resolve(address.port) : reject(new Error('no TCP address'))));
    });
  });
}
