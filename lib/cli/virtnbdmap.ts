import { notYet } from './notYet.js';

export function main(argv: string[]): number {
  return notYet('virtnbdmap', 'Serve a backup chain over NBD for single-file restore and instant recovery', argv);
}
