/**
 * Restore from a zip archive read as a byte stream (`-i -`, a pipe): the
 * archive cannot be listed first, so entries are handled as they arrive,
 * in archive order, without unpacking the set to disk.
 *
 * - Small files (domain configs, qcow2 info, checksums, checkpoint lists)
 *   are kept in memory; other files at the set's root (boot files) are
 *   spooled to the private work directory; logs are skipped.
 * - Each data file is decided on when it arrives, from its meta frame
 *   (StreamingChain): applied at once to its disk's new image (the image is
 *   created when the disk's full or copy backup arrives), skipped
 *   (superseded, past --until, another disk), or, when it arrives before
 *   the file it continues (a zip made in name order), spooled until then.
 *   virtnbdbackup writes its archives in backup order, so normally nothing
 *   is spooled.
 * - Metadata-only decisions wait for the end of the archive: holes and a
 *   wrong --until are found when the archive ends (not before writing, as
 *   with a directory), checksums whose `.chksum` came after their data file
 *   are compared then, the domain config is picked then, and so are the
 *   final image names. virtnbdbackup puts `<disk>.<ident>.qcow.json` after
 *   the data; when it asks for other qcow2 options than the image was
 *   created with, the image is converted once at the end.
 * Nothing is under a final name until everything succeeded; on failure all
 * images are removed. The output side is the restore target's (target.ts):
 * this host, or a remote hypervisor reached by ssh.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseChecksumFile } from '../format/adler32.js';
import { parseDomainXml, type DomainInfo } from '../xml/domain.js';
import { diskOf, StreamingChain, type ChainFile, type DiskChain } from './chain.js';
import { DiskImage } from './diskRestore.js';
import type { SetEntry } from './entries.js';
import { BackupSetError, ChecksumMismatchError, RestoreError } from './errors.js';
import { finishConfig } from './finish.js';
import { noProgress, type RestoredImage, type RestoreContext, type RestoreOptions, type RestoreResult } from './options.js';
import { checkTargetsFree, clearStalePartial, commitImages, createWorkDir, finalImagePaths, type PendingImage, type WorkDir } from './outputs.js';
import { copyRawImage, copyRawImageRemote } from './rawCopy.js';
import type { HostFiles } from '../remote/hostFiles.js';
import { SshHostFiles } from '../remote/sshHostFiles.js';
import { localTarget, type RestoreTarget } from './target.js';
import { readDataHead } from './set.js';
import { classifySetFile, pickQcowInfo, pickVmConfig, qcowCreateOptions, type ChainEnd } from './setFiles.js';

const SMALL_FILE_MAX = 16 * 1024 * 1024;
const SMALL_KINDS = new Set(['vmconfig', 'qcowInfo', 'checksum', 'checkpointList', 'checkpoint', 'autostart']);

interface StreamDisk {
  disk: string;
  chain: StreamingChain;
  temp: string;
  image?: DiskImage;
  /** qemu-img create options the image was made with. */
  createOptions?: Array<[string, string]>;
  raw?: string;
  fresh: boolean;
  /** adler32 of each file applied. */
  computed: Map<string, number>;
  /** Files whose .chksum was checked while applying. */
  checked: Set<string>;
  result?: DiskChain;
}

async function readAll(stream: Readable, name: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    size += (chunk as Buffer).length;
    if (size > SMALL_FILE_MAX) {
      stream.destroy();
      throw new BackupSetError(`${name} is larger than ${SMALL_FILE_MAX} bytes: not the small file its name says`);
    }
    parts.push(chunk as Buffer);
  }
  return Buffer.concat(parts);
}

function endOf(d: StreamDisk | undefined): ChainEnd {
  const steps = d?.result?.steps ?? [];
  const last = steps[steps.length - 1];
  if (!last) return {};
  return { ident: last.name.ident ?? (last.name.level === 'copy' ? 'copy' : last.metadata.checkpointName), checkpoint: d!.result!.checkpoint };
}

