/**
 * `npm run bench -- map`: sequential read of the bench disk's backup,
 * mapped by virtnbdmap (our NBD server over the chain index, read-only),
 * against the same disk restored to qcow2 and served by qemu-nbd, in the
 * same run. The reader is nbdcopy to `null:` with its defaults (it follows
 * block status, so it reads the data ranges only; 4 connections where the
 * server allows multi-conn, which both do here: qemu-nbd runs with -e 8).
 * Rounds are interleaved and the order rotates. Before timing, an untimed
 * pass checks that each export reads identical to qemu-nbd's (`qemu-img
 * compare`) and warms the page cache.
 *
 * Rows: virtnbdmap on the plain backup, on the compressed one (LZ4 pieces
 * decompressed on the fly, through the piece cache), qemu-nbd on the
 * restored qcow2. Target: plain throughput >= 0.7x qemu-nbd's.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BENCH_DIR, benchDisk } from './disk.js';
import { buildDist } from './dist.js';
import { run, stopPidFile } from './exec.js';
import { mapSet } from './map-set.js';
import { measure, median } from './measure.js';
import type { BenchResult, BenchRow } from './report.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const MB = 1e6;

export interface MapBenchOptions {
  rounds: number;
  log: (msg: string) => void;
}

interface Server {
  name: string;
  uri: string;
  /** Peak RSS of the server process so far (VmHWM), bytes; undefined for daemons we do not own. */
  peakRss(): Promise<number | undefined>;
  stop(): Promise<void>;
}

