/**
 * Timed rounds of whole commands, shared by the backup and restore benches:
 * each contender runs once per round in an empty output directory, the
 * order rotating so no one always goes first; preparation and clean-up
 * around the timed command are untimed; the output is measured, then
 * removed. Results become report rows (median time, peak RSS, output size).
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { measure, median } from './measure.js';
import type { BenchRow } from './report.js';

const MB = 1e6;

export interface Contender {
  name: string;
  command(out: string): { cmd: string; args: string[] };
  /** Untimed, before the command (start a job, a server...). */
  before?(out: string): Promise<void>;
  /** Untimed, after the command, also when it failed. */
  after?(out: string): Promise<void>;
}

export interface RoundResult {
  ms: number;
  rss: number;
  /** What `outcome` said of the output: its size. */
  size: number;
}

export interface RoundsOptions {
  rounds: number;
  /** Working directory; each run's output goes to `<dir>/out`. */
  dir: string;
  /** Look at a run's output (untimed) and give its size; may throw if the output is wrong. */
  outcome(contender: Contender, out: string): Promise<number>;
  log: (msg: string) => void;
}

export async function runRounds(all: readonly Contender[], opts: RoundsOptions): Promise<Map<string, RoundResult[]>> {
  const runs = new Map<string, RoundResult[]>(all.map((c) => [c.name, []]));
  for (let r = 0; r < opts.rounds; r++) {
    for (let k = 0; k < all.length; k++) {
      const c = all[(r + k) % all.length];
      const out = join(opts.dir, 'out');
      await mkdir(out);
      try {
        await c.before?.(out);
        const { cmd, args } = c.command(out);
        const m = await measure(cmd, args, { cwd: opts.dir, timeoutMs: 900_000 }).finally(() => c.after?.(out));
        const size = await opts.outcome(c, out);
        runs.get(c.name)?.push({ ms: m.wallMs, rss: m.peakRssBytes, size });
        opts.log(`round ${r + 1}/${opts.rounds} ${c.name}: ${(m.wallMs / 1000).toFixed(2)} s, peak RSS ${(m.peakRssBytes / MB).toFixed(1)} MB, ${size} bytes out`);
      } finally {
        await rm(out, { recursive: true, force: true });
      }
    }
  }
  return runs;
}

/** Report rows of the rounds; `display` shortens a command for the table. */
export function roundRows(all: readonly Contender[], runs: Map<string, RoundResult[]>, display: (cmd: string) => string): BenchRow[] {
  return all.map((c) => {
    const rs = runs.get(c.name) ?? [];
    const { cmd, args } = c.command('OUT');
    return {
      name: c.name,
      command: [display(cmd), ...args].join(' '),
      runsMs: rs.map((x) => Math.round(x.ms)),
      medianMs: median(rs.map((x) => x.ms)),
      rssRuns: rs.map((x) => x.rss),
      peakRssBytes: Math.max(...rs.map((x) => x.rss)),
      reportedBytes: rs[0]?.size,
    };
  });
}