const sameOptions = (a: ReadonlyArray<readonly [string, string]>, b: ReadonlyArray<readonly [string, string]>): boolean =>
  JSON.stringify([...a].map(([k, v]) => `${k}=${v}`).sort()) === JSON.stringify([...b].map(([k, v]) => `${k}=${v}`).sort());

class StreamRestore {
  private readonly small = new Map<string, Buffer>();
  private readonly spooled = new Map<string, string>();
  private readonly names: string[] = [];
  private readonly disks = new Map<string, StreamDisk>();
  private readonly output: string;
  private spoolCount = 0;

  constructor(
    private readonly label: string,
    private readonly options: RestoreOptions,
    private readonly context: RestoreContext,
    private readonly work: WorkDir,
    private readonly target: RestoreTarget,
  ) {
    this.output = resolve(options.output);
  }

  private get files(): HostFiles {
    return this.target.files;
  }

  private get logger() {
    return this.context.logger;
  }

  async accept(entry: SetEntry): Promise<void> {
    this.options.signal?.throwIfAborted();
    this.names.push(entry.name);
    const kind = classifySetFile(entry.name);
    if (kind.kind === 'data') return this.onData(entry, kind.data!.disk);
    if (SMALL_KINDS.has(kind.kind)) {
      this.small.set(entry.name, await readAll(await entry.open(), entry.name));
    } else if (kind.kind === 'other' && !entry.name.includes('/')) {
      // Perhaps a boot file; which ones are is known only from the domain config, at the end.
      const path = join(this.work.path, `file-${++this.spoolCount}`);
      await pipeline(await entry.open(), createWriteStream(path, { flags: 'wx' }));
      this.spooled.set(entry.name, path);
    }
  }

  private diskState(disk: string): StreamDisk {
    let d = this.disks.get(disk);
    if (!d) {
      d = {
        disk,
        chain: new StreamingChain(disk, { until: this.options.until }),
        temp: join(this.output, `${disk}.partial`),
        fresh: true,
        computed: new Map(),
        checked: new Set(),
      };
      this.disks.set(disk, d);
    }
    return d;
  }

  private async onData(entry: SetEntry, nameDisk: string): Promise<void> {
    if (this.options.disk !== undefined && nameDisk !== this.options.disk) return;
    const stream = await entry.open();
    const head = await readDataHead(stream, entry.name, { keep: true });
    const data = classifySetFile(entry.name).data!;
    if (head.format === 'raw') {
      const d = this.diskState(nameDisk);
      if (d.raw !== undefined || d.image) throw new BackupSetError(`Disk ${nameDisk}: ${entry.name} is a raw image, but the archive already held ${d.raw ?? 'stream files'} for it`);
      await this.earlyTargetCheck(nameDisk);
      await clearStalePartial(d.temp, this.logger, this.files);
      d.raw = entry.name;
      this.logger.info(`Copying raw image ${entry.name} as it is`);
      const bar = (this.context.progress ?? noProgress)(`restoring disk [${nameDisk}]`, 0);
      const copyOptions = { onData: (n: number) => bar.update(n), signal: this.options.signal };
      if (this.files instanceof SshHostFiles) await copyRawImageRemote(stream, d.temp, entry.name, this.files, copyOptions);
      else await copyRawImage(stream, d.temp, entry.name, copyOptions);
      bar.done();
      return;
    }
    const file: ChainFile = { file: entry.name, name: data, metadata: head.metadata };
    const disk = diskOf(file);
    if (disk !== nameDisk) {
      stream.destroy();
      throw new RestoreError(`${entry.name} is named for disk ${nameDisk} but its metadata says disk ${disk}`);
    }
    const d = this.diskState(disk);
    if (d.raw !== undefined) throw new BackupSetError(`Disk ${disk}: the archive holds both a raw image (${d.raw}) and stream files (${entry.name})`);
    const decision = d.chain.offer(file);
    if (decision.action === 'skip') {
      this.logger.info(`Skipping ${entry.name}: ${decision.reason}`);
      stream.destroy();
      return;
    }
    if (decision.action === 'defer') {
      const path = join(this.work.path, `data-${++this.spoolCount}`);
      this.logger.info(`${entry.name} arrived before the file it continues from; holding it in ${path} until then`);
      await pipeline(stream, createWriteStream(path, { flags: 'wx' }));
      this.spooled.set(entry.name, path);
      return;
    }
    await this.apply(d, file, stream);
    for (const next of d.chain.ready()) {
      const path = this.spooled.get(next.file)!;
      await this.apply(d, next, createReadStream(path));
      this.spooled.delete(next.file);
      await rm(path, { force: true });
    }
  }

