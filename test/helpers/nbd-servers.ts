/**
 * Real NBD servers for the NBD client tests: qemu-nbd and nbdkit on unix
 * sockets in a per-test scratch dir, and X.509 certificates for TLS made
 * with openssl. Every server is started in the background with a pid file
 * (qemu-nbd --fork, nbdkit's default daemon mode: both return only once the
 * socket accepts connections) and killed in the test's teardown, with a
 * synchronous safety net at process exit (CleanupStack).
 */
import { readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CleanupStack } from './cleanup.js';
import { run } from './exec.js';
import { TEST_PREFIX } from './host.js';

export interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

export class NbdScratch {
  private servers = 0;
  private constructor(
    readonly dir: string,
    private readonly cleanup: CleanupStack,
  ) {}

  /** A scratch dir under os.tmpdir(), removed with everything started in it at teardown. */
  static async create(t: Teardown): Promise<NbdScratch> {
    const dir = await mkdtemp(join(tmpdir(), `${TEST_PREFIX}-${process.pid}-nbd-`));
    const cleanup = new CleanupStack();
    cleanup.push({
      label: `scratch dir ${dir}`,
      run: () => rm(dir, { recursive: true, force: true }),
      runSync: () => rmSync(dir, { recursive: true, force: true }),
    });
    t.teardown(() => cleanup.unwind());
    return new NbdScratch(dir, cleanup);
  }

  path(...parts: string[]): string {
    return join(this.dir, ...parts);
  }

  /** Start qemu-nbd (extra args before the image); returns its socket and pid. */
  async qemuNbd(image: string, args: string[]): Promise<NbdServer> {
    const n = ++this.servers;
    const socket = this.path(`qemu-nbd-${n}.sock`);
    const pidFile = this.path(`qemu-nbd-${n}.pid`);
    await run('qemu-nbd', ['--fork', `--pid-file=${pidFile}`, '-k', socket, ...args, image], { timeoutMs: 30_000 });
    return this.track('qemu-nbd', socket, pidFile);
  }

  /** Start qemu-nbd listening on TCP 127.0.0.1 on a free port; `socket` is then 'host:port'. */
  async qemuNbdTcp(image: string, args: string[]): Promise<NbdServer & { port: number }> {
    const n = ++this.servers;
    const pidFile = this.path(`qemu-nbd-${n}.pid`);
    const port = await freePort();
    await run('qemu-nbd', ['--fork', `--pid-file=${pidFile}`, '-b', '127.0.0.1', '-p', String(port), ...args, image], { timeoutMs: 30_000 });
    return Object.assign(await this.track('qemu-nbd', `127.0.0.1:${port}`, pidFile), { port });
  }

  /** Start nbdkit with plugin/filter args; returns its socket and pid. */
  async nbdkit(args: string[]): Promise<NbdServer> {
    const n = ++this.servers;
    const socket = this.path(`nbdkit-${n}.sock`);
    const pidFile = this.path(`nbdkit-${n}.pid`);
    await run('nbdkit', ['-U', socket, '-P', pidFile, ...args], { timeoutMs: 30_000 });
    return this.track('nbdkit', socket, pidFile);
  }

  private async track(name: string, socket: string, pidFile: string): Promise<NbdServer> {
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    const server = new NbdServer(name, socket, pid);
    this.cleanup.push({
      label: `${name} pid ${pid}`,
      run: () => server.kill(),
      runSync: () => {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      },
    });
    return server;
  }

