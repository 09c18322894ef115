/**
 * The server side of `npm run bench -- map`: virtnbdmap's command-line
 * entry, compiled with tsc and run by plain node (as bin/virtnbdmap runs
 * the built package), so its startup and memory are those of a user's run.
 */
import { main } from '../../lib/cli/virtnbdmap.js';

process.exitCode = await main(process.argv.slice(2));
