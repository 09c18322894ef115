/**
 * A real Linux test guest, for tests that need writes made by a guest OS,
 * a guest agent (fsfreeze/thaw around backups) or a clean shutdown: the
 * image is built by fixtures/guest/build.sh from Debian packages (cloud
 * kernel, tiny initramfs, ext4 root holding busybox and qemu-ga) and
 * booted under TCG by direct kernel boot. Agent commands go through
 * `virsh qemu-agent-command`, so they test nothing of virtnbd's own client.
 *
 *     const host = await TestHost.create(t);
 *     const guest = await bootGuest(host);
 *     await guestWriteFile(guest.vm, '/data/f', bytes);
 *     t.is(await guestSha256(guest.vm, '/data/f'), sha256(bytes));
 */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { xmlEscape } from './domain-xml.js';
import { CommandError, run } from './exec.js';
import type { TestHost } from './host.js';
import { imageInfo, type Image } from './image.js';
import { virsh } from './virsh.js';
import type { TestVm } from './vm.js';

/** The line the guest's /init prints on ttyS0 once qemu-ga is started. */
export const GUEST_READY_MARKER = 'VIRTNBD-GUEST-READY';
/** Prefix of the line the guest's init scripts print when booting fails. */
export const GUEST_ERROR_MARKER = 'VIRTNBD-GUEST-ERROR';
/** The virtio-serial port name qemu-ga listens on, as the guest's /init looks it up. */
export const AGENT_CHANNEL = 'org.qemu.guest_agent.0';

const BUILD_SCRIPT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'fixtures', 'guest', 'build.sh');
/** A clean build downloads ~33 MB and takes ~10-20 s here; leave room for a slow mirror. */
const BUILD_TIMEOUT_MS = 15 * 60_000;
/** TCG on a busy 2-core host: the guest is up in ~6 s when idle; allow for load. */
const DEFAULT_BOOT_TIMEOUT_MS = 180_000;
const AGENT_TIMEOUT_S = 30;
/** virsh passes the JSON as one argv string (at most 128 KiB on Linux): 48 KiB of data is 64 KiB of base64. */
const FILE_CHUNK = 48 * 1024;

/** The built guest: files in fixtures/guest/.cache/<key>/, shared by all tests (never written). */
export interface GuestImage {
  dir: string;
  kernel: string;
  initrd?: string;
  /** Raw ext4 image; bootGuest gives each VM its own qcow2 copy. */
  rootImage: string;
  /** `uname -r` of the guest kernel. */
  kernelRelease: string;
}

/** Booting the guest failed: it printed an error, panicked, stopped, or did not come up in time. */
export class GuestBootError extends Error {
  constructor(
    readonly vm: string,
    detail: string,
    readonly consoleTail: string,
  ) {
    super(`test guest ${vm} did not come up: ${detail}\n--- last lines of its serial console ---\n${consoleTail}`);
    this.name = 'GuestBootError';
  }
}

/** The guest agent refused a command or answered something unexpected. */
export class GuestAgentError extends Error {
  constructor(
    readonly vm: string,
    readonly command: string,
    detail: string,
  ) {
    super(`guest agent of ${vm}: ${command}: ${detail}`);
    this.name = 'GuestAgentError';
  }
}

let image: Promise<GuestImage> | undefined;

/**
 * Build the guest image if its inputs changed (once per test process; the
 * script itself locks against the other test processes and caches between
 * runs), and return its files.
 */
export function ensureGuestImage(): Promise<GuestImage> {
  image ??= buildImage().catch((e: unknown) => {
    // Let a later test try again rather than replay this failure.
    image = undefined;
    throw e;
  });
  return image;
}

