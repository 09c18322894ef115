/**
 * Our side of `npm run bench -- nbd`, run as its own process so its peak
 * RSS is measured alone: connect to an NBD export, read every data extent
 * (ExtentSource -> NbdReader -> a sink that discards), and print one JSON
 * line {bytes, chunks, requests} on stdout.
 *
 *   node nbd-read.js URI [--connections N] [--request-size BYTES] [--in-flight N] [--no-release]
 *
 * --connections > 1 uses NbdPool (only when the server allows multi-conn).
 * The sink hands each chunk's buffer back to NbdReader (release()), as a
 * consumer that is done with the bytes should; --no-release measures a
 * consumer that does not.
 */
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Chunk } from '../../lib/chunk.js';
import type { NbdBlockDevice } from '../../lib/nbd/device.js';
import { NbdClient } from '../../lib/nbd/client.js';
import { NbdPool } from '../../lib/nbd/pool.js';
import { ExtentSource } from '../../streams/ExtentSource.js';
import { NbdReader } from '../../streams/NbdReader.js';

interface Args {
  uri: string;
  connections: number;
  requestSize?: number;
  inFlight?: number;
  release: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { uri: '', connections: 1, release: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const num = (): number => {
      const v = Number(argv[++i]);
      if (!Number.isSafeInteger(v) || v <= 0) throw new Error(`${a} needs a positive integer`);
      return v;
    };
    if (a === '--connections') args.connections = num();
    else if (a === '--request-size') args.requestSize = num();
    else if (a === '--in-flight') args.inFlight = num();
    else if (a === '--no-release') args.release = false;
    else if (!a.startsWith('--') && !args.uri) args.uri = a;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.uri) throw new Error('usage: nbd-read URI [--connections N] [--request-size BYTES] [--in-flight N] [--no-release]');
  return args;
}

/** Counts and drops chunks; gives their buffers back to the reader unless told not to. */
class Discard extends Writable {
  bytes = 0;
  chunks = 0;
  constructor(private readonly release?: (data: Buffer) => void) {
    super({ objectMode: true });
  }
  override _write(chunk: Chunk, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (chunk.data) {
      this.bytes += chunk.data.length;
      this.release?.(chunk.data);
    }
    this.chunks++;
    cb();
  }
}

const args = parseArgs(process.argv.slice(2));
const opts = { metaContexts: ['base:allocation'] };
const device: NbdBlockDevice & { disconnect(): Promise<void> } =
  args.connections > 1 ? await NbdPool.connect(args.uri, { ...opts, connections: args.connections }) : await NbdClient.connect(args.uri, opts);
const connections = device instanceof NbdPool ? device.clients.length : 1;
const reader = new NbdReader(device, { requestSize: args.requestSize, inFlight: args.inFlight });
const sink = new Discard(args.release ? (data) => reader.release(data) : undefined);
await pipeline(new ExtentSource(device), reader, sink);
await device.disconnect();
process.stdout.write(`${JSON.stringify({ bytes: sink.bytes, chunks: sink.chunks, bytesRead: reader.bytesRead, connections })}\n`);
