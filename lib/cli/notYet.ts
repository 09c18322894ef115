import { readFileSync } from 'node:fs';

/** The package version, read once from package.json. */
export function packageVersion(): string {
  const url = new URL('../../../package.json', import.meta.url);
  try {
    return (JSON.parse(readFileSync(url, 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/**
 * Placeholder entry point for a command whose issue has not landed yet: it
 * answers --version and --help, and otherwise says plainly that it cannot
 * do the job yet, with a non-zero exit, so no script mistakes it for success.
 */
export function notYet(command: string, what: string, argv: string[]): number {
  if (argv.includes('-V') || argv.includes('--version')) {
    process.stdout.write(`${command} (virtnbd) ${packageVersion()}\n`);
    return 0;
  }
  if (argv.includes('-h') || argv.includes('--help')) {
    process.stdout.write(`usage: ${command} [options]\n\n${what}\n\nNot yet implemented in this version of virtnbd.\n`);
    return 0;
  }
  process.stderr.write(`${command}: not yet: ${what.toLowerCase()} is not implemented in this version of virtnbd\n`);
  return 1;
}
