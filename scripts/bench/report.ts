/**
 * What a benchmark returns and how it is shown: rows of measured tools
 * (median wall time, peak RSS, bytes of work done), targets checked against
 * them, and free-form facts about the run; printed as a table and saved as
 * JSON under bench/results/.
 */
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { median } from './measure.js';

export interface BenchRow {
  /** Short label, e.g. 'virtnbd' or 'nbdcopy'. */
  name: string;
  /** The command as run. */
  command: string;
  /** Wall time of each round, ms. */
  runsMs: number[];
  medianMs: number;
  /** Peak RSS of each round, bytes (measured by the kernel). */
  rssRuns: number[];
  /** Highest peak RSS over the rounds. */
  peakRssBytes: number;
  /** Bytes of payload read, as the server saw them (verification pass). */
  serverBytes?: number;
  /** Read requests the server saw (verification pass). */
  serverRequests?: number;
  /** Bytes the tool itself reports. */
  reportedBytes?: number;
}

export interface BenchTarget {
  what: string;
  value: number;
  limit: number;
  unit: string;
  ok: boolean;
}

export interface BenchResult {
  bench: string;
  rows: BenchRow[];
  targets: BenchTarget[];
  /** Facts about the run: load, versions, settings, ratios. */
  info: Record<string, string | number | boolean>;
}

const MB = 1e6;

/** The median of a row's per-round peak RSS: what comparisons between rows use (a single round's peak is noisy). */
export function medianRss(row: BenchRow): number {
  return median(row.rssRuns);
}

function fmtBytes(n: number | undefined): string {
  return n === undefined ? '-' : String(n);
}

function pad(cells: string[][]): string {
  const widths = cells[0].map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  return cells.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ')).join('\n');
}

export function formatResult(r: BenchResult): string {
  const lines: string[] = [];
  lines.push(`== ${r.bench}`);
  const cells = [['tool', 'median s', 'runs s', 'peak RSS MB', 'server bytes', 'server reqs', 'own bytes']];
  for (const row of r.rows) {
    cells.push([
      row.name,
      (row.medianMs / 1000).toFixed(2),
      row.runsMs.map((ms) => (ms / 1000).toFixed(2)).join(' '),
      (row.peakRssBytes / MB).toFixed(1),
      fmtBytes(row.serverBytes),
      row.serverRequests === undefined ? '-' : String(row.serverRequests),
      fmtBytes(row.reportedBytes),
    ]);
  }
  lines.push(pad(cells));
  for (const [k, v] of Object.entries(r.info)) lines.push(`${k}: ${v}`);
  for (const t of r.targets) {
    lines.push(`target ${t.what}: ${t.value.toFixed(2)} ${t.unit} (limit ${t.limit} ${t.unit}) ${t.ok ? 'OK' : 'MISSED'}`);
  }
  for (const row of r.rows) lines.push(`  ${row.name}: ${row.command}`);
  return lines.join('\n');
}

/** Save as bench/results/<bench>-<time>.json (written to .tmp, then renamed). */
export async function saveResult(dir: string, r: BenchResult, when: Date): Promise<string> {
  await mkdir(dir, { recursive: true });
  const stamp = when.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  const path = join(dir, `${r.bench}-${stamp}.json`);
  await writeFile(`${path}.tmp`, `${JSON.stringify({ date: when.toISOString(), ...r }, null, 2)}\n`);
  await rename(`${path}.tmp`, path);
  return path;
}
