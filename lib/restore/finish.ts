/**
 * The last steps of a restore, once the images are in place: the domain
 * config written to the output directory (adjusted with -c/-D, else the
 * original), boot files put back, the domain defined (-D), and a libvirt
 * storage pool over the output directory refreshed. On a remote target
 * the config and boot files are written on the hypervisor, over ssh.
 */
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from '../cli/logger.js';
import type { DomainInfo } from '../xml/domain.js';
import { adjustDomainConfig } from './config.js';
import type { RestoredImage, RestoreOptions } from './options.js';
import { defineDomain, refreshPool, restoreBootFiles, writeHostFileAtomic } from './outputs.js';
import { LocalHostFiles, type HostFiles } from '../remote/hostFiles.js';
import { classifySetFile, pickBootFile, type ChainEnd } from './setFiles.js';

export const DEFAULT_CONFIG_FILE = 'vmconfig.xml';
export const DEFAULT_URI = 'qemu:///system';

export interface FinishInput {
  options: RestoreOptions;
  logger: Logger;
  images: readonly RestoredImage[];
  /** The backed-up domain config used, if the set has one. */
  vmConfig?: { name: string; xml: string; domain: DomainInfo };
  end: ChainEnd;
  /** Names of the set's files (to find boot files and the autostart mark). */
  setNames: readonly string[];
  open(name: string): Promise<Readable>;
  /** Where the output directory is (default this host). */
  files?: HostFiles;
}

export async function finishConfig(input: FinishInput): Promise<{ configFile?: string; domain?: string }> {
  const { options, logger, vmConfig } = input;
  const output = resolve(options.output);
  const uri = options.uri ?? DEFAULT_URI;
  const result: { configFile?: string; domain?: string } = {};
  if (vmConfig) {
    const adjust = !!(options.adjustConfig || options.define);
    const file = join(output, (options.configFile ?? DEFAULT_CONFIG_FILE).split('/').pop() || DEFAULT_CONFIG_FILE);
    let xml = vmConfig.xml;
    if (adjust) {
      const adjusted = adjustDomainConfig(vmConfig.xml, {
        name: options.name,
        disks: input.images.map((i) => ({ target: i.disk, path: i.path, format: i.format })),
      }, vmConfig.name);
      for (const change of adjusted.changes) logger.info(`Config: ${change}`);
      xml = adjusted.xml;
    }
    const files = input.files ?? new LocalHostFiles();
    await writeHostFileAtomic(files, file, xml);
    result.configFile = file;
    if (adjust) {
      logger.info(`Adjusted config placed in: [${file}]${files.remote ? ` on ${files.description}` : ''}`);
      if (!options.define) logger.info(`Use 'virsh -c ${uri} define ${file}' to define VM`);
    } else {
      logger.info(`Copied original vm config to [${file}]`);
      logger.info('Note: virtual machine config must be adjusted manually.');
    }
    await restoreBootFiles(vmConfig.domain, (hostPath) => pickBootFile(input.setNames, hostPath, input.end), input.open, logger, files);
    if (options.define) {
      const autostart = input.setNames.some((n) => classifySetFile(n).kind === 'autostart');
      result.domain = await defineDomain(uri, xml, autostart, logger, options.credentials);
    }
  }
  await refreshPool(uri, output, logger);
  return result;
}