async function buildImage(): Promise<GuestImage> {
  const { stdout } = await run('bash', [BUILD_SCRIPT], { timeoutMs: BUILD_TIMEOUT_MS });
  const dir = stdout.trim().split('\n').pop() ?? '';
  const manifest = await readFile(join(dir, 'manifest.txt'), 'utf8').catch(() => {
    throw new Error(`${BUILD_SCRIPT} printed ${JSON.stringify(stdout.trim())}, which holds no manifest.txt`);
  });
  const kernelRelease = /^kernel (\S+)$/m.exec(manifest)?.[1];
  if (!kernelRelease) throw new Error(`${join(dir, 'manifest.txt')} names no kernel`);
  const files = { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img'), rootImage: join(dir, 'root.img') };
  for (const f of Object.values(files)) await stat(f);
  return { dir, ...files, kernelRelease };
}

export interface GuestOptions {
  /** Guest RAM (default 128 MiB). */
  memoryMiB?: number;
  /** Disks after the root disk vda (targets default to vdb, vdc, ...), e.g. data disks the guest writes with dd. */
  disks?: readonly { image: Image; target?: string }[];
  /** How long to wait for the ready marker and guest-ping (default 180 s). */
  bootTimeoutMs?: number;
  /**
   * Boot from this image as vda (e.g. one a restore rebuilt) instead of a
   * fresh copy of the built root image; the guest writes into it, and the
   * caller owns the file.
   */
  root?: Image;
}

/** A running guest, made by bootGuest; the TestHost undoes it (VM, images, console log). */
export interface Guest {
  vm: TestVm;
  /** The VM's root disk (vda): its own qcow2 copy of the root image, or GuestOptions.root; writes in the guest land here. */
  root: Image;
  /** Serial console (ttyS0) of the guest, kernel messages included. */
  consoleLog: string;
  image: GuestImage;
  /** From `virsh start` to the first answered guest-ping (for logs; never assert on it). */
  bootMs: number;
}

let guestCount = 0;

/**
 * Copy the root image into the host's dir as a standalone qcow2 (no
 * backing chain for backups to trip over), unless opts.root names the
 * image to boot from, define a TCG VM that boots the
 * guest kernel directly with the root as vda, a guest-agent channel and
 * the serial console in a file, start it, and resolve once the guest
 * printed its ready marker and its agent answers guest-ping.
 */
export async function bootGuest(host: TestHost, opts: GuestOptions = {}): Promise<Guest> {
  const img = await ensureGuestImage();
  const n = ++guestCount;
  const root = opts.root ?? (await copyRootImage(img, host.path(`guest${n}-root.qcow2`)));
  const consoleLog = host.path(`guest${n}-console.log`);
  const vm = await host.defineVm({
    disks: [{ image: root, target: 'vda' }, ...(opts.disks ?? []).map((d, i) => ({ image: d.image, target: d.target ?? `vd${String.fromCharCode(98 + i)}` }))],
    memoryMiB: opts.memoryMiB ?? 128,
    kernelBoot: { kernel: img.kernel, initrd: img.initrd, cmdline: 'root=/dev/vda rw console=ttyS0' },
    extraDevicesXml: guestDevicesXml(consoleLog),
  });
  const started = Date.now();
  await vm.start();
  await waitUntilUp(vm, consoleLog, opts.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS);
  return { vm, root, consoleLog, image: img, bootMs: Date.now() - started };
}

/** A standalone qcow2 copy of the built root image at `path`. */
async function copyRootImage(img: GuestImage, path: string): Promise<Image> {
  await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', img.rootImage, path]);
  return { path, format: 'qcow2', size: (await imageInfo(path, { format: 'qcow2' }))['virtual-size'] };
}

/** The agent's virtio-serial channel (libvirt picks the host socket) and ttyS0 into a file. */
function guestDevicesXml(consoleLog: string): string {
  const log = xmlEscape(consoleLog);
  return [
    `    <controller type='virtio-serial' index='0'/>`,
    `    <channel type='unix'><target type='virtio' name='${AGENT_CHANNEL}'/></channel>`,
    `    <serial type='file'><source path='${log}'/><target port='0'/></serial>`,
    `    <console type='file'><source path='${log}'/><target type='serial' port='0'/></console>`,
  ].join('\n');
}

/** Read the console; '' before QEMU created it. */
export async function readConsole(consoleLog: string): Promise<string> {
  return readFile(consoleLog, 'utf8').catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? '' : Promise.reject(e)));
}

