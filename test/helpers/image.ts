/**
 * Disk images for tests, made and inspected with qemu-img and qemu-io (the
 * real tools, independent of virtnbd's code): create qcow2/raw images, fill
 * them with known byte patterns, compare two images.
 */
import { run } from './exec.js';

export type ImageFormat = 'qcow2' | 'raw';

/** `length` bytes of the byte value `pattern` at `offset` (qemu-io `write -P`). */
export interface PatternWrite {
  pattern: number;
  offset: number;
  length: number;
}

export interface ImageSpec {
  format: ImageFormat;
  /** Virtual size in bytes, or a qemu-img size such as '512M' (default '512M'). */
  size?: number | string;
  /** qcow2 only: cluster size in bytes (default qemu's 65536; it is also the dirty-bitmap granularity). */
  clusterSize?: number;
  /** Patterns written into the image right after creation, in order. */
  writes?: readonly PatternWrite[];
}

export interface Image {
  path: string;
  format: ImageFormat;
  /** Virtual size in bytes. */
  size: number;
}

/** Create an image at `path` and write `spec.writes` into it. */
export async function createImage(path: string, spec: ImageSpec): Promise<Image> {
  const args = ['create', '-q', '-f', spec.format];
  if (spec.clusterSize !== undefined) {
    if (spec.format !== 'qcow2') throw new Error(`createImage ${path}: clusterSize needs format qcow2`);
    args.push('-o', `cluster_size=${spec.clusterSize}`);
  }
  args.push(path, String(spec.size ?? '512M'));
  await run('qemu-img', args);
  for (const w of spec.writes ?? []) await writeImagePattern(path, spec.format, w);
  const info = await imageInfo(path, { format: spec.format });
  return { path, format: spec.format, size: info['virtual-size'] };
}

/** Write a pattern into an image file that no running VM has open. */
export async function writeImagePattern(path: string, format: ImageFormat, w: PatternWrite): Promise<void> {
  await run('qemu-io', ['-f', format, '-c', `write -P ${w.pattern} ${w.offset} ${w.length}`, path]);
}

/** True if the image holds `pattern` over [offset, offset+length); `-U` lets it read an image a VM uses. */
export async function imageHasPattern(path: string, format: ImageFormat, w: PatternWrite): Promise<boolean> {
  const r = await run('qemu-io', ['-r', '-U', '-f', format, '-c', `read -P ${w.pattern} ${w.offset} ${w.length}`, path], {
    okCodes: [0, 1],
  });
  // qemu-io exits 0 even for some failed reads; the message is what counts.
  return r.exitCode === 0 && !/verification failed|failed|error/i.test(r.stdout + r.stderr);
}

/** The fields of `qemu-img info --output=json` that tests use, plus the rest as unknown. */
export interface ImageInfo {
  'virtual-size': number;
  format: string;
  'cluster-size'?: number;
  'actual-size'?: number;
  [key: string]: unknown;
}

export async function imageInfo(path: string, opts: { format?: ImageFormat; shared?: boolean } = {}): Promise<ImageInfo> {
  const args = ['info', '--output=json'];
  if (opts.format) args.push('-f', opts.format);
  if (opts.shared ?? true) args.push('-U');
  args.push(path);
  return JSON.parse((await run('qemu-img', args)).stdout) as ImageInfo;
}

export interface CompareResult {
  identical: boolean;
  /** qemu-img compare's message, e.g. 'Content mismatch at offset 41943040!'. */
  message: string;
}

/**
 * Compare the guest-visible contents of two images (`qemu-img compare`,
 * which treats unallocated and zero ranges alike). Images of different
 * virtual size count as different unless `allowSizeMismatch` (then the
 * longer one's tail must read as zeros). `-U` is passed so an image attached
 * to a running VM can be read; nothing must write it meanwhile.
 */
export async function compareImages(
  a: string,
  b: string,
  opts: { formatA?: ImageFormat; formatB?: ImageFormat; allowSizeMismatch?: boolean } = {},
): Promise<CompareResult> {
  if (!opts.allowSizeMismatch) {
    const [ia, ib] = await Promise.all([imageInfo(a, { format: opts.formatA }), imageInfo(b, { format: opts.formatB })]);
    if (ia['virtual-size'] !== ib['virtual-size']) {
      return {
        identical: false,
        message: `virtual size differs: ${a} has ${ia['virtual-size']}, ${b} has ${ib['virtual-size']}`,
      };
    }
  }
  const args = ['compare', '-U'];
  if (opts.formatA) args.push('-f', opts.formatA);
  if (opts.formatB) args.push('-F', opts.formatB);
  args.push(a, b);
  // Exit 0: identical, 1: different; anything else is an error (CommandError).
  const r = await run('qemu-img', args, { okCodes: [0, 1] });
  return { identical: r.exitCode === 0, message: (r.stdout + r.stderr).trim() };
}
