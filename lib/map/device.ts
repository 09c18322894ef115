/**
 * Attaching an NBD export to a kernel NBD device (/dev/nbdN), as Debian's
 * virtnbdmap does, so the backup shows up as a block device to mount or
 * fsck. Needs the nbd kernel module (the device node must exist) and root;
 * connects with `nbd-client` when it is installed (the kernel then talks to
 * our server directly), else with `qemu-nbd -c` (which virtnbdmap uses,
 * qemu-nbd relaying between the kernel and our server). Where neither
 * works, the caller serves the export and explains how to use it instead.
 */
import { spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';
import type { ListenTarget } from '../nbd/server.js';

export type DeviceTool = 'nbd-client' | 'qemu-nbd';

export interface DeviceConnection {
  device: string;
  tool: DeviceTool;
  /** Detach the device (`nbd-client -d` / `qemu-nbd -d`). */
  disconnect(): Promise<void>;
}

export interface ConnectDeviceOptions {
  device: string;
  /** Where our NBD server listens. */
  server: ListenTarget;
  exportName: string;
  readOnly: boolean;
}

/** Why the device could not be used; the mapping is then served without it. */
export interface DeviceUnavailable {
  reason: string;
}

interface CommandResult {
  code: number | null;
  output: string;
}

function runCommand(command: string, args: readonly string[], timeoutMs = 30_000): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => out.push(b));
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve({ code: null, output: err.message });
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output: Buffer.concat(out).toString('utf8').trim() });
    });
  });
}

/** The export as a URI qemu-nbd can open. */
function serverUri(server: ListenTarget, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if ('socketPath' in server) return `nbd+unix:///${name}?socket=${encodeURIComponent(server.socketPath)}`;
  const host = server.host ?? '127.0.0.1';
  return `nbd://${host.includes(':') ? `[${host}]` : host}:${server.port}/${name}`;
}

function nbdClientArgs(o: ConnectDeviceOptions): string[] {
  const where = 'socketPath' in o.server ? ['-unix', o.server.socketPath] : [o.server.host ?? '127.0.0.1', String(o.server.port)];
  return [...where, o.device, '-N', o.exportName, ...(o.readOnly ? ['-readonly'] : [])];
}

/** Is `device` an existing block device? Says why not otherwise. */
export async function checkDevice(device: string): Promise<DeviceUnavailable | undefined> {
  if (!device.startsWith('/dev/nbd')) return { reason: `target device ${device} does not look like an nbd device` };
  try {
    const info = await stat(device);
    if (!info.isBlockDevice()) return { reason: `${device} is not a block device` };
  } catch {
    return { reason: `target device ${device} does not exist (nbd module not loaded? \`modprobe nbd\` as root loads it)` };
  }
  return undefined;
}

/**
 * Attach the export to `device` with nbd-client, else qemu-nbd -c. Returns
 * the connection, or why there is none (device missing, tools missing or
 * failing); never throws for those.
 */
export async function connectDevice(o: ConnectDeviceOptions): Promise<DeviceConnection | DeviceUnavailable> {
  const missing = await checkDevice(o.device);
  if (missing) return missing;
  const reasons: string[] = [];
  const client = await runCommand('nbd-client', nbdClientArgs(o));
  if (client.code === 0) {
    return { device: o.device, tool: 'nbd-client', disconnect: async () => void (await runCommand('nbd-client', ['-d', o.device])) };
  }
  reasons.push(`nbd-client: ${client.output || `exit ${client.code}`}`);
  const qemu = await runCommand('qemu-nbd', ['-c', o.device, '-f', 'raw', ...(o.readOnly ? ['-r'] : []), serverUri(o.server, o.exportName)]);
  if (qemu.code === 0) {
    return { device: o.device, tool: 'qemu-nbd', disconnect: async () => void (await runCommand('qemu-nbd', ['-d', o.device])) };
  }
  reasons.push(`qemu-nbd -c: ${qemu.output || `exit ${qemu.code}`}`);
  return { reason: `cannot attach ${o.device}: ${reasons.join('; ')}` };
}