/** Our virtnbdmap serving `file` read-only on a unix socket; ready once it says so. */
async function startOurs(name: string, entry: string, file: string, dir: string): Promise<Server> {
  const slug = name.replace(/[^\w]+/g, '-').replace(/^-|-$/g, '');
  const socket = join(dir, `${slug}.sock`);
  const child: ChildProcess = spawn(entry, ['-r', '-n', '-f', file, '--socket', socket, '-e', 'bench', '-L', join(dir, `${slug}.log`)], {
    cwd: REPO,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let text = '';
  child.stderr!.on('data', (b: Buffer) => (text += b.toString('utf8')));
  const exited = new Promise<void>((res) => child.once('close', () => res()));
  const deadline = Date.now() + 120_000;
  while (!text.includes('Press CTRL+C')) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`virtnbdmap (${name}) did not start:\n${text}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    name,
    uri: `nbd+unix:///bench?socket=${socket}`,
    async peakRss() {
      const status = await readFile(`/proc/${child.pid}/status`, 'utf8').catch(() => '');
      const kb = /VmHWM:\s+(\d+) kB/.exec(status)?.[1];
      return kb === undefined ? undefined : Number(kb) * 1024;
    },
    async stop() {
      child.kill('SIGINT');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

async function startQemuNbd(image: string, dir: string): Promise<Server> {
  const socket = join(dir, 'qemu-nbd.sock');
  const pidFile = join(dir, 'qemu-nbd.pid');
  await run('qemu-nbd', ['-r', '-t', '-e', '8', '-f', 'qcow2', '-x', 'bench', '-k', socket, '--fork', '--pid-file', pidFile, image]);
  return {
    name: 'qemu-nbd (restored qcow2)',
    uri: `nbd+unix:///bench?socket=${socket}`,
    peakRss: async () => undefined,
    stop: () => stopPidFile(pidFile),
  };
}

export async function benchMap(opts: MapBenchOptions): Promise<BenchResult> {
  const { log } = opts;
  const loadBefore = loadavg();
  const disk = await benchDisk(log);
  const set = await mapSet(disk, log);
  const dir = await mkdtemp(join(BENCH_DIR, 'run-map-'));
  const servers: Server[] = [];
  const stopAll = async (): Promise<void> => {
    for (const s of servers.splice(0).reverse()) await s.stop();
    await rm(dir, { recursive: true, force: true });
  };
  const onSignal = (): void => void stopAll().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    // The command as a user runs it: bin/virtnbdmap on the bundle, with its node flags.
    await buildDist(log);
    const entry = join(REPO, 'bin/virtnbdmap');
    const qemu = await startQemuNbd(set.restored, dir);
    servers.push(qemu);
    const plain = await startOurs('virtnbdmap (plain)', entry, join(set.plain, 'vda.full.data'), dir);
    servers.push(plain);
    const lz4 = await startOurs('virtnbdmap (lz4)', entry, join(set.lz4, 'vda.full.data'), dir);
    servers.push(lz4);
    const tools = [plain, lz4, qemu];

    // Untimed: same contents as qemu-nbd's export, and a warm page cache for everyone.
    const same: Record<string, boolean> = {};
    for (const ours of [plain, lz4]) {
      log(`checking ${ours.name} against ${qemu.name} (qemu-img compare)`);
      const r = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ours.uri, qemu.uri], { timeoutMs: 600_000 }).then(
        () => true,
        () => false,
      );
      same[ours.name] = r;
    }
    await run('nbdcopy', [qemu.uri, 'null:'], { timeoutMs: 600_000 });

    const runs = new Map<string, Array<{ ms: number; rss: number }>>(tools.map((t) => [t.name, []]));
    for (let r = 0; r < opts.rounds; r++) {
      for (let k = 0; k < tools.length; k++) {
        const tool = tools[(r + k) % tools.length]!;
        const m = await measure('nbdcopy', [tool.uri, 'null:']);
        runs.get(tool.name)!.push({ ms: m.wallMs, rss: m.peakRssBytes });
        log(`round ${r + 1}/${opts.rounds} ${tool.name}: ${(m.wallMs / 1000).toFixed(2)} s (${(disk.dataBytes / MB / (m.wallMs / 1000)).toFixed(0)} MB/s of data)`);
      }
    }
    const serverRss: Record<string, number | undefined> = {};
    for (const s of [plain, lz4]) serverRss[s.name] = await s.peakRss();

    const rows: BenchRow[] = tools.map((tool) => {
      const rs = runs.get(tool.name)!;
      return {
        name: tool.name,
        command: `nbdcopy ${tool.uri} null:`,
        runsMs: rs.map((x) => Math.round(x.ms)),
        medianMs: median(rs.map((x) => x.ms)),
        rssRuns: rs.map((x) => x.rss),
        peakRssBytes: Math.max(...rs.map((x) => x.rss)),
        reportedBytes: disk.dataBytes,
      };
    });
    const [p, z, q] = rows as [BenchRow, BenchRow, BenchRow];
    const mbps = (row: BenchRow): number => Number((disk.dataBytes / MB / (row.medianMs / 1000)).toFixed(1));
    const ratio = q.medianMs / p.medianMs;
    const info: BenchResult['info'] = {
      disk: `${disk.path} (${disk.virtualSize} bytes virtual, ${disk.dataBytes} data bytes in ${disk.dataExtents} extents)`,
      'backup files': `${join(set.plain, 'vda.full.data')}, ${join(set.lz4, 'vda.full.data')}; restored ${set.restored}`,
      rounds: opts.rounds,
      'MB/s virtnbdmap plain': mbps(p),
      'MB/s virtnbdmap lz4': mbps(z),
      'MB/s qemu-nbd': mbps(q),
      'throughput plain/qemu-nbd': Number(ratio.toFixed(3)),
      'throughput lz4/qemu-nbd': Number((q.medianMs / z.medianMs).toFixed(3)),
      'same contents as qemu-nbd (plain)': same[plain.name] ?? false,
      'same contents as qemu-nbd (lz4)': same[lz4.name] ?? false,
      'virtnbdmap server peak RSS MB (plain)': Number(((serverRss[plain.name] ?? 0) / MB).toFixed(1)),
      'virtnbdmap server peak RSS MB (lz4)': Number(((serverRss[lz4.name] ?? 0) / MB).toFixed(1)),
      'load average before': loadBefore.map((x) => x.toFixed(2)).join(' '),
      'load average after': loadavg().map((x) => x.toFixed(2)).join(' '),
      node: process.version,
    };
    return {
      bench: 'map',
      rows,
      targets: [
        { what: 'throughput virtnbdmap (plain) / qemu-nbd', value: ratio, limit: 0.7, unit: 'x', ok: ratio >= 0.7 },
        { what: 'contents identical to qemu-nbd', value: same[plain.name] && same[lz4.name] ? 1 : 0, limit: 1, unit: '', ok: Boolean(same[plain.name] && same[lz4.name]) },
        ...[plain, lz4].map((s) => {
          // The server's whole life: the qemu-img compare pass included.
          const rss = serverRss[s.name] ?? 0;
          return { what: `peak RSS ${s.name} server`, value: rss / MB, limit: 100, unit: 'MB', ok: rss <= 100 * MB };
        }),
      ],
      info,
    };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await stopAll();
  }
}
