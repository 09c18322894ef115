import { notYet } from './notYet.js';

export function main(argv: string[]): number {
  return notYet('virtnbdrestore', 'Restore, dump or verify a virtnbd/virtnbdbackup backup set', argv);
}
