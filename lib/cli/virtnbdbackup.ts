/**
 * The virtnbdbackup command: parse the flags (backupArgs.ts), refuse the
 * ones virtnbd does not have yet, set up logging, progress and Ctrl-C, and
 * call backup(). Exit codes as virtnbdbackup's: 0 done, 1 failed, 2 bad
 * command line or (with --strict) warnings logged; 130/143 when stopped by
 * SIGINT/SIGTERM (after the backup job was stopped and cleaned up).
 */
import { userInfo } from 'node:os';
import { backup } from '../backup/backup.js';
import { BackupError, BackupInterruptedError, messageOf } from '../backup/errors.js';
import { BackupPlanError } from '../backup/level.js';
import { ArgumentError } from './argParser.js';
import { notYetGiven, parseBackupArgs, type BackupOptions } from './backupArgs.js';
import { commandCredentials, redactArgv } from './credentials.js';
import { createLogger, type Logger } from './logger.js';
import { packageVersion } from './notYet.js';
import { createProgress } from './progress.js';

function currentUser(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? 'root';
  }
}

/** Ctrl-C and SIGTERM abort the run (it cleans up); a second one exits at once. */
function trapSignals(controller: AbortController, logger: Logger): () => void {
  const handlers = (['SIGINT', 'SIGTERM'] as const).map((signal) => {
    const handler = (): void => {
      if (controller.signal.aborted) process.exit(signal === 'SIGINT' ? 130 : 143);
      logger.error(`Caught signal ${signal}: stopping the backup job and cleaning up.`);
      controller.abort(new BackupInterruptedError(signal));
    };
    process.on(signal, handler);
    return [signal, handler] as const;
  });
  return () => {
    for (const [signal, handler] of handlers) process.off(signal, handler);
  };
}

function report(error: unknown, logger: Logger, verbose: boolean): number {
  if (error instanceof BackupInterruptedError) {
    logger.error(`${error.message}: the backup job was stopped and this run's files removed.`);
    return error.exitCode;
  }
  if (error instanceof BackupError || error instanceof BackupPlanError) logger.error(error.message);
  else logger.error(`Unexpected error: ${messageOf(error)}`);
  if (verbose && error instanceof Error && error.stack) logger.debug(error.stack);
  return 1;
}

async function run(options: BackupOptions, argv: readonly string[]): Promise<number> {
  const logger = createLogger({ verbose: options.verbose, quiet: options.quiet, color: !options.noColor && Boolean(process.stderr.isTTY), syslog: options.syslog });
  try {
    const missing = notYetGiven(options);
    if (missing.length > 0) {
      logger.error(`not yet: ${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} not implemented in this version of virtnbd.`);
      return 1;
    }
    const credentials = commandCredentials(options, logger);
    if (credentials === 'failed') return 1;
    const controller = new AbortController();
    const untrap = trapSignals(controller, logger);
    try {
      logger.info(`virtnbdbackup (virtnbd ${packageVersion()}), arguments: ${redactArgv(argv, options.password).join(' ')}`);
      const progressEnabled = !options.noProgress && Boolean(process.stderr.isTTY);
      await backup({ ...options, credentials }, {
        logger,
        signal: controller.signal,
        progress: (label, total) => createProgress({ label, total, enabled: progressEnabled }),
      });
      if (options.strict && logger.warnings > 0) {
        logger.info(`[${logger.warnings}] warnings during the backup: exit code 2 (--strict).`);
        return 2;
      }
      return 0;
    } catch (e) {
      return report(controller.signal.aborted ? controller.signal.reason : e, logger, options.verbose);
    } finally {
      untrap();
    }
  } finally {
    await logger.close();
  }
}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseBackupArgs(argv, { user: currentUser(), pid: process.pid });
  } catch (e) {
    if (e instanceof ArgumentError) {
      process.stderr.write(e.format());
      return e.exitCode;
    }
    throw e;
  }
  if (parsed.kind === 'help') {
    process.stdout.write(parsed.text);
    return 0;
  }
  if (parsed.kind === 'version') {
    process.stdout.write(`virtnbdbackup (virtnbd) ${packageVersion()}\n`);
    return 0;
  }
  return run(parsed.options, argv);
}