  /** With the domain config already in hand, a taken final name is refused before anything is written. */
  private async earlyTargetCheck(disk: string): Promise<void> {
    const config = pickVmConfig([...this.small.keys()]);
    if (config === undefined || this.options.overwrite) return;
    const domain = parseDomainXml(this.small.get(config)!.toString('utf8'), config);
    await checkTargetsFree(finalImagePaths([disk], this.output, domain).values(), false, this.files);
  }

  private async apply(d: StreamDisk, file: ChainFile, stream: Readable): Promise<void> {
    if (!d.image) {
      await this.earlyTargetCheck(d.disk);
      await clearStalePartial(d.temp, this.logger, this.files);
      d.createOptions = this.qcowOptions(d.disk, { ident: file.name.ident ?? file.metadata.checkpointName, checkpoint: file.metadata.checkpointName });
      this.logger.info(
        `Create virtual disk [${d.temp}] format: [qcow2] size: [${file.metadata.virtualSize}] options: [${d.createOptions.map(([k, v]) => `${k}=${v}`).join(',')}]`,
      );
      d.image = await DiskImage.create({
        disk: d.disk,
        path: d.temp,
        virtualSize: file.metadata.virtualSize,
        createOptions: d.createOptions,
        preallocate: this.options.preallocate,
        socket: join(this.work.path, `${d.disk}.sock`),
        ...(this.target.server ? { remote: this.target.server } : {}),
      });
    }
    const chksum = this.small.get(`${file.file}.chksum`);
    const expectedChecksum = chksum === undefined ? undefined : parseChecksumFile(chksum, `${file.file}.chksum`);
    this.logger.info(`Applying data from backup file [${file.file}] to target file [${d.temp}].`);
    const bar = (this.context.progress ?? noProgress)(`restoring disk [${d.disk}]`, file.metadata.dataSize);
    const result = await d.image.apply(stream, file.file, { fresh: d.fresh, expectedChecksum, onData: (n) => bar.update(n), signal: this.options.signal });
    bar.done();
    d.fresh = false;
    d.computed.set(file.file, result.checksum);
    if (expectedChecksum !== undefined) d.checked.add(file.file);
  }

  private qcowOptions(disk: string, end: ChainEnd): Array<[string, string]> {
    const name = pickQcowInfo([...this.small.keys()], disk, end);
    if (name === undefined) return [];
    try {
      const parsed = qcowCreateOptions(JSON.parse(this.small.get(name)!.toString('utf8')), name);
      for (const w of parsed.warnings) this.logger.warn(w);
      return parsed.options;
    } catch (error) {
      this.logger.warn(`Unable to load QCOW image config ${name}, using defaults: ${(error as Error).message}`);
      return [];
    }
  }

