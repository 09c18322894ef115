/**
 * `npm run bench -- restore`: rebuild the bench disk from a full backup
 * set, interleaved for N rounds:
 *
 * - virtnbd: our CLI (bin/virtnbdrestore on dist/, compiled first), the
 *   whole command timed: qemu-img create, our qemu-nbd, writing, closing
 *   and fsyncing the image;
 * - virtnbd (16 GiB): ours on the set of the 16 GiB bench disk (same data,
 *   larger virtual size), to show its peak RSS is the 4 GiB one's (+-10%);
 * - virtnbd (-z set): ours on a compressed set of the 4 GiB disk (Debian's
 *   virtnbdbackup -z: python-lz4 frames of linked 64 KiB blocks), for its
 *   peak RSS (LZ4 decoded on the way);
 * - virtnbdrestore: Debian's package, the same command;
 * - nbdcopy: from the bench disk as a sparse raw file into a new qcow2
 *   (qemu-img create, untimed) served by qemu-nbd with its default cache,
 *   with --flush, as the limit: it writes the same data extents and
 *   nothing else.
 *
 * The sets are made once by Debian's virtnbdbackup from a bench VM and
 * cached under BENCH_DIR/restore-set/ (restore-set16/ for the 16 GiB disk,
 * restore-set-z/ for the compressed one)
 * while the bench disk is the same.
 * One untimed pass checks that each tool's image equals the bench disk
 * (`qemu-img compare`).
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { BENCH_DIR, benchDisk, benchDiskName, type BenchDisk } from './disk.js';
import { buildDist, REPO } from './dist.js';
import { run, stopPidFile } from './exec.js';
import { medianRss, type BenchResult, type BenchRow } from './report.js';
import { roundRows, runRounds, type Contender } from './rounds.js';
import { startBenchVm } from './vm.js';
import { inBenchWorkdir, runFacts } from './workdir.js';

const MB = 1e6;
const GiB = 1024 ** 3;

export interface RestoreBenchOptions {
  rounds: number;
  log: (msg: string) => void;
}

/** The full backup set (Debian's virtnbdbackup of a VM on `disk`, compressed with -z if asked), built once. */
async function restoreSet(disk: BenchDisk, log: (m: string) => void, compress = false): Promise<string> {
  const name = benchDiskName(disk.virtualSize);
  const root = join(BENCH_DIR, name.replace(/^bench/, 'restore-set') + (compress ? '-z' : ''));
  const set = join(root, 'set');
  const stamp = join(root, 'source.json');
  const source = await readFile(join(BENCH_DIR, `${name}.json`), 'utf8');
  if (existsSync(stamp) && (await readFile(stamp, 'utf8')) === source) return set;
  log(`building the restore bench set in ${set} (Debian virtnbdbackup full${compress ? ' -z' : ''} of the bench VM)`);
  await rm(root, { recursive: true, force: true });
  await mkdir(root, { recursive: true });
  const vm = await startBenchVm(disk.path, root, log);
  try {
    await run('virtnbdbackup', ['-d', vm.name, '-l', 'full', '-o', set, '-n', ...(compress ? ['-z'] : [])], { cwd: root, timeoutMs: 900_000 });
  } finally {
    await vm.stop();
  }
  await writeFile(stamp, source);
  return set;
}

/** The one image a tool wrote into `out` (its name comes from the VM's disk). */
async function restoredImage(out: string): Promise<string> {
  const files = (await readdir(out)).filter((f) => !/\.(log|xml|json)$/.test(f));
  if (files.length !== 1) throw new Error(`expected one restored image in ${out}, found: ${files.join(', ') || 'none'}`);
  return join(out, files[0]);
}

/** qemu-nbd serving a new qcow2 (default cache), for nbdcopy to write into. */
function nbdcopyTarget(disk: BenchDisk, work: string): Contender {
  const socket = join(work, 'target.sock');
  const pidFile = join(work, 'target.pid');
  const raw = join(BENCH_DIR, 'bench.raw');
  return {
    name: 'nbdcopy',
    async before(out) {
      if (!existsSync(raw)) await run('qemu-img', ['convert', '-O', 'raw', '-S', '4k', disk.path, raw], { timeoutMs: 600_000 });
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', join(out, 'vda.qcow2'), String(disk.virtualSize)]);
      await run('qemu-nbd', ['-t', '-f', 'qcow2', '-x', 'vda', '-k', socket, '--fork', '--pid-file', pidFile, join(out, 'vda.qcow2')]);
    },
    command: () => ({ cmd: 'nbdcopy', args: ['--flush', raw, `nbd+unix:///vda?socket=${socket}`] }),
    after: () => stopPidFile(pidFile),
  };
}

