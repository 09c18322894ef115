/**
 * Which job a report row measures and in which role, so the summary and the
 * chart can put ours, the limit and Debian's tool for one job side by side:
 * a row's name is its tool ('virtnbd', 'nbdcopy', 'virtnbdbackup', ...)
 * followed by what differs from the bench's plain job ('full -z',
 * '(16 GiB)', ...).
 */
import type { BenchResult } from './report.js';

export type Role = 'virtnbd' | 'limit' | 'debian';

export const ROLES: readonly Role[] = ['virtnbd', 'limit', 'debian'];

export const ROLE_LABEL: Record<Role, string> = {
  virtnbd: 'virtnbd (ours)',
  limit: 'limit (nbdcopy, qemu-nbd, dirty read)',
  debian: 'Debian virtnbdbackup / virtnbdrestore',
};

/** The job a bench's plain rows measure. */
const PLAIN_JOB: Record<string, string> = {
  backup: 'full',
  compress: 'full',
  inc: '1% dirty',
  restore: 'restore',
  nbd: 'NBD read',
  map: 'map read',
};

const TOOL = /^(virtnbdbackup|virtnbdrestore|virtnbdmap|virtnbd|nbdcopy|qemu-nbd|dirty read)\b\s*/;

/** Variants that are the same job (the limit's own details, not a different job). */
const SAME_JOB = new Set(['', 'inc', '(plain)', '(restored qcow2)', '(limit)']);

export function roleOf(row: string): Role {
  if (/^virtnbd(backup|restore)\b/.test(row)) return 'debian';
  if (/^(nbdcopy|qemu-nbd)|\(limit\)/.test(row)) return 'limit';
  return 'virtnbd';
}

export function jobOf(bench: string, row: string): string {
  const plain = PLAIN_JOB[bench] ?? bench;
  const rest = row.replace(TOOL, '').trim();
  if (SAME_JOB.has(rest)) return plain;
  return rest.startsWith('(') ? `${plain} ${rest}` : rest;
}

export interface JobCell {
  medianMs: number;
  /** Peak RSS of our process for the job; undefined where the bench does not measure it. */
  peakRssBytes?: number;
  /** The output size the row reports (backup data files, restored image...). */
  outBytes?: number;
  row: string;
}

/**
 * The map bench times a reader (nbdcopy) against each server: its rows'
 * RSS is the reader's, the server's RSS is in the info (ours) or not
 * measured (qemu-nbd, a daemon).
 */
function peakRss(r: BenchResult, row: BenchResult['rows'][number]): number | undefined {
  if (r.bench !== 'map') return row.peakRssBytes;
  const mb = r.info[`virtnbdmap server peak RSS MB ${row.name.replace(/^virtnbdmap /, '')}`];
  return typeof mb === 'number' ? mb * 1e6 : undefined;
}

export interface Job {
  label: string;
  cells: Partial<Record<Role, JobCell>>;
}

/** Jobs in the order the benches ran; a second row of one role for one job (tsx, no-release variants) keeps the first. */
export function jobs(results: readonly BenchResult[]): Job[] {
  const out: Job[] = [];
  for (const r of results) {
    for (const row of r.rows) {
      const label = `${r.bench}: ${jobOf(r.bench, row.name)}`;
      let job = out.find((j) => j.label === label);
      if (!job) out.push((job = { label, cells: {} }));
      const role = roleOf(row.name);
      job.cells[role] ??= { medianMs: row.medianMs, peakRssBytes: peakRss(r, row), outBytes: row.reportedBytes, row: row.name };
    }
  }
  return out;
}
