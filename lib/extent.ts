/**
 * An Extent is a range of the virtual disk as the NBD server describes it
 * (block status): `data` when it must be copied, `zero` when it reads as
 * zeros. For dirty-bitmap contexts, `data` means dirty.
 */
export interface Extent {
  offset: number;
  length: number;
  data: boolean;
  zero: boolean;
}
