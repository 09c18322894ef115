/**
 * What every timed bench shares: a working directory under BENCH_DIR with
 * the VMs started for it, both gone when the bench ends, fails or is
 * interrupted (Ctrl-C, SIGTERM), and the facts about the run every result
 * reports (load before and after, node version).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { BENCH_DIR } from './disk.js';
import type { BenchVm } from './vm.js';

export interface BenchWorkdir {
  dir: string;
  /** Keep a VM until the bench ends (stopped and removed then). */
  track(vm: BenchVm): BenchVm;
}

export async function inBenchWorkdir<T>(prefix: string, body: (w: BenchWorkdir) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(BENCH_DIR, `${prefix}-`));
  const vms: BenchVm[] = [];
  const cleanUp = async (): Promise<void> => {
    for (const vm of vms.splice(0)) await vm.stop();
    await rm(dir, { recursive: true, force: true });
  };
  const onSignal = (): void => void cleanUp().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await body({ dir, track: (vm) => (vms.push(vm), vm) });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanUp();
  }
}

/** Load average at the start (take it first thing) and now, and the node version. */
export function runFacts(loadBefore: number[]): Record<string, string> {
  return {
    'load average before': loadBefore.map((x) => x.toFixed(2)).join(' '),
    'load average after': loadavg().map((x) => x.toFixed(2)).join(' '),
    node: process.version,
  };
}
