import { notYet } from './notYet.js';

export function main(argv: string[]): number {
  return notYet('virtnbdbackup', 'Back up a libvirt domain\'s disks (full, incremental, differential, copy)', argv);
}
