/**
 * The combined summary of one `npm run bench` over several benches: one
 * line per job with the medians of ours, the limit and Debian's tool, the
 * two ratios the targets are about (ours / limit, Debian / ours), peak RSS
 * and output size, then every target of every bench. Saved as one JSON
 * (all-<time>.json, the benches' own results included) beside theirs.
 */
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { jobs, type Job } from './jobs.js';
import type { BenchResult } from './report.js';

const MB = 1e6;

function pad(cells: string[][]): string {
  const widths = cells[0].map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  return cells.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ')).join('\n');
}

const secs = (ms: number | undefined): string => (ms === undefined ? '-' : (ms / 1000).toFixed(2));
const mb = (b: number | undefined): string => (b === undefined ? '-' : (b / MB).toFixed(1));
const ratio = (a: number | undefined, b: number | undefined): string => (a === undefined || b === undefined ? '-' : `${(a / b).toFixed(2)}x`);

function line(j: Job): string[] {
  const { virtnbd: ours, limit, debian } = j.cells;
  return [
    j.label,
    secs(ours?.medianMs),
    secs(limit?.medianMs),
    secs(debian?.medianMs),
    ratio(ours?.medianMs, limit?.medianMs),
    ratio(debian?.medianMs, ours?.medianMs),
    mb(ours?.peakRssBytes),
    mb(limit?.peakRssBytes),
    mb(debian?.peakRssBytes),
    ours?.outBytes === undefined ? '-' : String(ours.outBytes),
    debian?.outBytes === undefined ? '-' : String(debian.outBytes),
  ];
}

export function formatSummary(results: readonly BenchResult[], rounds: number): string {
  const head = ['job', 'ours s', 'limit s', 'Debian s', 'ours/limit', 'Debian/ours', 'RSS ours MB', 'RSS limit MB', 'RSS Debian MB', 'out ours', 'out Debian'];
  const lines = [`== summary (medians of ${rounds} round${rounds === 1 ? '' : 's'}; limit: nbdcopy, qemu-nbd or the dirty read; Debian: virtnbdbackup 1.9 / virtnbdrestore)`];
  lines.push(pad([head, ...jobs(results).map(line)]));
  for (const r of results) {
    for (const t of r.targets) lines.push(`${t.ok ? 'OK    ' : 'MISSED'} ${r.bench}: ${t.what}: ${t.value.toFixed(2)} ${t.unit} (limit ${t.limit} ${t.unit})`);
  }
  return lines.join('\n');
}

/** Save as bench/results/all-<time>.json (written to .tmp, then renamed). */
export async function saveSummary(dir: string, results: readonly BenchResult[], rounds: number, when: Date): Promise<string> {
  await mkdir(dir, { recursive: true });
  const stamp = when.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  const path = join(dir, `all-${stamp}.json`);
  const targets = results.flatMap((r) => r.targets.map((t) => ({ bench: r.bench, ...t })));
  await writeFile(`${path}.tmp`, `${JSON.stringify({ date: when.toISOString(), rounds, jobs: jobs(results), targets, results }, null, 2)}\n`);
  await rename(`${path}.tmp`, path);
  return path;
}
