/**
 * Child processes that must not outlive us (qemu-nbd here, the ssh session
 * running one on a hypervisor): SIGKILLed if this process exits while they
 * still run, whatever made it exit.
 */
import type { ChildProcess } from 'node:child_process';

const live = new Set<ChildProcess>();
let hooked = false;

/** Kill `child` when this process exits, until forgetOnExit(child). */
export function killOnExit(child: ChildProcess): void {
  live.add(child);
  if (hooked) return;
  hooked = true;
  process.once('exit', () => {
    for (const c of live) c.kill('SIGKILL');
  });
}

/** `child` has ended (or is ended otherwise): leave it alone at exit. */
export function forgetOnExit(child: ChildProcess): void {
  live.delete(child);
}