  /** The archive has ended: check, close, name and commit everything. */
  async finish(): Promise<RestoreResult> {
    if (this.disks.size === 0) throw new BackupSetError(`No data files${this.options.disk ? ` of disk ${this.options.disk}` : ''} in ${this.label}`);
    for (const d of this.disks.values()) {
      if (d.raw !== undefined) continue;
      d.result = d.chain.finish();
      for (const note of d.result.notes) this.logger.info(`Disk ${d.disk}: ${note}`);
      for (const [file, sum] of d.computed) {
        const chksum = this.small.get(`${file}.chksum`);
        if (chksum === undefined || d.checked.has(file)) continue;
        const expected = parseChecksumFile(chksum, `${file}.chksum`);
        if (expected !== sum) throw new ChecksumMismatchError(file, expected, sum);
      }
      await d.image!.close();
    }
    const first = [...this.disks.values()].find((d) => d.result) ?? [...this.disks.values()][0];
    const end = endOf(first);
    const configName = pickVmConfig([...this.small.keys()], end);
    let domain: DomainInfo | undefined;
    let xml: string | undefined;
    if (configName !== undefined) {
      xml = this.small.get(configName)!.toString('utf8');
      domain = parseDomainXml(xml, configName);
      this.logger.info(`Using config file: [${configName}]`);
    } else if (this.options.adjustConfig || this.options.define) {
      throw new BackupSetError(`No domain config (vmconfig.<ident>.xml) in ${this.label}: cannot adjust or define the domain`);
    }
    for (const d of [...this.disks.values()]) {
      if (domain?.disks.find((x) => x.target === d.disk)?.format === 'raw' && !this.options.raw) {
        this.logger.warn(`Disk ${d.disk} is a raw disk: not restored (use --raw to copy it as it is)`);
        await d.image?.discard();
        await this.files.remove(d.temp);
        this.disks.delete(d.disk);
      }
    }
    if (this.disks.size === 0) throw new RestoreError('Nothing to restore: every disk in the archive was left out');
    for (const d of this.disks.values()) {
      if (!d.image) continue;
      const wanted = this.qcowOptions(d.disk, endOf(d));
      if (!sameOptions(wanted, d.createOptions ?? [])) {
        // The qcow2 info came after the data: rebuild the image with the source's options.
        this.logger.info(`Converting ${d.temp} to the source image's qcow2 options (${wanted.map(([k, v]) => `${k}=${v}`).join(',')})`);
        const converted = `${d.temp}.convert`;
        try {
          await this.files.convertImage(d.temp, converted, { sourceFormat: 'qcow2', targetFormat: 'qcow2', options: wanted });
          await this.files.commit(converted, d.temp, true);
        } finally {
          await this.files.remove(converted);
        }
      }
    }
    const finals = finalImagePaths([...this.disks.keys()], this.output, domain);
    await checkTargetsFree(finals.values(), !!this.options.overwrite, this.files);
    const pending: PendingImage[] = [...this.disks.values()].map((d) => ({
      disk: d.disk,
      temp: d.temp,
      format: d.raw !== undefined ? 'raw' : 'qcow2',
      files: d.raw !== undefined ? [d.raw] : d.result!.steps.map((s) => s.file),
    }));
    await commitImages(pending, finals, !!this.options.overwrite, this.logger, this.files);
    const images: RestoredImage[] = pending.map((p) => ({ disk: p.disk, path: finals.get(p.disk)!, format: p.format, files: p.files }));
    const finish = await finishConfig({
      options: this.options,
      logger: this.logger,
      images,
      vmConfig: configName !== undefined ? { name: configName, xml: xml!, domain: domain! } : undefined,
      end,
      setNames: this.names,
      open: async (name) => {
        const path = this.spooled.get(name);
        if (path !== undefined) return createReadStream(path);
        const bytes = this.small.get(name);
        if (bytes !== undefined) return Readable.from([bytes]);
        throw new BackupSetError(`${name} was not kept from ${this.label}`);
      },
      files: this.files,
    });
    return { action: 'restore', images, ...finish };
  }

  /** Remove every image and temporary file. Never throws. */
  async discard(): Promise<void> {
    for (const d of this.disks.values()) {
      await d.image?.discard();
      await this.files.remove(d.temp).catch(() => undefined);
      await this.files.remove(`${d.temp}.convert`).catch(() => undefined);
    }
  }
}

export async function restoreFromStream(
  entries: AsyncIterable<SetEntry>,
  label: string,
  options: RestoreOptions,
  context: RestoreContext,
  target: RestoreTarget = localTarget(),
): Promise<RestoreResult> {
  const work = await createWorkDir(options.tempDir);
  const run = new StreamRestore(label, options, context, work, target);
  try {
    for await (const entry of entries) await run.accept(entry);
    return await run.finish();
  } catch (error) {
    await run.discard();
    throw error;
  } finally {
    await work.dispose();
  }
}
