/**
 * A test VM driven through virsh: lifecycle, writes into a running VM's
 * disks without a guest OS (QEMU's HMP `qemu-io`), checkpoints, and
 * pull-mode backup jobs by hand. Made by TestHost.defineVm, which registers
 * its cleanup; every job begun here registers its own abort.
 */
import { existsSync, rmSync } from 'node:fs';
import { open, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { XMLParser } from 'fast-xml-parser';
import type { CleanupStack } from './cleanup.js';
import { backupXml, checkpointXml } from './domain-xml.js';
import type { Image, PatternWrite } from './image.js';
import type { NbdEndpoint } from './nbd-oracle.js';
import { failedWith, virsh, virshSyncQuiet } from './virsh.js';

export interface VmDisk {
  /** vda, vdb, ... */
  target: string;
  image: Image;
}

/** A qemu-io command run in a live VM reported failure. */
export class QemuIoError extends Error {
  constructor(
    readonly vm: string,
    readonly command: string,
    readonly output: string,
  ) {
    super(`qemu-io "${command}" in VM ${vm} failed: ${output.trim() || '(no output)'}`);
    this.name = 'QemuIoError';
  }
}

export interface BackupOptions {
  /** Disks to export (default: all of the VM's disks). */
  disks?: readonly string[];
  /** Back up changes since this checkpoint (incremental/differential); omitted: full. */
  incremental?: string;
  /** Create this checkpoint together with the job (atomically, as virtnbdbackup does). */
  checkpoint?: string;
  /** Disks the new checkpoint covers (default: the exported ones). */
  checkpointDisks?: readonly string[];
}

/** One disk of a running pull-mode backup job, as `virsh backup-dumpxml` describes it. */
export interface BackupExport extends NbdEndpoint {
  target: string;
  /** Dirty bitmap exported with the disk (incremental jobs), e.g. `backup-vda`; meta context `qemu:dirty-bitmap:<it>`. */
  bitmap?: string;
  scratch: string;
}

/** A running pull-mode backup job. `abort()` ends it (domjobabort); teardown does it too if the test did not. */
export class BackupJob {
  private ended = false;

  constructor(
    readonly vm: TestVm,
    readonly socket: string,
    readonly exports: ReadonlyMap<string, BackupExport>,
    readonly incremental: string | undefined,
    readonly checkpoint: string | undefined,
  ) {}

  /** The export of disk `target`; throws if the job does not export it. */
  export(target: string): BackupExport {
    const e = this.exports.get(target);
    if (!e) throw new Error(`backup job of VM ${this.vm.name} exports no disk ${target} (has ${[...this.exports.keys()].join(', ')})`);
    return e;
  }

  /** `nbd+unix:///<export>?socket=<socket>` for disk `target`. */
  uri(target: string): string {
    const e = this.export(target);
    return `nbd+unix:///${e.exportName}?socket=${e.socket}`;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /**
   * End the job. domjobabort returns before libvirt has stopped the NBD
   * server and removed the socket and scratch files, so wait (bounded) for
   * those to go: after abort() resolves, the job is really over.
   */
  async abort(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    await this.vm.abortJob();
    const leftovers = [this.socket, ...[...this.exports.values()].map((e) => e.scratch)];
    const deadline = Date.now() + JOB_END_WAIT_MS;
    while (leftovers.some((f) => existsSync(f))) {
      if (Date.now() > deadline) {
        throw new Error(`backup job of VM ${this.vm.name} aborted, but after ${JOB_END_WAIT_MS} ms these remain: ${leftovers.filter((f) => existsSync(f)).join(', ')}`);
      }
      await sleep(20);
    }
  }
}

const xml = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  isArray: (name) => name === 'disk',
});

type XmlNode = Record<string, unknown>;

export class TestVm {
  /** Serializes live qemu-io commands: each waits for its own result in the domain log. */
  private ioQueue: Promise<unknown> = Promise.resolve();
  private jobCount = 0;