async function waitUntilUp(vm: TestVm, consoleLog: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const tail = async (): Promise<string> => (await readConsole(consoleLog)).split('\n').slice(-25).join('\n');
  for (;;) {
    const text = await readConsole(consoleLog);
    if (text.includes(GUEST_ERROR_MARKER)) throw new GuestBootError(vm.name, 'its init reported an error', await tail());
    if (/Kernel panic/.test(text)) throw new GuestBootError(vm.name, 'the kernel panicked', await tail());
    if (text.includes(GUEST_READY_MARKER)) {
      try {
        await agentCommand(vm, 'guest-ping', undefined, { timeoutS: 5 });
        return;
      } catch (e) {
        // The agent opens its port a moment after the marker; libvirt then still says "not connected".
        if (!(e instanceof GuestAgentError)) throw e;
      }
    }
    if (Date.now() > deadline) {
      const what = text.includes(GUEST_READY_MARKER) ? 'the ready marker came but guest-ping never answered' : 'no ready marker';
      throw new GuestBootError(vm.name, `${what} within ${timeoutMs} ms`, await tail());
    }
    if (!(await vm.isActive())) throw new GuestBootError(vm.name, `the VM is ${await vm.state()}`, await tail());
    await sleep(250);
  }
}

/**
 * Run one guest agent command (`virsh qemu-agent-command`) and return its
 * `return` member; a refusal or malformed answer is a GuestAgentError.
 */
export async function agentCommand<T = unknown>(vm: TestVm, execute: string, args?: Record<string, unknown>, opts: { timeoutS?: number } = {}): Promise<T> {
  const timeoutS = opts.timeoutS ?? AGENT_TIMEOUT_S;
  const request = JSON.stringify(args === undefined ? { execute } : { execute, arguments: args });
  let out: string;
  try {
    out = await virsh(['qemu-agent-command', vm.name, request, '--timeout', String(timeoutS)], { timeoutMs: (timeoutS + 30) * 1000 });
  } catch (e) {
    if (e instanceof CommandError) throw new GuestAgentError(vm.name, execute, e.stderr.trim() || e.message);
    throw e;
  }
  let reply: { return?: T };
  try {
    reply = JSON.parse(out) as { return?: T };
  } catch {
    throw new GuestAgentError(vm.name, execute, `answer is not JSON: ${out.slice(0, 200)}`);
  }
  if (!('return' in reply)) throw new GuestAgentError(vm.name, execute, `answer has no "return": ${out.slice(0, 200)}`);
  return reply.return as T;
}

export interface GuestExecResult {
  exitCode: number;
  /** Set if a signal ended the process (exitCode is then -1). */
  signal?: number;
  stdout: Buffer;
  stderr: Buffer;
  /** qemu-ga cut the output at its limit (16 MiB). */
  truncated: boolean;
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
  'out-truncated'?: boolean;
  'err-truncated'?: boolean;
}

/**
 * Run `argv` in the guest (guest-exec, PATH lookup by the agent) and wait
 * (bounded) for it to end; stdin is `input`, if given (keep it below ~90
 * KiB: it travels in one virsh argument). A non-zero exit is returned, not
 * thrown; a program that cannot start is a GuestAgentError.
 */
