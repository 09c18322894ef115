/**
 * HostFiles of a remote hypervisor: every operation is a command run there
 * over ssh (`cat`, `dd`, `ln`, `mv`, `sync`, `qemu-img`), with the same
 * guarantees as on this host: new files never clobber existing ones, a
 * commit refuses a taken name unless asked to overwrite, and what counts
 * as written has been synced there. Each call is one ssh session.
 */
import { dirname } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import type { ConvertImageOptions, CreateImageOptions } from '../qemu/qemuImg.js';
import { FileExistsError, type HostFiles } from './hostFiles.js';
import { shellCommand, shellQuote, SshError, type SshHost } from './ssh.js';

export class SshHostFiles implements HostFiles {
  readonly remote = true;

  constructor(readonly ssh: SshHost) {}

  get description(): string {
    return this.ssh.description;
  }

  exists(path: string): Promise<boolean> {
    return this.ssh.exists(path);
  }

  async readFile(path: string, maxBytes: number): Promise<Buffer> {
    return (await this.ssh.run(['cat', '--', path], { maxOutput: maxBytes })).stdout;
  }

  async openRead(path: string): Promise<Readable> {
    // Fail early (and clearly) for a missing file, before the stream is handed out.
    await this.ssh.run(['test', '-r', path]).catch((e: unknown) => {
      throw e instanceof SshError && e.exitCode === 1 ? new SshError(`${path} cannot be read on ${this.description}`, 1, '') : e;
    });
    const command = shellCommand(['cat', '--', path]);
    const child = this.ssh.spawn(command);
    child.stdin!.end();
    let stderr = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => {
      stderr = (stderr + s).slice(-4096);
    });
    const out = child.stdout!;
    // The stream ends only once ssh has exited: a failed cat turns into a stream error, not a short file.
    const result = new PassThrough();
    out.pipe(result, { end: false });
    child.once('error', (e) => result.destroy(this.ssh.failure(command, null, stderr, e)));
    child.once('close', (code) => {
      if (code === 0) result.end();
      else result.destroy(this.ssh.failure(command, code, stderr));
    });
    result.once('close', () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    return result;
  }

  async writeNew(path: string, source: Readable | Buffer | string): Promise<void> {
    // noclobber: the redirection fails if the file exists; sync before the command counts as done.
    const line = `set -C && cat > ${shellQuote(path)} && sync -- ${shellQuote(path)}`;
    await this.ssh.run(`sh -c ${shellQuote(line)}`, { input: source });
  }

  /**
   * writeNew() for a raw image, thin: dd seeks over blocks of zeros instead
   * of writing them (and sets the length at the end when they trail).
   */
  async writeNewSparse(path: string, source: Readable): Promise<void> {
    const dd = shellCommand(['dd', `of=${path}`, 'bs=64K', 'iflag=fullblock', 'conv=sparse,excl', 'status=none']);
    await this.ssh.run(`sh -c ${shellQuote(`${dd} && sync -- ${shellQuote(path)}`)}`, { input: source });
  }

  async mkdirp(path: string): Promise<void> {
    await this.ssh.run(['mkdir', '-p', '--', path]);
  }

  async remove(path: string): Promise<void> {
    await this.ssh.run(['rm', '-f', '--', path]);
  }

  async commit(temp: string, final: string, overwrite: boolean): Promise<void> {
    const [t, f, dir] = [temp, final, dirname(final)].map(shellQuote);
    // One ssh session (each costs a login): link() refuses an existing name atomically, as locally.
    const line = overwrite
      ? `mv -f -- ${t} ${f} && sync -- ${dir}`
      : `if ! ln -- ${t} ${f} 2>/dev/null; then test -e ${f} && exit 3; ln -- ${t} ${f} || exit; fi; rm -f -- ${t} && sync -- ${dir}`;
    const { code } = await this.ssh.run(`sh -c ${shellQuote(line)}`, { okCodes: [0, 3] });
    if (code === 3) throw new FileExistsError(`${final} exists already on ${this.description}`);
  }

  async sync(path: string): Promise<void> {
    await this.ssh.run(['sync', '--', path]);
  }

  async qemuImageInfo(path: string): Promise<string> {
    return (await this.ssh.run(['qemu-img', 'info', path, '--output', 'json', '--force-share'])).stdout.toString('utf8').trim();
  }

  /**
   * `qemu-img check` of a qcow2 image there: its qemu-nbd was stopped by a
   * signal, so its exit status cannot say whether closing the image went
   * well; a consistent image can. Leaked clusters (exit 3) only waste space.
   */
  async checkImage(path: string, format: string): Promise<void> {
    await this.ssh.run(['qemu-img', 'check', '-q', '-f', format, path], { okCodes: [0, 3] });
  }

  async createImage(path: string, opts: CreateImageOptions): Promise<void> {
    if (!Number.isSafeInteger(opts.size) || opts.size < 0) throw new RangeError(`image size must be a byte count, got ${opts.size}`);
    const args = ['qemu-img', 'create', '-q', '-f', opts.format];
    for (const [key, value] of opts.options ?? []) args.push('-o', `${key}=${value.replace(/,/g, ',,')}`);
    args.push(path, String(opts.size));
    await this.ssh.run(args);
  }

  async convertImage(source: string, target: string, opts: ConvertImageOptions): Promise<void> {
    const args = ['qemu-img', 'convert', '-q', '-f', opts.sourceFormat, '-O', opts.targetFormat];
    for (const [key, value] of opts.options ?? []) args.push('-o', `${key}=${value.replace(/,/g, ',,')}`);
    args.push(source, target);
    await this.ssh.run(args);
  }
}