  constructor(
    readonly name: string,
    readonly disks: readonly VmDisk[],
    /** Scratch directory of the owning TestHost: job sockets, scratch files, XML go here. */
    readonly dir: string,
    readonly firmware: 'bios' | 'efi',
    private readonly cleanup: CleanupStack,
  ) {}

  /** QEMU's log of this domain; qemu-io run over HMP prints its results here. */
  get logPath(): string {
    return `/var/log/libvirt/qemu/${this.name}.log`;
  }

  disk(target: string): VmDisk {
    const d = this.disks.find((x) => x.target === target);
    if (!d) throw new Error(`VM ${this.name} has no disk ${target} (has ${this.disks.map((x) => x.target).join(', ')})`);
    return d;
  }

  async start(): Promise<void> {
    await virsh(['start', this.name]);
  }

  async isActive(): Promise<boolean> {
    return (await virsh(['domstate', this.name])).trim() === 'running';
  }

  /** State as virsh says it: running, shut off, paused, ... */
  async state(): Promise<string> {
    return (await virsh(['domstate', this.name])).trim();
  }

  /**
   * Stop the VM. `graceful` lets QEMU flush and close its images cleanly
   * (persistent dirty bitmaps stay consistent for offline backups); a VM
   * that is not running is not an error.
   */
  async destroy(opts: { graceful?: boolean } = {}): Promise<void> {
    try {
      await virsh(['destroy', this.name, ...(opts.graceful ? ['--graceful'] : [])]);
    } catch (e) {
      if (!failedWith(e, /not running/)) throw e;
    }
  }

  /** Destroy if running, then undefine with checkpoint metadata and nvram. Used by teardown. */
  async undefine(): Promise<void> {
    try {
      await this.destroy();
      await virsh(['undefine', this.name, '--checkpoints-metadata', '--nvram']);
    } catch (e) {
      // Never defined (define failed) or already gone: nothing to undo.
      if (!failedWith(e, /failed to get domain|Domain not found/i)) throw e;
    }
    await rm(this.logPath, { force: true });
  }

  undefineSync(): void {
    virshSyncQuiet(['destroy', this.name]);
    virshSyncQuiet(['undefine', this.name, '--checkpoints-metadata', '--nvram']);
    rmSync(this.logPath, { force: true });
  }

  /** The live (or inactive, if `inactive`) domain XML. */
  async dumpXml(opts: { inactive?: boolean } = {}): Promise<string> {
    return virsh(['dumpxml', this.name, ...(opts.inactive ? ['--inactive'] : [])]);
  }

  /**
   * QOM path of the block backend of disk `target` in the running QEMU, for
   * `qemu-io -d`: `/machine/peripheral/<alias>/virtio-backend`, the alias
   * (e.g. virtio-disk0) read from the live XML since libvirt assigns it.
   */
  async qomPath(target: string): Promise<string> {
    const doc = xml.parse(await this.dumpXml()) as { domain: { devices: { disk?: XmlNode[] } } };
    const disk = (doc.domain.devices.disk ?? []).find((d) => (d.target as XmlNode | undefined)?.['@dev'] === target);
    const alias = (disk?.alias as XmlNode | undefined)?.['@name'];
    if (typeof alias !== 'string') throw new Error(`VM ${this.name}: no device alias for disk ${target}; is the VM running?`);
    return `/machine/peripheral/${alias}/virtio-backend`;
  }

  /** Run an HMP command; returns its output. */
  async hmp(command: string): Promise<string> {
    return virsh(['qemu-monitor-command', this.name, '--hmp', command]);
  }

  /**
   * Run one qemu-io command on disk `target` of the running VM, as if the
   * guest had done the I/O (the dirty bitmaps see it). HMP returns nothing
   * for qemu-io; QEMU prints the result to its log, so we wait there for it
   * (bounded) and throw a QemuIoError if qemu-io reported a failure.
   */
  async qemuIo(target: string, command: string): Promise<string> {
    if (command.includes('"')) throw new Error(`qemuIo: command must not contain '"': ${command}`);
    const job = this.ioQueue.then(async () => {
      const path = await this.qomPath(target);
      const from = await fileSize(this.logPath);
      const hmpOut = await this.hmp(`qemu-io -d ${path} "${command}"`);
      if (hmpOut.trim()) throw new QemuIoError(this.name, command, hmpOut);
      const out = await waitForQemuIoResult(this.logPath, from, `qemu-io "${command}" in VM ${this.name}`);
      if (QEMU_IO_FAILURE.test(out)) throw new QemuIoError(this.name, command, out);
      return out;
    });
    this.ioQueue = job.catch(() => undefined);
    return job;
  }

