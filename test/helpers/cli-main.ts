/**
 * Entry for running a CLI from the TypeScript sources in a child process:
 * `node --import tsx test/helpers/cli-main.ts <virtnbdbackup|virtnbdrestore|virtnbdmap> ARGS...`.
 * It does what bin/<name> does with dist/, without a build step.
 */
const [name, ...args] = process.argv.slice(2);
if (name !== 'virtnbdbackup' && name !== 'virtnbdrestore' && name !== 'virtnbdmap') {
  process.stderr.write(`cli-main: unknown command ${JSON.stringify(name)}\n`);
  process.exit(2);
}
const cli = (await import(`../../lib/cli/${name}.js`)) as { main(argv: string[]): number | Promise<number> };
process.exitCode = await cli.main(args);
