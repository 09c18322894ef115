/**
 * virtnbdmap: parse the command line, set up logging, call map(), say what
 * was mapped and how to use it, then wait for Ctrl-C (SIGINT, SIGTERM,
 * SIGHUP) or for the instant-recovery domain to stop, and undo the mapping
 * (domain, device, server, overlays). Exit codes: 0 when the mapping ran
 * and was ended (a signal included, as virtnbdmap), 1 when it could not be
 * set up (the error's message; a stack only with -v), 2 for a bad command line.
 */
import { homedir } from 'node:os';
import { map, type Mapping } from '../map/map.js';
import { usageHints } from '../map/usage.js';
import { startCommand } from './startup.js';
import { parseMapArgs } from './mapArgs.js';

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

export async function main(argv: string[]): Promise<number> {
  const started = await startCommand('virtnbdmap', argv, () => parseMapArgs(argv, { home: process.env.HOME ?? homedir() }));
  if ('exit' in started) return started.exit;
  const { options, logger } = started;
  logger.info(`Logfile: [${options.logFile}]`);
  for (const ignored of ['--blocksize', '--threads']) {
    if (options.given.has(ignored)) logger.info(`${ignored} tuned virtnbdmap's nbdkit process; virtnbd serves the backup itself, so it has no effect`);
  }

  // A signal during set-up ends the run as soon as the mapping exists (or failed).
  let signalled: string | undefined;
  let wake: (() => void) | undefined;
  const onSignal = (sig: string): void => {
    if (signalled) return;
    signalled = sig;
    logger.info(`Received signal: [${sig}]`);
    wake?.();
  };
  const handlers = SIGNALS.map((sig) => [sig, () => onSignal(sig)] as const);
  for (const [sig, handler] of handlers) process.on(sig, handler);

  let mapping: Mapping | undefined;
  try {
    mapping = await map(options, { logger });
    if (mapping.domain) {
      logger.info(`Instant recovery: domain ${mapping.domain.name} runs from the backup (its writes go to ${[...mapping.domain.overlays.values()].join(', ')})`);
      logger.info('Press CTRL+C to stop the domain and unmap');
    } else if (mapping.device) {
      logger.info('Press CTRL+C to disconnect');
    } else {
      const why = mapping.deviceProblem ?? 'no device requested';
      if (options.given.has('--device')) logger.warn(`Not mapped to a block device: ${why}`);
      else logger.info(`Not mapped to a block device: ${why}`);
      for (const d of mapping.disks) {
        for (const line of usageHints(mapping.address, { disk: d.disk, exportName: d.exportName, files: d.files.length, checkpoint: d.checkpoint, writable: d.writable })) {
          logger.info(line);
        }
      }
      logger.info('Press CTRL+C to stop serving');
    }
    const stopped = new Promise<void>((resolve) => {
      wake = resolve;
      if (signalled) resolve();
    });
    const reason = await Promise.race([stopped.then(() => undefined), mapping.ended]);
    if (reason !== undefined) logger.info(`${reason}: unmapping`);
    return 0;
  } catch (error) {
    const err = error as Error;
    logger.error(err.message);
    if (options.verbose && err.stack) logger.debug(err.stack);
    return 1;
  } finally {
    if (mapping) {
      await mapping.close();
      logger.info('Unmapped: NBD server stopped, overlays and temporary files removed');
    }
    for (const [sig, handler] of handlers) process.off(sig, handler);
    await logger.close();
  }
}
