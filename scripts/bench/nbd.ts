/**
 * `npm run bench -- nbd`: read every data extent of the bench disk over NBD
 * with our client (scripts/bench/nbd-read.ts: ExtentSource -> NbdReader ->
 * a sink that drops each chunk and gives its buffer back with
 * NbdReader.release(); compiled with tsc and run by plain node, since tsx's
 * loader adds ~30 MB of RSS) and with nbdcopy to `null:`, interleaved for N
 * rounds; report median times, their ratio and the peak RSS of both.
 *
 * The export: `qemu-nbd -r -t -f qcow2` on a unix socket (`-e` when more
 * than one connection is asked, which also makes qemu-nbd advertise
 * multi-conn). Same work for both: nbdcopy reads whole request-size blocks
 * that hold any data (with its default 256 KiB requests it also reads the
 * holes around each scattered 64 KiB block, ~24% more bytes), so it runs
 * with `--request-size=65536`, the image's cluster size, and then reads
 * exactly the data extents. A verification pass (untimed) runs every tool
 * once through an nbdkit log-filter proxy and counts the bytes the server
 * was asked for.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BENCH_DIR, benchDisk } from './disk.js';
import { compileEntry } from './compile.js';
import { run, stopPidFile } from './exec.js';
import { measure, median } from './measure.js';
import type { BenchResult, BenchRow } from './report.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const MB = 1e6;

export interface NbdBenchOptions {
  rounds: number;
  /** NBD connections for both tools (> 1: qemu-nbd -e, NbdPool, nbdcopy -C). */
  connections: number;
  /** Also run our reader under tsx (`node --import tsx`), to compare its RSS with the compiled one. */
  tsx: boolean;
  /** Also run nbdcopy with its default request size (reads some holes). */
  nbdcopyDefault: boolean;
  /** Also run our reader with a sink that does not give chunk buffers back (NbdReader.release). */
  noRelease: boolean;
  /** Passed to our reader (NbdReader options). */
  requestSize?: number;
  inFlight?: number;
  /** Extra node flags for our reader, e.g. '--max-semi-space-size=16'. */
  nodeFlags: string[];
  log: (msg: string) => void;
}

interface Tool {
  name: string;
  cmd: string;
  args: (uri: string) => string[];
  cwd?: string;
  /** Bytes the tool reports on stdout, if it does. */
  reported?: (stdout: string) => number;
}

interface Server {
  socket: string;
  uri: string;
  stop(): Promise<void>;
}

function uriOf(socket: string): string {
  return `nbd+unix:///bench?socket=${socket}`;
}

/** qemu-nbd serving the image read-only and persistently; --fork returns once the socket listens. */
async function startQemuNbd(image: string, dir: string, connections: number): Promise<Server> {
  const socket = join(dir, 'qemu-nbd.sock');
  const pidFile = join(dir, 'qemu-nbd.pid');
  const shared = connections > 1 ? ['-e', String(Math.max(8, connections * 2))] : [];
  await run('qemu-nbd', ['-r', '-t', ...shared, '-f', 'qcow2', '-k', socket, '-x', 'bench', '--fork', '--pid-file', pidFile, image]);
  return { socket, uri: uriOf(socket), stop: () => stopPidFile(pidFile) };
}

/** nbdkit proxying to `upstream` with the log filter, so we can count what a client reads. */
async function startLogProxy(upstream: string, dir: string, tag: string): Promise<Server & { logFile: string }> {
  const socket = join(dir, `proxy-${tag}.sock`);
  const pidFile = join(dir, `proxy-${tag}.pid`);
  const logFile = join(dir, `proxy-${tag}.log`);
  await run('nbdkit', ['-U', socket, '-P', pidFile, '--filter=log', 'nbd', `socket=${upstream}`, 'export=bench', `logfile=${logFile}`]);
  return { socket, uri: uriOf(socket), logFile, stop: () => stopPidFile(pidFile) };
}

/** Read requests and their total bytes in an nbdkit log-filter log. */
async function countReads(logFile: string): Promise<{ bytes: number; requests: number }> {
  const text = await readFile(logFile, 'utf8');
  let bytes = 0;
  let requests = 0;
  for (const m of text.matchAll(/ Read id=\d+ offset=0x[0-9a-f]+ count=0x([0-9a-f]+)/g)) {
    bytes += Number.parseInt(m[1], 16);
    requests++;
  }
  return { bytes, requests };
}

function ourArgs(opts: NbdBenchOptions): string[] {
  const a = ['--connections', String(opts.connections)];
  if (opts.requestSize) a.push('--request-size', String(opts.requestSize));
  if (opts.inFlight) a.push('--in-flight', String(opts.inFlight));
  return a;
}

const reportedBytes = (stdout: string): number => (JSON.parse(stdout.trim().split('\n').pop() as string) as { bytes: number }).bytes;

