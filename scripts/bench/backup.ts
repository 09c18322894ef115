/**
 * `npm run bench -- backup`: full backups of the bench VM (scripts/bench/vm.ts,
 * the bench disk attached to a paused TCG domain), interleaved for N rounds:
 *
 * - virtnbd full and full -z: our CLI as installed (bin/virtnbdbackup on
 *   dist/, compiled first), the whole command timed, libvirt job included;
 * - virtnbd full (16 GiB): the same on a second VM whose disk holds the same
 *   data with a 16 GiB virtual size: its peak RSS must match the 4 GiB one
 *   (+-10%), memory must not grow with the disk;
 * - virtnbdbackup full and full -z: Debian's package, the same commands;
 * - nbdcopy: from the export of a pull-mode backup job started with virsh
 *   (untimed) to a sparse raw file with --flush, as the limit: it only
 *   copies, reading the data extents, and syncs at the end like our
 *   FileSink does.
 *
 * Every output lands under BENCH_DIR on the same filesystem and is removed
 * after its round. Reported: medians, peak RSS (the kernel's, of the whole
 * process tree), output sizes and the compression ratio of both -z runs.
 */
import { readdir, stat } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { benchDisk } from './disk.js';
import { buildDist, REPO } from './dist.js';
import { run } from './exec.js';
import { medianRss, type BenchResult, type BenchRow } from './report.js';
import { roundRows, runRounds, type Contender } from './rounds.js';
import { beginPullJob, endJob, startBenchVm, type BenchVm } from './vm.js';
import { inBenchWorkdir, runFacts } from './workdir.js';

const MB = 1e6;
const GiB = 1024 ** 3;

export interface BackupBenchOptions {
  rounds: number;
  log: (msg: string) => void;
}

async function dataFileSize(dir: string): Promise<number> {
  const names = await readdir(dir).catch(() => [] as string[]);
  let total = 0;
  for (const n of names.filter((n) => n.endsWith('.data') || n.endsWith('.raw'))) total += (await stat(join(dir, n))).size;
  return total;
}

function contenders(vm: BenchVm, vm16: BenchVm, work: string): Contender[] {
  const ours = join(REPO, 'bin/virtnbdbackup');
  const socket = join(work, 'job.sock');
  return [
    { name: 'virtnbd full', command: (out) => ({ cmd: ours, args: ['-d', vm.name, '-l', 'full', '-o', out, '-n'] }) },
    { name: 'virtnbd full (16 GiB)', command: (out) => ({ cmd: ours, args: ['-d', vm16.name, '-l', 'full', '-o', out, '-n'] }) },
    { name: 'virtnbdbackup full', command: (out) => ({ cmd: 'virtnbdbackup', args: ['-d', vm.name, '-l', 'full', '-o', out, '-n'] }) },
    {
      name: 'nbdcopy',
      before: () => beginPullJob(vm, socket, work),
      command: (out) => ({ cmd: 'nbdcopy', args: ['--flush', `nbd+unix:///vda?socket=${socket}`, join(out, 'vda.raw')] }),
      after: () => endJob(vm),
    },
    { name: 'virtnbd full -z', command: (out) => ({ cmd: ours, args: ['-d', vm.name, '-l', 'full', '-z', '-o', out, '-n'] }) },
    { name: 'virtnbdbackup full -z', command: (out) => ({ cmd: 'virtnbdbackup', args: ['-d', vm.name, '-l', 'full', '-z', '-o', out, '-n'] }) },
  ];
}

export async function benchBackup(opts: BackupBenchOptions): Promise<BenchResult> {
  const { log } = opts;
  const loadBefore = loadavg();
  const disk = await benchDisk(log);
  const disk16 = await benchDisk(log, 16 * GiB);
  await buildDist(log);
  return inBenchWorkdir('backup', async ({ dir, track }) => {
    const vm = track(await startBenchVm(disk.path, dir, log));
    const vm16 = track(await startBenchVm(disk16.path, dir, log, '16g'));
    const all = contenders(vm, vm16, dir);
    const runs = await runRounds(all, { rounds: opts.rounds, dir, outcome: (_c, out) => dataFileSize(out), log });
    const rows = roundRows(all, runs, (cmd) => (cmd === join(REPO, 'bin/virtnbdbackup') ? './bin/virtnbdbackup' : cmd));
    const row = (name: string): BenchRow => rows.find((r) => r.name === name) as BenchRow;
    const ours = row('virtnbd full');
    const ours16 = row('virtnbd full (16 GiB)');
    const rss16 = medianRss(ours16) / medianRss(ours) - 1;
    const oursZ = row('virtnbd full -z');
    const peer = row('virtnbdbackup full');
    const peerZ = row('virtnbdbackup full -z');
    const nbdcopy = row('nbdcopy');
    const vsNbdcopy = ours.medianMs / nbdcopy.medianMs;
    const speedup = peer.medianMs / ours.medianMs;
    const speedupZ = peerZ.medianMs / oursZ.medianMs;
    const ratioZ = (oursZ.reportedBytes ?? 0) / disk.dataBytes;
    const peerRatioZ = (peerZ.reportedBytes ?? 0) / disk.dataBytes;
    const ratioDiff = Math.abs(ratioZ - peerRatioZ) / peerRatioZ;
    const peakOurs = Math.max(ours.peakRssBytes, oursZ.peakRssBytes, ours16.peakRssBytes);
    return {
      bench: 'backup',
      rows,
      targets: [
        { what: 'full time virtnbd/nbdcopy', value: vsNbdcopy, limit: 1.3, unit: 'x', ok: vsNbdcopy <= 1.3 },
        { what: 'full speed-up over virtnbdbackup', value: speedup, limit: 3, unit: 'x', ok: speedup >= 3 },
        { what: 'full -z speed-up over virtnbdbackup -z', value: speedupZ, limit: 3, unit: 'x', ok: speedupZ >= 3 },
        { what: 'compression ratio difference to virtnbdbackup -z', value: ratioDiff * 100, limit: 5, unit: '%', ok: ratioDiff <= 0.05 },
        { what: 'peak RSS virtnbd', value: peakOurs / MB, limit: 100, unit: 'MB', ok: peakOurs <= 100 * MB },
        { what: 'peak RSS virtnbd full, 16 GiB vs 4 GiB disk (medians of the rounds)', value: rss16 * 100, limit: 10, unit: '%', ok: Math.abs(rss16) <= 0.1 },
      ],
      info: {
        disk: `${disk.path} (${disk.virtualSize} bytes virtual, ${disk.dataBytes} data bytes in ${disk.dataExtents} extents), attached to paused TCG VM`,
        'disk (16 GiB)': `${disk16.path} (${disk16.virtualSize} bytes virtual, ${disk16.dataBytes} data bytes in ${disk16.dataExtents} extents)`,
        rounds: opts.rounds,
        'ratio virtnbd full / nbdcopy (medians)': Number(vsNbdcopy.toFixed(3)),
        'ratio virtnbdbackup full / virtnbd full': Number(speedup.toFixed(3)),
        'ratio virtnbdbackup -z / virtnbd -z': Number(speedupZ.toFixed(3)),
        'compressed size / data, virtnbd': Number(ratioZ.toFixed(4)),
        'compressed size / data, virtnbdbackup': Number(peerRatioZ.toFixed(4)),
        'virtnbdbackup version': (await run('virtnbdbackup', ['-V']).catch(() => ({ stdout: '?' }))).stdout.trim(),
        ...runFacts(loadBefore),
      },
    };
  });
}
