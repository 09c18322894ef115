/**
 * virsh, the libvirt oracle of the tests: independent of virtnbd's own
 * libvirt client, so a test that drives a VM through virsh checks our
 * client against libvirt itself.
 */
import { CommandError, run, runSyncQuiet, type RunOptions } from './exec.js';

export const LIBVIRT_URI = 'qemu:///system';

/** Run `virsh -c qemu:///system ARGS...`; resolves with stdout, rejects with a CommandError. */
export async function virsh(args: readonly string[], opts: RunOptions = {}): Promise<string> {
  return (await run('virsh', ['-c', LIBVIRT_URI, ...args], opts)).stdout;
}

/** Best-effort synchronous virsh for process-exit cleanup. */
export function virshSyncQuiet(args: readonly string[]): boolean {
  return runSyncQuiet('virsh', ['-c', LIBVIRT_URI, ...args]);
}

/** True if a CommandError's stderr matches (e.g. /domain is not running/). */
export function failedWith(e: unknown, re: RegExp): boolean {
  return e instanceof CommandError && re.test(e.stderr);
}

/** Names of all defined domains (running or not). */
export async function listDomains(): Promise<string[]> {
  const out = await virsh(['list', '--all', '--name']);
  return out
    .split('\n')
    .map((s) => s.trim())
    .filter(Boolean);
}