  /**
   * A CA, a server certificate and a client certificate, laid out as QEMU's
   * tls-creds-x509 wants them: `<dir>/server` (ca-cert.pem, server-cert.pem,
   * server-key.pem) and `<dir>/client` (ca-cert.pem, client-cert.pem,
   * client-key.pem). `<dir>/other-ca` holds an unrelated CA.
   */
  async tlsCertificates(): Promise<{ server: string; client: string; otherCa: string }> {
    const base = this.path('tls');
    const server = join(base, 'server');
    const client = join(base, 'client');
    const otherCa = join(base, 'other-ca');
    for (const d of [server, client, otherCa]) await mkdir(d, { recursive: true });
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    const caExt = ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'];
    await run('openssl', ['req', '-x509', ...ec, '-keyout', join(base, 'ca-key.pem'), '-out', join(base, 'ca-cert.pem'), '-days', '2', '-subj', '/CN=virtnbd test CA', ...caExt]);
    await run('openssl', ['req', '-x509', ...ec, '-keyout', join(otherCa, 'ca-key.pem'), '-out', join(otherCa, 'ca-cert.pem'), '-days', '2', '-subj', '/CN=unrelated CA', ...caExt]);
    for (const [who, dir, usage] of [
      ['server', server, 'serverAuth'],
      ['client', client, 'clientAuth'],
    ] as const) {
      const ext = join(base, `${who}.ext`);
      await writeFile(
        ext,
        `subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=${usage}\n`,
      );
      await run('openssl', ['req', ...ec, '-keyout', join(dir, `${who}-key.pem`), '-out', join(base, `${who}.csr`), '-subj', '/CN=localhost']);
      await run('openssl', [
        'x509', '-req', '-in', join(base, `${who}.csr`), '-CA', join(base, 'ca-cert.pem'), '-CAkey', join(base, 'ca-key.pem'),
        '-CAcreateserial', '-out', join(dir, `${who}-cert.pem`), '-days', '2', '-extfile', ext,
      ]);
      await writeFile(join(dir, 'ca-cert.pem'), await readFile(join(base, 'ca-cert.pem')));
    }
    return { server, client, otherCa };
  }
}

/** A TCP port nothing listens on right now (the kernel picks it; the server binds it right after). */
async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return await new Promise<number>((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export class NbdServer {
  constructor(
    readonly name: string,
    readonly socket: string,
    readonly pid: number,
  ) {}

  uri(exportName = ''): string {
    return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${this.socket}`;
  }

  /** Running (a zombie waiting for a reaper counts as gone). */
  alive(): boolean {
    try {
      const stat = readFileSync(`/proc/${this.pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
    } catch {
      return false;
    }
  }

  /** SIGTERM (or `signal`), then SIGKILL if it is still there after a few seconds. */
  async kill(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (!this.alive()) return;
    process.kill(this.pid, signal);
    for (let i = 0; i < 100 && this.alive(); i++) await sleep(50);
    if (this.alive()) process.kill(this.pid, 'SIGKILL');
  }
}

export const MiB = 1024 * 1024;

export interface FixtureImage {
  path: string;
  size: number;
  /** The guest-visible bytes (qemu-img convert -O raw). */
  raw: Buffer;
  /** Persistent bitmap recording the writes made after it was added. */
  bitmap: string;
}

/**
 * A 64 MiB qcow2 with data, holes, a zero cluster range and random bytes,
 * plus bitmap `b0` added afterwards and then dirtied by: 0x44 at 1 MiB
 * (64 KiB), zeroes over data at 4 MiB (64 KiB), random bytes at 20 MiB
 * (3 MiB) and zeroes over a hole at 40 MiB (128 KiB).
 */
export async function nbdFixtureImage(s: NbdScratch): Promise<FixtureImage> {
  const path = s.path('fixture.qcow2');
  const rand1 = s.path('rand1.bin');
  const rand2 = s.path('rand2.bin');
  const { randomBytes } = await import('node:crypto');
  await writeFile(rand1, randomBytes(3 * MiB));
  await writeFile(rand2, randomBytes(3 * MiB));
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(64 * MiB)]);
  const io = (cmds: string[]): Promise<unknown> => run('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), path]);
  await io(['write -P 0x11 0 1M', 'write -P 0x22 4M 512k', 'write -z 8M 1M', `write -s ${rand1} 30M 3M`, 'write -P 0x66 63M 1M']);
  await run('qemu-img', ['bitmap', '--add', '--enable', path, 'b0']);
  await io(['write -P 0x44 1M 64k', 'write -z 4M 64k', `write -s ${rand2} 20M 3M`, 'write -z 40M 128k']);
  const rawPath = s.path('fixture.raw');
  await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', path, rawPath]);
  const raw = await readFile(rawPath);
  await rm(rawPath);
  return { path, size: 64 * MiB, raw, bitmap: 'b0' };
}
