/**
 * Dirtying a share of the bench VM's disk between a full and an incremental
 * backup, as a guest would: QEMU's own qemu-io (HMP `qemu-io -d <qom-path>`)
 * writes through vda's block backend, so the checkpoint's dirty bitmap sees
 * it; this works on the paused VM. 64 KiB blocks (the qcow2 cluster and the
 * bitmap's granularity, so the dirty bytes are exactly the bytes written) at
 * seeded scattered positions, the same for every contender. Many HMP
 * commands go into one virsh call (`cmd; cmd; ...`): one virsh per block
 * costs ~90 ms, batched ~7 ms. HMP prints nothing for qemu-io; QEMU logs
 * each result to the domain log, which is checked afterwards.
 */
import { readFile, stat } from 'node:fs/promises';
import { prng } from './disk.js';
import { virsh, type BenchVm } from './vm.js';

export const DIRTY_BLOCK = 64 * 1024;
/** HMP commands per virsh call: keeps the argument well under Linux's 128 KiB limit for one. */
const PER_CALL = 200;

/** `share` of `virtualSize` as seeded, distinct, block-aligned offsets, sorted. */
export function dirtyOffsets(virtualSize: number, share = 0.01, seed = 0xd1e7): number[] {
  const count = Math.ceil((virtualSize * share) / DIRTY_BLOCK);
  const slots = virtualSize / DIRTY_BLOCK;
  const rand = prng(seed);
  const taken = new Set<number>();
  while (taken.size < count) taken.add(Math.floor(rand() * slots) * DIRTY_BLOCK);
  return [...taken].sort((a, b) => a - b);
}

/** Write pattern 0x5a over each block at `offsets` of the VM's vda; throws unless QEMU logged every write. */
export async function dirtyDisk(vm: BenchVm, offsets: readonly number[]): Promise<void> {
  const log = `/var/log/libvirt/qemu/${vm.name}.log`;
  const from = (await stat(log)).size;
  const path = await vm.qomPath();
  for (let i = 0; i < offsets.length; i += PER_CALL) {
    const batch = offsets.slice(i, i + PER_CALL).map((off) => `qemu-monitor-command ${vm.name} --hmp 'qemu-io -d ${path} "write -P 0x5a ${off} ${DIRTY_BLOCK}"'`);
    await virsh([batch.join(' ; ')]);
  }
  const wrote = `wrote ${DIRTY_BLOCK}/${DIRTY_BLOCK} bytes`;
  const until = Date.now() + 10_000;
  for (;;) {
    const text = (await readFile(log)).subarray(from).toString('utf8');
    const done = text.split(wrote).length - 1;
    if (done === offsets.length) return;
    if (Date.now() > until) throw new Error(`dirtying ${vm.name}: QEMU logged ${done} of ${offsets.length} writes:\n${text.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
