/**
 * The start every command shares: parse the command line (usage errors
 * print argparse-style and exit 2), answer --help and --version, then
 * open the one logger with its log file. Returns either the exit code to
 * stop with, or the parsed options and the logger to run with.
 */
import { ArgumentError } from './argParser.js';
import { createLogger, type Logger } from './logger.js';
import { packageVersion } from './notYet.js';
import { redactArgv } from './credentials.js';

export type Parsed<O> = { kind: 'run'; options: O } | { kind: 'help'; text: string } | { kind: 'version' };

export interface CommonCliOptions {
  logFile: string;
  verbose: boolean;
  noColor: boolean;
}

export type Startup<O> = { exit: number } | { options: O; logger: Logger };

export async function startCommand<O extends CommonCliOptions>(
  command: string,
  argv: readonly string[],
  parse: () => Parsed<O>,
): Promise<Startup<O>> {
  let parsed: Parsed<O>;
  try {
    parsed = parse();
  } catch (error) {
    if (error instanceof ArgumentError) {
      process.stderr.write(error.format());
      return { exit: error.exitCode };
    }
    throw error;
  }
  if (parsed.kind === 'help') {
    process.stdout.write(parsed.text);
    return { exit: 0 };
  }
  if (parsed.kind === 'version') {
    process.stdout.write(`${packageVersion()}\n`);
    return { exit: 0 };
  }
  const options = parsed.options;
  const logger = createLogger({ verbose: options.verbose, color: options.noColor ? false : undefined, tag: command });
  try {
    await logger.attachFile(options.logFile);
  } catch (error) {
    logger.error(`Failed to open logfile: [${(error as Error).message}].`);
    await logger.close();
    return { exit: 1 };
  }
  // A --password given on the command line never reaches the log.
  const password = (options as { password?: string }).password;
  logger.info(`Version: ${packageVersion()} Arguments: ${command} ${redactArgv(argv, password).join(' ')}`);
  return { options, logger };
}