  /** Write `length` bytes of `pattern` at `offset` into disk `target` of the running VM. */
  async writePattern(target: string, w: PatternWrite): Promise<void> {
    await this.qemuIo(target, `write -P ${checkByte(w.pattern)} ${checkInt(w.offset)} ${checkInt(w.length)}`);
  }

  /** Write zeros (`write -z`) over a range of disk `target` of the running VM. */
  async writeZeroes(target: string, offset: number, length: number): Promise<void> {
    await this.qemuIo(target, `write -z ${checkInt(offset)} ${checkInt(length)}`);
  }

  /** True if disk `target` of the running VM reads `pattern` over the range (qemu-io `read -P`). */
  async hasPattern(target: string, w: PatternWrite): Promise<boolean> {
    try {
      await this.qemuIo(target, `read -P ${checkByte(w.pattern)} ${checkInt(w.offset)} ${checkInt(w.length)}`);
      return true;
    } catch (e) {
      if (e instanceof QemuIoError && /Pattern verification failed/.test(e.output)) return false;
      throw e;
    }
  }

  /** Create a checkpoint (dirty bitmaps) on `disks` (default: all qcow2 disks) outside a backup job. */
  async createCheckpoint(name: string, opts: { disks?: readonly string[] } = {}): Promise<void> {
    const disks = opts.disks ?? this.disks.filter((d) => d.image.format === 'qcow2').map((d) => d.target);
    const skip = this.disks.map((d) => d.target).filter((t) => !disks.includes(t));
    const file = join(this.dir, `checkpoint-${name}.xml`);
    await writeFile(file, checkpointXml({ name, disks, skip }));
    await virsh(['checkpoint-create', this.name, file]);
  }

  /** Checkpoint names, parents before children. */
  async checkpoints(): Promise<string[]> {
    const out = await virsh(['checkpoint-list', this.name, '--name', '--topological']);
    return out
      .split('\n')
      .map((s) => s.trim())
      .filter(Boolean);
  }

  /** `virsh checkpoint-dumpxml`. */
  async checkpointXml(name: string): Promise<string> {
    return virsh(['checkpoint-dumpxml', this.name, name]);
  }

  /** Delete a checkpoint (and its bitmaps, unless `metadataOnly`). */
  async deleteCheckpoint(name: string, opts: { metadataOnly?: boolean } = {}): Promise<void> {
    await virsh(['checkpoint-delete', this.name, name, ...(opts.metadataOnly ? ['--metadata'] : [])]);
  }

  /**
   * Begin a pull-mode backup job by hand (`virsh backup-begin`): QEMU serves
   * each disk over NBD on a unix socket in the host dir; incremental jobs
   * also export the dirty bitmap since `incremental`. Returns once the
   * exports are up; the job runs until `abort()` (or teardown).
   */
  async beginBackup(opts: BackupOptions = {}): Promise<BackupJob> {
    const n = ++this.jobCount;
    const targets = opts.disks ?? this.disks.map((d) => d.target);
    for (const t of targets) this.disk(t);
    const socket = join(this.dir, `${this.name.slice(-6)}-job${n}.sock`);
    const disks = targets.map((target) => ({ target, scratch: join(this.dir, `job${n}-${target}.scratch.qcow2`) }));
    const skip = this.disks.map((d) => d.target).filter((t) => !targets.includes(t));
    const backupFile = join(this.dir, `job${n}-backup.xml`);
    await writeFile(backupFile, backupXml({ socket, disks, skip, incremental: opts.incremental }));
    const args = ['backup-begin', this.name, backupFile];
    if (opts.checkpoint !== undefined) {
      const cpDisks = opts.checkpointDisks ?? targets;
      const cpFile = join(this.dir, `job${n}-checkpoint.xml`);
      await writeFile(
        cpFile,
        checkpointXml({
          name: opts.checkpoint,
          disks: cpDisks,
          skip: this.disks.map((d) => d.target).filter((t) => !cpDisks.includes(t)),
        }),
      );
      args.push(cpFile);
    }
    await virsh(args);
    const job = new BackupJob(this, socket, await this.jobExports(socket), opts.incremental, opts.checkpoint);
    this.cleanup.push({
      label: `backup job ${n} of VM ${this.name}`,
      run: () => job.abort().catch((e: unknown) => (failedWith(e, /no job is active|not running|failed to get domain/i) ? undefined : Promise.reject(e))),
      // The VM's own sync cleanup (destroy) ends the job at process exit.
    });
    return job;
  }

