/**
 * The test host: a live libvirtd (qemu:///system) with QEMU, qemu-img and
 * libnbd's tools. A TestHost is one test's corner of it: a scratch
 * directory, images and uniquely named VMs, all undone in the test's
 * teardown (and, as a safety net, at process exit). Names carry the pid of
 * the test process, so a later run can sweep what a crashed one left
 * without touching the VMs of test files running concurrently.
 *
 *     const host = await TestHost.create(t);
 *     const disk = await host.createImage('vda.qcow2', { format: 'qcow2', writes: [{ pattern: 0x11, offset: 0, length: MiB }] });
 *     const vm = await host.defineVm({ disks: [{ target: 'vda', image: disk }] });
 *     await vm.start();
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CleanupStack } from './cleanup.js';
import { domainXml, type DomainSpec } from './domain-xml.js';
import { createImage, type Image, type ImageSpec } from './image.js';
import { listDomains, virsh, virshSyncQuiet } from './virsh.js';
import { TestVm } from './vm.js';

/** Prefix of every VM name and scratch directory the tests make. */
export const TEST_PREFIX = 'vnbdtest';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

/** The host lacks what the live tests need. */
export class HostNotReadyError extends Error {
  constructor(detail: string) {
    super(`test host not ready: ${detail}\nRun \`bash scripts/host-setup.sh\` as root (starts virtlogd and libvirtd, installs QEMU and libnbd tools).`);
    this.name = 'HostNotReadyError';
  }
}

/** What ava's `t` offers that TestHost needs (any object with teardown works). */
export interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

export interface VmSpec {
  /** Disks in guest order; `target` defaults to vda, vdb, ... */
  disks: readonly { image: Image; target?: string }[];
  memoryMiB?: number;
  machine?: 'q35' | 'pc';
  firmware?: 'bios' | 'efi';
  /** Direct kernel boot of a real guest instead of firmware only. */
  kernelBoot?: DomainSpec['kernelBoot'];
  /** Raw XML inside <devices> (serial console, guest-agent channel, ...). */
  extraDevicesXml?: string;
}

let ready: Promise<void> | undefined;

/** Resolve if libvirtd answers on qemu:///system and the tools are there; else throw HostNotReadyError. Checked once per process. */
export function assertHostReady(): Promise<void> {
  ready ??= checkHost();
  return ready;
}

async function checkHost(): Promise<void> {
  try {
    await virsh(['version'], { timeoutMs: 20_000 });
  } catch (e) {
    throw new HostNotReadyError(`libvirtd does not answer \`virsh -c qemu:///system version\`: ${(e as Error).message}`);
  }
  for (const tool of ['qemu-img', 'qemu-io', 'nbdinfo', 'nbdcopy', 'nbdkit']) {
    const found = await Promise.any(
      (process.env.PATH ?? '/usr/bin').split(':').map(async (dir) => {
        await stat(join(dir, tool));
        return true;
      }),
    ).catch(() => false);
    if (!found) throw new HostNotReadyError(`${tool} is not installed`);
  }
}

let swept: Promise<void> | undefined;

export class TestHost {
  private vmCount = 0;

  private constructor(
    /** Unique id `vnbdtest-<pid>-<hex>`: name of the scratch dir, prefix of VM names. */
    readonly id: string,
    /** Scratch directory, removed in teardown. */
    readonly dir: string,
    readonly cleanup: CleanupStack,
  ) {}

  /**
   * Check the host, sweep what crashed earlier runs left (once per process),
   * make a scratch dir and register `t.teardown` to undo everything this
   * host makes.
   */
  static async create(t: Teardown): Promise<TestHost> {
    await assertHostReady();
    // Best effort: a failed sweep must not fail the test that happened to run first.
    swept ??= sweepStale().then(
      () => undefined,
      () => undefined,
    );
    await swept;
    const dir = await mkdtemp(join(tmpdir(), `${TEST_PREFIX}-${process.pid}-`));
    const id = `${TEST_PREFIX}-${process.pid}-${randomBytes(3).toString('hex')}`;
    const cleanup = new CleanupStack();
    cleanup.push({
      label: `scratch dir ${dir}`,
      run: () => rm(dir, { recursive: true, force: true }),
      runSync: () => rmSync(dir, { recursive: true, force: true }),
    });
    const host = new TestHost(id, dir, cleanup);
    t.teardown(() => host.dispose());
    return host;
  }

  /** A path inside the scratch dir. */
  path(...parts: string[]): string {
    return join(this.dir, ...parts);
  }

  /** Create an image `name` in the scratch dir (qcow2 or raw, patterns written before any VM uses it). */
  async createImage(name: string, spec: ImageSpec): Promise<Image> {
    return createImage(this.path(name), spec);
  }

  /** Define (not start) a firmware-only TCG VM named `<id>-vm<N>` with these disks. */
  async defineVm(spec: VmSpec): Promise<TestVm> {
    const name = `${this.id}-vm${++this.vmCount}`;
    const disks = spec.disks.map((d, i) => ({ target: d.target ?? `vd${String.fromCharCode(97 + i)}`, image: d.image }));
    const firmware = spec.firmware ?? 'bios';
    const file = this.path(`${name}.xml`);
    await writeFile(
      file,
      domainXml({
        name,
        disks: disks.map((d) => ({ target: d.target, path: d.image.path, format: d.image.format })),
        memoryMiB: spec.memoryMiB,
        machine: spec.machine,
        firmware,
        kernelBoot: spec.kernelBoot,
        extraDevicesXml: spec.extraDevicesXml,
      }),
    );
    const vm = new TestVm(name, disks, this.dir, firmware, this.cleanup);
    // Registered before define: a define that half-worked is still undone.
    this.cleanup.push({ label: `VM ${name}`, run: () => vm.undefine(), runSync: () => vm.undefineSync() });
    await virsh(['define', file]);
    return vm;
  }

  /** Register an extra undo step (runs before the steps registered earlier). */
  onCleanup(label: string, run: () => Promise<void>, runSync?: () => void): void {
    this.cleanup.push({ label, run, runSync });
  }

  /** Undo everything now (teardown calls this; calling it twice is harmless). */
  async dispose(): Promise<void> {
    await this.cleanup.unwind();
  }
}

/** True if `pid` is a live node process (a test worker), so its VMs are not stale. */
function ownerAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    // A recycled pid that now belongs to something else keeps nothing alive.
    return /node|tsx|ava/.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
  } catch {
    return true;
  }
}

const OWNED = new RegExp(`^${TEST_PREFIX}-(\\d+)-`);

/**
 * Remove VMs, scratch dirs and domain logs that test processes no longer
 * alive left behind (a crash, a SIGKILL on timeout). Things of live test
 * processes, this one included, are left alone.
 */
export async function sweepStale(): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await listDomains()) {
    const m = OWNED.exec(name);
    if (!m || ownerAlive(Number(m[1]))) continue;
    virshSyncQuiet(['destroy', name]);
    await virsh(['undefine', name, '--checkpoints-metadata', '--nvram']).catch(() => undefined);
    removed.push(`VM ${name}`);
  }
  for (const [dir, label] of [
    [tmpdir(), 'dir'],
    ['/var/log/libvirt/qemu', 'log'],
  ] as const) {
    const entries = await readdir(dir).catch(() => [] as string[]);
    for (const entry of entries) {
      const m = OWNED.exec(entry);
      if (!m || ownerAlive(Number(m[1]))) continue;
      await rm(join(dir, entry), { recursive: true, force: true });
      removed.push(`${label} ${join(dir, entry)}`);
    }
  }
  return removed;
}