export async function guestExec(vm: TestVm, argv: readonly string[], opts: { input?: Buffer | string; timeoutMs?: number } = {}): Promise<GuestExecResult> {
  if (argv.length === 0) throw new RangeError('guestExec: argv is empty');
  const args: Record<string, unknown> = { path: argv[0], arg: argv.slice(1), 'capture-output': true };
  if (opts.input !== undefined) args['input-data'] = Buffer.from(opts.input).toString('base64');
  const { pid } = await agentCommand<{ pid: number }>(vm, 'guest-exec', args);
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const deadline = Date.now() + timeoutMs;
  for (let delay = 20; ; delay = Math.min(delay * 2, 500)) {
    const s = await agentCommand<ExecStatus>(vm, 'guest-exec-status', { pid });
    if (s.exited) {
      return {
        exitCode: s.exitcode ?? -1,
        signal: s.signal,
        stdout: Buffer.from(s['out-data'] ?? '', 'base64'),
        stderr: Buffer.from(s['err-data'] ?? '', 'base64'),
        truncated: Boolean(s['out-truncated'] || s['err-truncated']),
      };
    }
    if (Date.now() > deadline) throw new GuestAgentError(vm.name, 'guest-exec', `${argv.join(' ')} still running after ${timeoutMs} ms`);
    await sleep(delay);
  }
}

/** guestExec that throws a GuestAgentError unless the command exits 0; returns stdout as text. */
export async function guestRun(vm: TestVm, argv: readonly string[], opts: { input?: Buffer | string; timeoutMs?: number } = {}): Promise<string> {
  const r = await guestExec(vm, argv, opts);
  if (r.exitCode !== 0 || r.signal !== undefined) {
    const how = r.signal !== undefined ? `killed by signal ${r.signal}` : `exited with ${r.exitCode}`;
    throw new GuestAgentError(vm.name, 'guest-exec', `${argv.join(' ')} ${how}: ${r.stderr.toString('utf8').trim()}`);
  }
  return r.stdout.toString('utf8');
}

/** Write `bytes` to `path` in the guest (created or truncated) through guest-file-open/write/close. */
export async function guestWriteFile(vm: TestVm, path: string, bytes: Buffer): Promise<void> {
  const handle = await agentCommand<number>(vm, 'guest-file-open', { path, mode: 'w' });
  try {
    for (let off = 0; off < bytes.length; off += FILE_CHUNK) {
      const chunk = bytes.subarray(off, off + FILE_CHUNK);
      const { count } = await agentCommand<{ count: number }>(vm, 'guest-file-write', { handle, 'buf-b64': chunk.toString('base64') });
      if (count !== chunk.length) throw new GuestAgentError(vm.name, 'guest-file-write', `${path}: wrote ${count} of ${chunk.length} bytes at offset ${off}`);
    }
    await agentCommand(vm, 'guest-file-flush', { handle });
  } finally {
    await agentCommand(vm, 'guest-file-close', { handle });
  }
}

/** Read all of `path` in the guest through guest-file-open/read/close. */
export async function guestReadFile(vm: TestVm, path: string): Promise<Buffer> {
  const handle = await agentCommand<number>(vm, 'guest-file-open', { path, mode: 'r' });
  const parts: Buffer[] = [];
  try {
    for (;;) {
      const r = await agentCommand<{ count: number; 'buf-b64': string; eof: boolean }>(vm, 'guest-file-read', { handle, count: FILE_CHUNK });
      parts.push(Buffer.from(r['buf-b64'], 'base64'));
      if (r.eof || r.count === 0) break;
    }
  } finally {
    await agentCommand(vm, 'guest-file-close', { handle });
  }
  return Buffer.concat(parts);
}

/** SHA-256 (hex) of `path` as the guest reads it (busybox sha256sum). */
export async function guestSha256(vm: TestVm, path: string): Promise<string> {
  const out = await guestRun(vm, ['sha256sum', path]);
  const hex = /^[0-9a-f]{64}\b/.exec(out)?.[0];
  if (!hex) throw new GuestAgentError(vm.name, 'guest-exec', `sha256sum ${path} printed ${JSON.stringify(out)}`);
  return hex;
}

/** Flush the guest's page cache to its disks (`sync` in the guest). */
export async function guestSync(vm: TestVm): Promise<void> {
  await guestRun(vm, ['sync']);
}

/** SHA-256 (hex) of bytes on the host, to compare with guestSha256. */
export function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}
