/**
 * `npm run bench -- [NAME...] [flags]`: run benchmarks in this one process,
 * print a table per benchmark and save each result as JSON under
 * bench/results/; with more than one, also a combined summary (all-<time>
 * .json). Each run draws one PNG chart (scripts/bench/chart.ts) beside its
 * JSON: the bench's own, or the combined one.
 *
 * NAME: `backup`, `compress`, `inc`, `restore`, `map`, `nbd`; none runs
 * them all, in that order. A bench that fails is reported and the others
 * still run. --rounds N (default 3) applies to every bench.
 * Flags (nbd): --connections N (default 1),
 * --tsx (also time our reader under tsx), --nbdcopy-default (also time
 * nbdcopy with its default request size), --no-release (also time our
 * reader with a consumer that does not give buffers back), --request-size BYTES and
 * --in-flight N (our NbdReader), --node-flag FLAG (repeatable).
 * The bench disk is cached in /var/tmp/virtnbd-bench/ (VIRTNBD_BENCH_DIR).
 */
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchNbd } from './nbd.js';
import { benchMap } from './map.js';
import { benchBackup } from './backup.js';
import { benchRestore } from './restore.js';
import { benchInc } from './inc.js';
import { benchCompress } from './compress.js';
import { drawChart } from './chart.js';
import { formatResult, saveResult, type BenchResult } from './report.js';
import { formatSummary, saveSummary } from './summary.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const RESULTS = join(REPO, 'bench/results');

interface Flags {
  rounds: number;
  connections: number;
  tsx: boolean;
  nbdcopyDefault: boolean;
  noRelease: boolean;
  requestSize?: number;
  inFlight?: number;
  nodeFlags: string[];
}

const USAGE = 'usage: npm run bench -- [backup|compress|inc|restore|map|nbd...] [--rounds N] [--connections N] [--tsx] [--nbdcopy-default] [--no-release] [--request-size BYTES] [--in-flight N] [--node-flag FLAG]';

function parse(argv: string[]): { names: string[]; flags: Flags } {
  const names: string[] = [];
  const flags: Flags = { rounds: 3, connections: 1, tsx: false, nbdcopyDefault: false, noRelease: false, nodeFlags: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    const int = (): number => {
      const v = Number(value());
      if (!Number.isSafeInteger(v) || v <= 0) throw new Error(`${a} needs a positive integer\n${USAGE}`);
      return v;
    };
    if (a === '--rounds') flags.rounds = int();
    else if (a === '--connections') flags.connections = int();
    else if (a === '--tsx') flags.tsx = true;
    else if (a === '--nbdcopy-default') flags.nbdcopyDefault = true;
    else if (a === '--no-release') flags.noRelease = true;
    else if (a === '--request-size') flags.requestSize = int();
    else if (a === '--in-flight') flags.inFlight = int();
    else if (a === '--node-flag') flags.nodeFlags.push(value());
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else if (a.startsWith('-')) throw new Error(`unknown flag ${a}\n${USAGE}`);
    else names.push(a);
  }
  return { names, flags };
}

const log = (m: string): void => console.error(m);

const BENCHES: Record<string, (f: Flags) => Promise<BenchResult>> = {
  backup: (f) => benchBackup({ rounds: f.rounds, log }),
  compress: (f) => benchCompress({ rounds: f.rounds, log }),
  inc: (f) => benchInc({ rounds: f.rounds, log }),
  restore: (f) => benchRestore({ rounds: f.rounds, log }),
  map: (f) => benchMap({ rounds: f.rounds, log }),
  nbd: (f) => benchNbd({ ...f, log }),
};

/** Exit status: 0 all targets met, 1 some missed, 2 some bench failed. */
async function main(): Promise<number> {
  const { names, flags } = parse(process.argv.slice(2));
  for (const n of names) {
    if (!BENCHES[n]) throw new Error(`unknown benchmark '${n}'; available: ${Object.keys(BENCHES).join(', ')}`);
  }
  const started = new Date();
  const results: BenchResult[] = [];
  let failed = false;
  let lastJson = '';
  for (const name of names.length ? names : Object.keys(BENCHES)) {
    const when = new Date();
    try {
      const result = await BENCHES[name](flags);
      console.log(formatResult(result));
      lastJson = await saveResult(RESULTS, result, when);
      console.log(`saved ${lastJson}`);
      results.push(result);
    } catch (e) {
      console.error(`bench ${name} failed: ${(e as Error).message}`);
      failed = true;
    }
  }
  if (results.length > 1) {
    console.log(formatSummary(results, flags.rounds));
    lastJson = await saveSummary(RESULTS, results, flags.rounds, started);
    console.log(`saved ${lastJson}`);
  }
  if (results.length) {
    const png = lastJson.replace(/\.json$/, '.png');
    const title = `virtnbd benchmarks, ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC, medians of ${flags.rounds}`;
    if (await drawChart(results, png, title, log)) console.log(`saved ${png}`);
  }
  if (failed) return 2;
  return results.some((r) => r.targets.some((t) => !t.ok)) ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    console.error(err.message);
    process.exitCode = 2;
  },
);
