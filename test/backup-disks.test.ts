import test from 'ava';
import { readFileSync } from 'node:fs';
import { canHoldBitmap, parseDiskList, selectDisks, type DiskSelection } from '../lib/backup/disks.js';
import { parseDomainXml } from '../lib/xml/domain.js';

const fixture = (name: string): string => readFileSync(new URL(`../fixtures/xml/${name}`, import.meta.url), 'utf8');
const running = parseDomainXml(fixture('domain-running-mixed-disks.xml')).disks; // vda vdb qcow2, vdc raw, hdc cdrom, fda floppy
const inactive = parseDomainXml(fixture('domain-block-lun-network-volume.xml')).disks; // vda qcow2/block, vdb raw/block, vdc nbd, vdd volume, sda lun, sdb cdrom

function summary(s: DiskSelection): { backup: string[]; skipped: [string, boolean][] } {
  return { backup: s.backup.map((d) => d.target), skipped: s.skipped.map((k) => [k.disk.target, k.warn]) };
}

test('default: qcow2 disks backed up; raw skipped with a warning; cdrom and floppy skipped quietly', (t) => {
  const s = selectDisks(running, { raw: false });
  t.deepEqual(summary(s), {
    backup: ['vda', 'vdb'],
    skipped: [
      ['vdc', true],
      ['hdc', false],
      ['fda', false],
    ],
  });
  t.regex(s.skipped[0].reason, /format raw has no changed block tracking; use --raw/);
  t.is(s.skipped[1].reason, 'cdrom drive');
  t.is(s.skipped[2].reason, 'floppy drive');
  t.deepEqual(s.unmatched, []);
});

test('--raw adds raw disks, never cdrom or floppy', (t) => {
  t.deepEqual(summary(selectDisks(running, { raw: true })).backup, ['vda', 'vdb', 'vdc']);
});

test('block, LUN, network and volume disks', (t) => {
  const s = selectDisks(inactive, { raw: false });
  t.deepEqual(s.backup.map((d) => d.target), ['vda', 'vdd'], 'qcow2 on a block device and a qcow2 volume');
  const reasons = new Map(s.skipped.map((k) => [k.disk.target, k]));
  t.like(reasons.get('vdb'), { warn: true });
  t.regex(reasons.get('vdc')?.reason ?? '', /network disk \(nbd\): network disks are not supported/);
  t.true(reasons.get('vdc')?.warn);
  t.regex(reasons.get('sda')?.reason ?? '', /direct-attached LUN/);
  t.true(reasons.get('sda')?.warn);
  t.like(reasons.get('sdb'), { reason: 'cdrom drive', warn: false });
});

test('--raw takes a raw block device but never a LUN or a network disk', (t) => {
  t.deepEqual(selectDisks(inactive, { raw: true }).backup.map((d) => d.target), ['vda', 'vdb', 'vdd']);
});

test('--exclude warns (as virtnbdbackup does); --include skips the rest quietly, before any other check', (t) => {
  const excluded = selectDisks(running, { raw: false, exclude: ['vda'] });
  t.deepEqual(excluded.backup.map((d) => d.target), ['vdb']);
  t.like(excluded.skipped[0], { reason: 'excluded by --exclude', warn: true });
  const included = selectDisks(running, { raw: false, include: ['vdb'] });
  t.deepEqual(summary(included), {
    backup: ['vdb'],
    skipped: [
      ['vda', false],
      ['vdc', false],
      ['hdc', false],
      ['fda', false],
    ],
  });
  t.true(included.skipped.every((k) => k.reason === 'not listed in --include'), 'a raw disk not included raises no raw warning');
  t.deepEqual(selectDisks(running, { raw: true, include: ['vdb', 'vdc'] }).backup.map((d) => d.target), ['vdb', 'vdc']);
});

test('names in --include/--exclude that match no disk are reported', (t) => {
  const s = selectDisks(running, { raw: false, include: ['vdb', 'vdz'], exclude: ['sdq', 'vdz'] });
  t.deepEqual(s.unmatched, ['vdz', 'sdq']);
  t.deepEqual(s.backup.map((d) => d.target), ['vdb']);
});

test('disks without a source, of unknown source types, or without a format', (t) => {
  const dom = parseDomainXml(`<domain><name>x</name><devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><target dev='vda'/></disk>
    <disk type='nvme' device='disk'><driver name='qemu' type='raw'/><source type='pci' managed='yes' namespace='1'/><target dev='vdb'/></disk>
    <disk type='file' device='disk'><source file='/img/noformat'/><target dev='vdc'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='vmdk'/><source file='/img/x.vmdk'/><target dev='vdd'/></disk>
  </devices></domain>`);
  const s = selectDisks(dom.disks, { raw: false });
  t.deepEqual(s.backup, []);
  const reasons = s.skipped.map((k) => k.reason);
  t.is(reasons[0], 'no source (empty drive?)');
  t.is(reasons[1], "source type 'nvme' is not supported");
  t.regex(reasons[2], /format not given \(raw\) has no changed block tracking/);
  t.regex(reasons[3], /format vmdk has no changed block tracking/);
  t.true(s.skipped.every((k) => k.warn));
});

test('only qcow2 holds bitmaps; disk lists split on commas', (t) => {
  t.true(canHoldBitmap({ format: 'qcow2' }));
  t.false(canHoldBitmap({ format: 'raw' }));
  t.false(canHoldBitmap({}));
  t.deepEqual(parseDiskList('vda,vdb'), ['vda', 'vdb']);
  t.deepEqual(parseDiskList(' vda , ,vdb,'), ['vda', 'vdb']);
  t.deepEqual(parseDiskList(','), []);
});
