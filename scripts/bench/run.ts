/**
 * `npm run bench -- [NAME] [flags]`: run benchmarks, print a table per
 * benchmark and save each result as JSON under bench/results/.
 *
 * NAME: `nbd`, `backup`, `restore`, `map`; none runs all there are.
 * Flags (nbd): --rounds N (default 3), --connections N (default 1),
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
import { formatResult, saveResult, type BenchResult } from './report.js';

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

const USAGE = 'usage: npm run bench -- [nbd|backup|restore|map] [--rounds N] [--connections N] [--tsx] [--nbdcopy-default] [--no-release] [--request-size BYTES] [--in-flight N] [--node-flag FLAG]';

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

const BENCHES: Record<string, (f: Flags) => Promise<BenchResult>> = {
  nbd: (f) => benchNbd({ ...f, log: (m) => console.error(m) }),
  backup: (f) => benchBackup({ rounds: f.rounds, log: (m) => console.error(m) }),
  restore: (f) => benchRestore({ rounds: f.rounds, log: (m) => console.error(m) }),
  map: (f) => benchMap({ rounds: f.rounds, log: (m) => console.error(m) }),
};

async function main(): Promise<number> {
  const { names, flags } = parse(process.argv.slice(2));
  for (const n of names) {
    if (!BENCHES[n]) throw new Error(`unknown benchmark '${n}'; available: ${Object.keys(BENCHES).join(', ')}`);
  }
  let missed = false;
  for (const name of names.length ? names : Object.keys(BENCHES)) {
    const when = new Date();
    const result = await BENCHES[name](flags);
    console.log(formatResult(result));
    console.log(`saved ${await saveResult(RESULTS, result, when)}`);
    missed ||= result.targets.some((t) => !t.ok);
  }
  return missed ? 1 : 0;
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
