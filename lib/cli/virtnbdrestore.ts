/**
 * virtnbdrestore: parse the command line, set up logging, progress and
 * signal handling, call restore(), and turn the outcome into an exit code:
 * 0 success, 1 failure (the error's message, a stack only with -v),
 * 2 a bad command line, 128+n when interrupted by signal n (the restore
 * cleans up first: no qemu-nbd, no socket, no image under a final name).
 */
import { homedir, userInfo } from 'node:os';
import { restore } from '../restore/restore.js';
import { RestoreAbortedError } from '../restore/errors.js';
import { startCommand } from './startup.js';
import { createProgress } from './progress.js';
import { parseRestoreArgs, restoreNotYetGiven } from './restoreArgs.js';
import { commandCredentials } from './credentials.js';

const SIGNAL_EXIT: Record<'SIGINT' | 'SIGTERM' | 'SIGHUP', number> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };

function currentUser(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? 'root';
  }
}

export async function main(argv: string[]): Promise<number> {
  const started = await startCommand('virtnbdrestore', argv, () => parseRestoreArgs(argv, { user: currentUser(), home: process.env.HOME ?? homedir(), pid: process.pid }));
  if ('exit' in started) return started.exit;
  const { options, logger } = started;
  const notYet = restoreNotYetGiven(options);
  if (notYet.length > 0) {
    logger.error(`Not yet: ${notYet.join(', ')} ${notYet.length > 1 ? 'are' : 'is'} not implemented in this version of virtnbd`);
    await logger.close();
    return 1;
  }
  const credentials = commandCredentials(options, logger);
  if (credentials === 'failed') {
    await logger.close();
    return 1;
  }
  if (options.given.has('--socketfile')) {
    logger.info('-f/--socketfile: qemu-nbd sockets live in a private directory of this run; the given path is not used');
  }

  const controller = new AbortController();
  let signalled: keyof typeof SIGNAL_EXIT | undefined;
  const handlers = (Object.keys(SIGNAL_EXIT) as Array<keyof typeof SIGNAL_EXIT>).map((sig) => {
    const handler = (): void => {
      if (signalled) {
        // A second signal: stop waiting for the cleanup (the exit hook still ends qemu-nbd).
        process.exit(SIGNAL_EXIT[sig]);
      }
      signalled = sig;
      logger.warn(`Received ${sig}: stopping the restore and removing what it wrote`);
      controller.abort(new RestoreAbortedError(`Restore interrupted by ${sig}`));
    };
    process.on(sig, handler);
    return [sig, handler] as const;
  });
  const showProgress = !options.noProgress && Boolean(process.stderr.isTTY);
  try {
    const result = await restore(
      { ...options, ...(credentials ? { credentials } : {}), signal: controller.signal },
      { logger, progress: (label, total) => createProgress({ label, total, enabled: showProgress }) },
    );
    if (result.action === 'verify' && result.unchecked && result.unchecked.length > 0 && result.verified?.length === 0) {
      logger.warn('No data file has a .chksum: nothing could be verified');
    }
    logger.info('Finished successfully');
    return 0;
  } catch (error) {
    if (signalled) {
      logger.error(`Restore interrupted by ${signalled}; nothing was left under a final name`);
      return SIGNAL_EXIT[signalled];
    }
    const err = error as Error;
    logger.error(err.message);
    if (options.verbose && err.stack) logger.debug(err.stack);
    return 1;
  } finally {
    for (const [sig, handler] of handlers) process.off(sig, handler);
    await logger.close();
  }
}