  private async jobExports(socket: string): Promise<Map<string, BackupExport>> {
    const doc = xml.parse(await virsh(['backup-dumpxml', this.name])) as { domainbackup: { disks?: { disk?: XmlNode[] } } };
    const out = new Map<string, BackupExport>();
    for (const d of doc.domainbackup.disks?.disk ?? []) {
      if (d['@backup'] !== 'yes') continue;
      const target = String(d['@name']);
      out.set(target, {
        target,
        socket,
        exportName: String(d['@exportname'] ?? target),
        bitmap: d['@exportbitmap'] === undefined ? undefined : String(d['@exportbitmap']),
        scratch: String((d.scratch as XmlNode | undefined)?.['@file'] ?? ''),
      });
    }
    return out;
  }

  /** End the running job (`virsh domjobabort`); libvirt removes the socket and scratch files. */
  async abortJob(): Promise<void> {
    await virsh(['domjobabort', this.name]);
  }

  /** `virsh domjobinfo` as key/value pairs ("Job type" -> "Unbounded", ...). */
  async jobInfo(): Promise<Record<string, string>> {
    const out = await virsh(['domjobinfo', this.name]);
    const info: Record<string, string> = {};
    for (const line of out.split('\n')) {
      const m = /^([^:]+):\s*(.*)$/.exec(line.trim());
      if (m) info[m[1]!.trim()] = m[2]!.trim();
    }
    return info;
  }

  /** The domain's persistent XML as libvirt stores it (for comparing with backed-up vmconfig files). */
  async inactiveXml(): Promise<string> {
    return this.dumpXml({ inactive: true });
  }
}

/** Lines by which qemu-io reports a failed or malformed command. */
const QEMU_IO_FAILURE = /failed|error|not found|not a valid|invalid| -- /i;
/** qemu-io's statistics line ends every completed I/O command. */
const QEMU_IO_DONE = /ops\/sec\)/;
const QEMU_IO_WAIT_MS = 20_000;
const JOB_END_WAIT_MS = 30_000;

async function fileSize(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

async function waitForQemuIoResult(log: string, from: number, what: string): Promise<string> {
  const deadline = Date.now() + QEMU_IO_WAIT_MS;
  for (;;) {
    const text = await readFrom(log, from);
    if (QEMU_IO_DONE.test(text) || QEMU_IO_FAILURE.test(text)) {
      // A failure line may precede the statistics line; give the rest a moment to land.
      if (!QEMU_IO_DONE.test(text)) await sleep(50);
      return readFrom(log, from);
    }
    if (Date.now() > deadline) throw new Error(`${what}: no result in ${log} after ${QEMU_IO_WAIT_MS} ms (got: ${JSON.stringify(text)})`);
    await sleep(20);
  }
}

async function readFrom(path: string, from: number): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    if (size <= from) return '';
    const buf = Buffer.alloc(size - from);
    await fh.read(buf, 0, buf.length, from);
    return buf.toString('utf8');
  } finally {
    await fh.close();
  }
}

function checkByte(v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 255) throw new RangeError(`pattern must be a byte 0..255, got ${v}`);
  return v;
}

function checkInt(v: number): number {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`offset/length must be a non-negative integer, got ${v}`);
  return v;
}