export async function benchRestore(opts: RestoreBenchOptions): Promise<BenchResult> {
  const { log } = opts;
  const loadBefore = loadavg();
  const disk = await benchDisk(log);
  const set = await restoreSet(disk, log);
  const disk16 = await benchDisk(log, 16 * GiB);
  const set16 = await restoreSet(disk16, log);
  const setZ = await restoreSet(disk, log, true);
  await buildDist(log);
  const ours = join(REPO, 'bin/virtnbdrestore');
  return inBenchWorkdir('restore', async ({ dir }) => {
    const all: Contender[] = [
      { name: 'virtnbd', command: (out) => ({ cmd: ours, args: ['-i', set, '-o', out, '-n'] }) },
      { name: 'virtnbd (16 GiB)', command: (out) => ({ cmd: ours, args: ['-i', set16, '-o', out, '-n'] }) },
      { name: 'virtnbd (-z set)', command: (out) => ({ cmd: ours, args: ['-i', setZ, '-o', out, '-n'] }) },
      { name: 'virtnbdrestore', command: (out) => ({ cmd: 'virtnbdrestore', args: ['-i', set, '-o', out, '-n'] }) },
      nbdcopyTarget(disk, dir),
    ];
    const same = new Map<string, boolean>();
    // The size reported is what the restored image allocates; the first image of each tool is compared with the disk.
    const outcome = async (c: Contender, out: string): Promise<number> => {
      const image = await restoredImage(out);
      if (!same.has(c.name)) {
        const source = c.name === 'virtnbd (16 GiB)' ? disk16 : disk;
        same.set(c.name, await run('qemu-img', ['compare', '-q', source.path, image], { timeoutMs: 600_000 }).then(() => true, () => false));
      }
      return (await stat(image)).blocks * 512;
    };
    const runs = await runRounds(all, { rounds: opts.rounds, dir, outcome, log });
    const rows = roundRows(all, runs, (cmd) => (cmd === ours ? './bin/virtnbdrestore' : cmd));
    const row = (name: string): BenchRow => rows.find((r) => r.name === name) as BenchRow;
    const vsNbdcopy = row('virtnbd').medianMs / row('nbdcopy').medianMs;
    const speedup = row('virtnbdrestore').medianMs / row('virtnbd').medianMs;
    const rss = Math.max(row('virtnbd').peakRssBytes, row('virtnbd (16 GiB)').peakRssBytes);
    const rssZ = row('virtnbd (-z set)').peakRssBytes;
    const rss16 = medianRss(row('virtnbd (16 GiB)')) / medianRss(row('virtnbd')) - 1;
    return {
      bench: 'restore',
      rows,
      targets: [
        { what: 'restore time virtnbd/nbdcopy', value: vsNbdcopy, limit: 1.3, unit: 'x', ok: vsNbdcopy <= 1.3 },
        { what: 'restore speed-up over virtnbdrestore', value: speedup, limit: 1.8, unit: 'x', ok: speedup >= 1.8 },
        { what: 'peak RSS virtnbd', value: rss / MB, limit: 100, unit: 'MB', ok: rss <= 100 * MB },
        { what: 'peak RSS virtnbd, compressed set', value: rssZ / MB, limit: 100, unit: 'MB', ok: rssZ <= 100 * MB },
        { what: 'peak RSS virtnbd restore, 16 GiB vs 4 GiB disk (medians of the rounds)', value: rss16 * 100, limit: 10, unit: '%', ok: Math.abs(rss16) <= 0.1 },
      ],
      info: {
        disk: `${disk.path} (${disk.virtualSize} bytes virtual, ${disk.dataBytes} data bytes in ${disk.dataExtents} extents)`,
        set,
        'set (16 GiB)': set16,
        'set (-z)': setZ,
        rounds: opts.rounds,
        'ratio virtnbd / nbdcopy (medians)': Number(vsNbdcopy.toFixed(3)),
        'ratio virtnbdrestore / virtnbd': Number(speedup.toFixed(3)),
        'images equal the bench disk (qemu-img compare)': [...same].map(([k, v]) => `${k} ${v ? 'yes' : 'NO'}`).join(', '),
        'own bytes column': 'bytes allocated by the restored image',
        ...runFacts(loadBefore),
      },
    };
  });
}
