/**
 * The run as a PNG chart, drawn by gnuplot (Debian's gnuplot-nox; see
 * scripts/host-setup.sh): top, grouped bars of median seconds per job,
 * ours beside the limit (nbdcopy and friends) and Debian's tool, each bar
 * labelled with its value; bottom, the peak RSS of the same processes with
 * the 100 MB target as a line. A missing gnuplot skips the chart with a
 * message rather than failing the run: the table and the JSON hold the same
 * figures.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from './exec.js';
import { jobs, ROLE_LABEL, ROLES } from './jobs.js';
import type { BenchResult } from './report.js';

const MB = 1e6;
const RSS_TARGET_MB = 100;
/** Bar colours per role: ours stands out, the limit is a neutral grey, Debian a muted blue. */
const COLOURS = ['#d95f02', '#8c8c8c', '#4c78a8'];

/** One line per job: label, then seconds and MB per role ('?' where the job has no such row). */
function dataFile(results: readonly BenchResult[]): string {
  const lines = ['# job ' + ROLES.map((r) => `${r}_s`).join(' ') + ' ' + ROLES.map((r) => `${r}_MB`).join(' ')];
  for (const job of jobs(results)) {
    const secs = ROLES.map((r) => job.cells[r]?.medianMs).map((ms) => (ms === undefined ? '?' : (ms / 1000).toFixed(3)));
    const rss = ROLES.map((r) => job.cells[r]?.peakRssBytes).map((b) => (b === undefined ? '?' : (b / MB).toFixed(1)));
    lines.push([JSON.stringify(job.label), ...secs, ...rss].join(' '));
  }
  return `${lines.join('\n')}\n`;
}

function script(data: string, png: string, title: string, results: readonly BenchResult[]): string {
  const all = jobs(results);
  const width = Math.max(1200, 110 * all.length + 300);
  // Room above the tallest bar and always for the target line, which must not float outside the panel.
  const maxMb = Math.max(0, ...all.flatMap((j) => ROLES.map((r) => (j.cells[r]?.peakRssBytes ?? 0) / MB)));
  const rssTop = Math.ceil(Math.max(maxMb * 1.12, RSS_TARGET_MB * 1.2) / 10) * 10;
  // Clustered histogram of 3 columns: bars at $0-0.25, $0, $0+0.25 (gap 1 -> width 1/4 each).
  const bars = (first: number, fmt: string): string =>
    ROLES.map((r, i) => `'${data}' using ${first + i}:xtic(1) title '${ROLE_LABEL[r]}' lc rgb '${COLOURS[i]}'`)
      .concat(ROLES.map((_, i) => `'${data}' using ($0${i === 0 ? '-0.25' : i === 1 ? '' : '+0.25'}):${first + i}:(sprintf('${fmt}', $${first + i})) with labels offset 0,0.7 font ',9' notitle`))
      .join(', \\\n  ');
  return `set terminal pngcairo size ${width},1000 font 'DejaVu Sans,11'
set output '${png}'
set datafile missing '?'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.9 border -1
set boxwidth 0.9 relative
set grid ytics lc rgb '#dddddd'
set xtics rotate by 25 right nomirror
set key at screen 0.5, screen 0.955 center top horizontal maxrows 1 samplen 2
set tmargin 5
set yrange [0:*]
set offsets 0, 0, graph 0.08, 0
set multiplot layout 2,1 title '${title}'
set title 'median wall time per job (s, lower is better)'
set ylabel 's'
plot ${bars(2, '%.1f')}
set title 'peak RSS per process (MB, from the kernel; target <= ${RSS_TARGET_MB} MB for ours)'
set ylabel 'MB'
unset key
set tmargin 3
set yrange [0:${rssTop}]
set offsets 0, 0, 0, 0
set arrow 1 from graph 0, first ${RSS_TARGET_MB} to graph 1, first ${RSS_TARGET_MB} nohead dt 2 lw 2 lc rgb '#c00000' front
set label 1 '${RSS_TARGET_MB} MB target' at graph 0.995, first ${RSS_TARGET_MB} right offset 0,0.6 tc rgb '#c00000' front
plot ${bars(2 + ROLES.length, '%.0f')}
unset multiplot
`;
}

/** Draw the results as `png`; returns false (and says why) when gnuplot is missing. */
export async function drawChart(results: readonly BenchResult[], png: string, title: string, log: (msg: string) => void): Promise<boolean> {
  if (!existsSync('/usr/bin/gnuplot')) {
    log('no chart: gnuplot is missing (apt-get install gnuplot-nox)');
    return false;
  }
  const dir = await mkdtemp(join(tmpdir(), 'virtnbd-chart-'));
  try {
    const data = join(dir, 'jobs.dat');
    const plot = join(dir, 'chart.gp');
    await writeFile(data, dataFile(results));
    await writeFile(plot, script(data, png, title.replace(/'/g, ''), results));
    await run('/usr/bin/gnuplot', [plot]);
    return true;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
