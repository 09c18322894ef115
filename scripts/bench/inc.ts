/**
 * `npm run bench -- inc`: incremental backups of the bench VM with 1% of
 * its virtual size dirty (41 MiB of the 4 GiB as 64 KiB blocks, seeded
 * scattered positions; scripts/bench/dirty.ts), interleaved for N rounds.
 * Each contender's round, untimed: delete the VM's checkpoints (with their
 * bitmaps: ours and virtnbdbackup both name them virtnbdbackup.N), its own
 * full backup into its output directory, then the dirtying; timed: the
 * incremental backup alone.
 *
 * - virtnbd inc: our CLI as installed (bin/virtnbdbackup on dist/);
 * - virtnbdbackup inc: Debian's package, the same command;
 * - dirty read (limit): "reading just those bytes", paying the same libvirt
 *   job cost a backup pays: one timed bash command that starts the pull-mode
 *   job since virtnbdbackup.0 creating virtnbdbackup.1 (virsh backup-begin
 *   with both XMLs, as an incremental backup does), reads exactly the dirty
 *   extents (meta context qemu:dirty-bitmap:backup-vda) into a sparse file
 *   and fsyncs it (scripts/bench/read-dirty.py, libnbd's Python binding:
 *   block status, then one pread per extent), then ends the job
 *   (domjobabort). Its full backup is a plain checkpoint: it reads nothing.
 *
 * Own bytes: the incremental data file's size; for the limit, the bytes its
 * sparse file allocates.
 */
import { readdir, stat } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { benchDisk } from './disk.js';
import { DIRTY_BLOCK, dirtyDisk, dirtyOffsets } from './dirty.js';
import { buildDist, REPO } from './dist.js';
import { run } from './exec.js';
import type { BenchResult, BenchRow } from './report.js';
import { roundRows, runRounds, type Contender } from './rounds.js';
import { createCheckpoint, endJob, incrementalJobXml, startBenchVm, type BenchVm } from './vm.js';
import { inBenchWorkdir, runFacts } from './workdir.js';

const MB = 1e6;
const CONTEXT = 'qemu:dirty-bitmap:backup-vda';

/** The limit's timed command: $1 domain, $2 backup XML, $3 checkpoint XML, $4 reader, $5 NBD URI, $6 output. */
const LIMIT_SCRIPT = `set -e
virsh -q -c qemu:///system backup-begin "$1" "$2" "$3" >/dev/null
trap 'virsh -q -c qemu:///system domjobabort "$1" >/dev/null' EXIT
/usr/bin/python3 "$4" "$5" "$6" ${CONTEXT}`;

export interface IncBenchOptions {
  rounds: number;
  log: (msg: string) => void;
}

/** Size of the incremental data file(s); for a raw sparse file, what it allocates. */
async function incrementalSize(out: string): Promise<number> {
  let total = 0;
  for (const n of await readdir(out)) {
    const s = await stat(join(out, n));
    if (/\.inc\..*\.data$/.test(n)) total += s.size;
    else if (n.endsWith('.raw')) total += s.blocks * 512;
  }
  return total;
}

async function contenders(vm: BenchVm, work: string, offsets: readonly number[]): Promise<Contender[]> {
  const ours = join(REPO, 'bin/virtnbdbackup');
  const socket = join(work, 'inc.sock');
  const xml = await incrementalJobXml(work, socket, 'virtnbdbackup.0', 'virtnbdbackup.1');
  const fullThenDirty = (cmd: string) => async (out: string) => {
    await vm.deleteCheckpoints();
    await run(cmd, ['-d', vm.name, '-l', 'full', '-o', out, '-n'], { cwd: work, timeoutMs: 900_000 });
    await dirtyDisk(vm, offsets);
  };
  return [
    { name: 'virtnbd inc', before: fullThenDirty(ours), command: (out) => ({ cmd: ours, args: ['-d', vm.name, '-l', 'inc', '-o', out, '-n'] }) },
    { name: 'virtnbdbackup inc', before: fullThenDirty('virtnbdbackup'), command: (out) => ({ cmd: 'virtnbdbackup', args: ['-d', vm.name, '-l', 'inc', '-o', out, '-n'] }) },
    {
      name: 'dirty read (limit)',
      async before() {
        await vm.deleteCheckpoints();
        await createCheckpoint(vm, work, 'virtnbdbackup.0');
        await dirtyDisk(vm, offsets);
      },
      command: (out) => ({
        cmd: 'bash',
        args: ['-c', LIMIT_SCRIPT, 'dirty-read', vm.name, xml.backup, xml.checkpoint, join(REPO, 'scripts/bench/read-dirty.py'), `nbd+unix:///vda?socket=${socket}`, join(out, 'vda.dirty.raw')],
      }),
      after: () => endJob(vm),
    },
  ];
}

export async function benchInc(opts: IncBenchOptions): Promise<BenchResult> {
  const { log } = opts;
  const loadBefore = loadavg();
  const disk = await benchDisk(log);
  await buildDist(log);
  const offsets = dirtyOffsets(disk.virtualSize);
  const dirtyBytes = offsets.length * DIRTY_BLOCK;
  return inBenchWorkdir('inc', async ({ dir, track }) => {
    const vm = track(await startBenchVm(disk.path, dir, log));
    const all = await contenders(vm, dir, offsets);
    const runs = await runRounds(all, { rounds: opts.rounds, dir, outcome: (_c, out) => incrementalSize(out), log });
    const rows = roundRows(all, runs, (cmd) => (cmd === join(REPO, 'bin/virtnbdbackup') ? './bin/virtnbdbackup' : cmd)).map((r) =>
      // The limit's command line holds the whole script; the header comment says what it does.
      r.name === 'dirty read (limit)' ? { ...r, command: `bash: virsh backup-begin (incremental + checkpoint); read-dirty.py ${CONTEXT}; virsh domjobabort` } : r,
    );
    const row = (name: string): BenchRow => rows.find((r) => r.name === name) as BenchRow;
    const ours = row('virtnbd inc');
    const vsLimit = ours.medianMs / row('dirty read (limit)').medianMs;
    const speedup = row('virtnbdbackup inc').medianMs / ours.medianMs;
    return {
      bench: 'inc',
      rows,
      targets: [
        { what: 'inc time virtnbd/dirty read', value: vsLimit, limit: 2, unit: 'x', ok: vsLimit <= 2 },
        { what: 'peak RSS virtnbd inc', value: ours.peakRssBytes / MB, limit: 100, unit: 'MB', ok: ours.peakRssBytes <= 100 * MB },
      ],
      info: {
        disk: `${disk.path} (${disk.virtualSize} bytes virtual, ${disk.dataBytes} data bytes), attached to paused TCG VM`,
        dirty: `${offsets.length} blocks of ${DIRTY_BLOCK} bytes = ${dirtyBytes} bytes (${((dirtyBytes / disk.virtualSize) * 100).toFixed(2)}% of the virtual size), written with qemu-io through QEMU`,
        rounds: opts.rounds,
        'ratio virtnbd inc / dirty read (medians)': Number(vsLimit.toFixed(3)),
        'ratio virtnbdbackup inc / virtnbd inc': Number(speedup.toFixed(3)),
        ...runFacts(loadBefore),
      },
    };
  });
}
