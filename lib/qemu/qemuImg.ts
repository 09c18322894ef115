/**
 * qemu-img, run as a child process: create an image, read its info, convert
 * one. Each call runs to completion and fails with a QemuImgError carrying
 * the command line, exit status and qemu-img's own message, so a sysadmin
 * reads what qemu-img said, not "exit 1".
 */
import { spawn } from 'node:child_process';

/** qemu-img failed or could not be run. */
export class QemuImgError extends Error {
  override readonly name = 'QemuImgError';

  constructor(
    readonly command: string,
    readonly exitCode: number | null,
    readonly stderr: string,
    cause?: Error,
  ) {
    const why = cause ? `could not run: ${cause.message}` : `failed (exit ${exitCode ?? 'by signal'})`;
    super(`${command} ${why}${stderr.trim() ? `: ${stderr.trim()}` : ''}`, cause ? { cause } : undefined);
  }
}

/** A command line for messages: arguments with blanks or quotes are quoted. */
export function showCommand(command: string, args: readonly string[]): string {
  return [command, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

async function qemuImg(args: readonly string[], binary = 'qemu-img'): Promise<string> {
  const line = showCommand(binary, args);
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.once('error', (e) => reject(new QemuImgError(line, null, '', e)));
    child.once('close', (code) => {
      const stderr = Buffer.concat(err).toString('utf8');
      if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
      else reject(new QemuImgError(line, code, stderr));
    });
  });
}

export interface CreateImageOptions {
  /** Image format, e.g. qcow2. */
  format: string;
  /** Virtual size in bytes. */
  size: number;
  /** `-o key=value` creation options (cluster_size, compat, lazy_refcounts...), in order. */
  options?: ReadonlyArray<readonly [string, string]>;
  /** qemu-img binary (default `qemu-img` from PATH). */
  binary?: string;
}

/** `qemu-img create -q -f FORMAT -o k=v,... PATH SIZE`. Overwrites PATH: the caller checks first. */
export async function createImage(path: string, opts: CreateImageOptions): Promise<void> {
  if (!Number.isSafeInteger(opts.size) || opts.size < 0) throw new RangeError(`image size must be a byte count, got ${opts.size}`);
  const args = ['create', '-q', '-f', opts.format];
  for (const [key, value] of opts.options ?? []) {
    // A comma inside a value would start another option: qemu escapes it by doubling.
    args.push('-o', `${key}=${value.replace(/,/g, ',,')}`);
  }
  args.push(path, String(opts.size));
  await qemuImg(args, opts.binary);
}

/** The parts of `qemu-img info --output=json` virtnbd reads; the rest is kept as unknown. */
export interface QemuImageInfo {
  'virtual-size': number;
  format: string;
  'cluster-size'?: number;
  'actual-size'?: number;
  'format-specific'?: { type?: string; data?: Record<string, unknown> };
  [key: string]: unknown;
}

/** `qemu-img info --output=json [-U] PATH`. */
export async function imageInfo(path: string, opts: { format?: string; shared?: boolean; binary?: string } = {}): Promise<QemuImageInfo> {
  const args = ['info', '--output=json'];
  if (opts.format) args.push('-f', opts.format);
  if (opts.shared) args.push('-U');
  args.push(path);
  return JSON.parse(await qemuImg(args, opts.binary)) as QemuImageInfo;
}

export interface ConvertImageOptions {
  sourceFormat: string;
  targetFormat: string;
  options?: ReadonlyArray<readonly [string, string]>;
  binary?: string;
}

/** `qemu-img convert -q -f F -O F -o ... SOURCE TARGET`: sparse (zero ranges stay unallocated). */
export async function convertImage(source: string, target: string, opts: ConvertImageOptions): Promise<void> {
  const args = ['convert', '-q', '-f', opts.sourceFormat, '-O', opts.targetFormat];
  for (const [key, value] of opts.options ?? []) args.push('-o', `${key}=${value.replace(/,/g, ',,')}`);
  args.push(source, target);
  await qemuImg(args, opts.binary);
}
