/**
 * `npm run bench -- compress`: full backups with `-z` of realistic,
 * compressible data (scripts/bench/tar-disk.ts: 1 GiB of a tar of /usr/lib
 * on a 4 GiB qcow2, attached to a paused TCG VM), interleaved for N rounds:
 * our CLI as installed (bin/virtnbdbackup on dist/) and Debian's
 * virtnbdbackup, both with -z (LZ4 frames), and our plain full for scale.
 * The bench disk's random bytes hardly compress; this shows the speed and
 * the ratio where compression matters.
 *
 * Compression ratio: the data file's size / the disk's data bytes.
 * Targets: >= 3x faster than virtnbdbackup -z, our ratio within 5% of its,
 * peak RSS <= 100 MB.
 */
import { readdir, stat } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { buildDist, REPO } from './dist.js';
import type { BenchResult, BenchRow } from './report.js';
import { roundRows, runRounds, type Contender } from './rounds.js';
import { tarDisk } from './tar-disk.js';
import { startBenchVm } from './vm.js';
import { inBenchWorkdir, runFacts } from './workdir.js';

const MB = 1e6;

export interface CompressBenchOptions {
  rounds: number;
  log: (msg: string) => void;
}

async function dataFileSize(dir: string): Promise<number> {
  let total = 0;
  for (const n of (await readdir(dir)).filter((n) => n.endsWith('.data'))) total += (await stat(join(dir, n))).size;
  return total;
}

export async function benchCompress(opts: CompressBenchOptions): Promise<BenchResult> {
  const { log } = opts;
  const loadBefore = loadavg();
  const disk = await tarDisk(log);
  await buildDist(log);
  return inBenchWorkdir('compress', async ({ dir, track }) => {
    const vm = track(await startBenchVm(disk.path, dir, log, 'usrlib'));
    const name = vm.name;
    const ours = join(REPO, 'bin/virtnbdbackup');
    const all: Contender[] = [
      { name: 'virtnbd full -z (usr/lib tar)', command: (out) => ({ cmd: ours, args: ['-d', name, '-l', 'full', '-z', '-o', out, '-n'] }) },
      { name: 'virtnbdbackup full -z (usr/lib tar)', command: (out) => ({ cmd: 'virtnbdbackup', args: ['-d', name, '-l', 'full', '-z', '-o', out, '-n'] }) },
      { name: 'virtnbd full (usr/lib tar)', command: (out) => ({ cmd: ours, args: ['-d', name, '-l', 'full', '-o', out, '-n'] }) },
    ];
    const runs = await runRounds(all, { rounds: opts.rounds, dir, outcome: (_c, out) => dataFileSize(out), log });
    const rows = roundRows(all, runs, (cmd) => (cmd === ours ? './bin/virtnbdbackup' : cmd));
    const [oursZ, peerZ, plain] = all.map((c) => rows.find((r) => r.name === c.name) as BenchRow) as [BenchRow, BenchRow, BenchRow];
    const speedup = peerZ.medianMs / oursZ.medianMs;
    const ratio = (oursZ.reportedBytes ?? 0) / disk.dataBytes;
    const peerRatio = (peerZ.reportedBytes ?? 0) / disk.dataBytes;
    // Signed: below 0 ours compresses better; the target is symmetric (same codec, same frames expected).
    const ratioDiff = (ratio - peerRatio) / peerRatio;
    const rss = Math.max(oursZ.peakRssBytes, plain.peakRssBytes);
    return {
      bench: 'compress',
      rows,
      targets: [
        { what: 'full -z speed-up over virtnbdbackup -z (usr/lib tar)', value: speedup, limit: 3, unit: 'x', ok: speedup >= 3 },
        { what: 'compression ratio difference to virtnbdbackup -z (usr/lib tar)', value: ratioDiff * 100, limit: 5, unit: '%', ok: Math.abs(ratioDiff) <= 0.05 },
        { what: 'peak RSS virtnbd (usr/lib tar)', value: rss / MB, limit: 100, unit: 'MB', ok: rss <= 100 * MB },
      ],
      info: {
        disk: `${disk.path} (${disk.virtualSize} bytes virtual, ${disk.dataBytes} data bytes: ${disk.tarBytes} bytes of a tar of /usr/lib), attached to paused TCG VM`,
        rounds: opts.rounds,
        'ratio virtnbdbackup -z / virtnbd -z': Number(speedup.toFixed(3)),
        'compressed size / data, virtnbd': Number(ratio.toFixed(4)),
        'compressed size / data, virtnbdbackup': Number(peerRatio.toFixed(4)),
        ...runFacts(loadBefore),
      },
    };
  });
}