export async function benchNbd(opts: NbdBenchOptions): Promise<BenchResult> {
  const { log } = opts;
  const loadBefore = loadavg();
  const disk = await benchDisk(log);
  const dir = await mkdtemp(join(BENCH_DIR, 'run-'));
  const servers: Server[] = [];
  const stopAll = async (): Promise<void> => {
    for (const s of servers.splice(0).reverse()) await s.stop();
    await rm(dir, { recursive: true, force: true });
  };
  // The servers are daemons: stop them on Ctrl-C too.
  const onSignal = (): void => void stopAll().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    log('compiling scripts/bench/nbd-read.ts with tsc');
    const readerJs = await compileEntry(join(REPO, 'scripts/bench/nbd-read.ts'), join(dir, 'build'));
    const conn = String(opts.connections);
    const tools: Tool[] = [
      { name: 'virtnbd', cmd: process.execPath, args: (uri) => [...opts.nodeFlags, readerJs, uri, ...ourArgs(opts)], reported: reportedBytes },
    ];
    if (opts.noRelease) {
      tools.push({ name: 'virtnbd (no release)', cmd: process.execPath, args: (uri) => [...opts.nodeFlags, readerJs, uri, ...ourArgs(opts), '--no-release'], reported: reportedBytes });
    }
    if (opts.tsx) {
      tools.push({
        name: 'virtnbd (tsx)',
        cmd: process.execPath,
        args: (uri) => [...opts.nodeFlags, '--import', 'tsx', join(REPO, 'scripts/bench/nbd-read.ts'), uri, ...ourArgs(opts)],
        cwd: REPO,
        reported: reportedBytes,
      });
    }
    tools.push({ name: 'nbdcopy', cmd: 'nbdcopy', args: (uri) => ['-C', conn, '--request-size=65536', uri, 'null:'] });
    if (opts.nbdcopyDefault) tools.push({ name: 'nbdcopy (default 256K)', cmd: 'nbdcopy', args: (uri) => ['-C', conn, uri, 'null:'] });

    const server = await startQemuNbd(disk.path, dir, opts.connections);
    servers.push(server);

    // Verification pass: what each tool asks the server for.
    const seen = new Map<string, { bytes: number; requests: number }>();
    for (const [i, tool] of tools.entries()) {
      const proxy = await startLogProxy(server.socket, dir, String(i));
      servers.push(proxy);
      await run(tool.cmd, tool.args(proxy.uri), { timeoutMs: 600_000 });
      await proxy.stop();
      seen.set(tool.name, await countReads(proxy.logFile));
    }

    // Timed rounds, interleaved; the order rotates so no tool always runs first.
    const runs = new Map<string, Array<{ ms: number; rss: number; bytes?: number }>>(tools.map((t) => [t.name, []]));
    for (let r = 0; r < opts.rounds; r++) {
      for (let k = 0; k < tools.length; k++) {
        const tool = tools[(r + k) % tools.length];
        const m = await measure(tool.cmd, tool.args(server.uri), { cwd: tool.cwd });
        const bytes = tool.reported?.(m.stdout);
        runs.get(tool.name)?.push({ ms: m.wallMs, rss: m.peakRssBytes, bytes });
        log(`round ${r + 1}/${opts.rounds} ${tool.name}: ${(m.wallMs / 1000).toFixed(2)} s, peak RSS ${(m.peakRssBytes / MB).toFixed(1)} MB`);
      }
    }

    const rows: BenchRow[] = tools.map((tool) => {
      const rs = runs.get(tool.name) ?? [];
      const s = seen.get(tool.name);
      return {
        name: tool.name,
        command: `${[tool.cmd === process.execPath ? 'node' : tool.cmd, ...tool.args(server.uri)].join(' ')}`,
        runsMs: rs.map((x) => Math.round(x.ms)),
        medianMs: median(rs.map((x) => x.ms)),
        rssRuns: rs.map((x) => x.rss),
        peakRssBytes: Math.max(...rs.map((x) => x.rss)),
        serverBytes: s?.bytes,
        serverRequests: s?.requests,
        reportedBytes: rs[0]?.bytes,
      };
    });
    const ours = rows[0];
    const nbdcopy = rows.find((r) => r.name === 'nbdcopy') as BenchRow;
    const ratio = ours.medianMs / nbdcopy.medianMs;
    const info: BenchResult['info'] = {
      disk: `${disk.path} (${disk.virtualSize} bytes virtual, ${disk.dataBytes} data bytes in ${disk.dataExtents} extents)`,
      rounds: opts.rounds,
      connections: opts.connections,
      'ratio virtnbd/nbdcopy (medians)': Number(ratio.toFixed(3)),
      'same bytes read': ours.serverBytes === nbdcopy.serverBytes && ours.serverBytes === disk.dataBytes,
      'load average before': loadBefore.map((x) => x.toFixed(2)).join(' '),
      'load average after': loadavg().map((x) => x.toFixed(2)).join(' '),
      node: process.version,
    };
    const def = rows.find((r) => r.name === 'nbdcopy (default 256K)');
    if (def) info['ratio virtnbd/nbdcopy default (medians)'] = Number((ours.medianMs / def.medianMs).toFixed(3));
    if (opts.nodeFlags.length) info['node flags'] = opts.nodeFlags.join(' ');
    if (opts.requestSize) info['request size'] = opts.requestSize;
    if (opts.inFlight) info['in flight'] = opts.inFlight;
    return {
      bench: 'nbd',
      rows,
      targets: [
        { what: 'time virtnbd/nbdcopy', value: ratio, limit: 1.3, unit: 'x', ok: ratio <= 1.3 },
        { what: 'peak RSS virtnbd', value: ours.peakRssBytes / MB, limit: 100, unit: 'MB', ok: ours.peakRssBytes <= 100 * MB },
      ],
      info,
    };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await stopAll();
  }
}
