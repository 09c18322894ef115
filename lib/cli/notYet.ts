import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The package version from virtnbd's package.json, found by walking up from
 * this module: it sits two levels up in a checkout (lib/cli) and three in
 * the build (dist/lib/cli).
 */
export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'virtnbd' && pkg.version) return pkg.version;
    } catch {
      // not here: look one level up
    }
    dir = dirname(dir);
  }
  return 'unknown';
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
