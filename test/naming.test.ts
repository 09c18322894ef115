import test from 'ava';
import { execFile } from 'node:child_process';
import {
  FileNameError,
  autostartFileName,
  backupIdent,
  backupLogFileName,
  bootFileName,
  checkpointFileName,
  checkpointListFileName,
  checksumFileName,
  dataFileName,
  parseDataFileName,
  parsePartialFileName,
  parseVmConfigFileName,
  partialFileName,
  qcowInfoFileName,
  vmConfigFileName,
  type DataFileName,
} from '../lib/format/naming.js';

test('data file names as virtnbdbackup writes them', (t) => {
  t.is(dataFileName({ disk: 'vda', level: 'full' }), 'vda.full.data');
  t.is(dataFileName({ disk: 'sda', level: 'copy' }), 'sda.copy.data');
  t.is(dataFileName({ disk: 'vda', level: 'inc', ident: 'virtnbdbackup.3' }), 'vda.inc.virtnbdbackup.3.data');
  t.is(dataFileName({ disk: 'hdc', level: 'diff', ident: '1733000000' }), 'hdc.diff.1733000000.data');
});

test('data file names parse back to disk, level and ident', (t) => {
  const cases: DataFileName[] = [
    { disk: 'vda', level: 'full' },
    { disk: 'sdb', level: 'copy' },
    { disk: 'vda', level: 'inc', ident: 'virtnbdbackup.12' },
    { disk: 'hdc', level: 'diff', ident: '1733000000' },
    // Odd but legal: dots in the disk name and in the ident.
    { disk: 'my.disk', level: 'full' },
    { disk: 'my.disk', level: 'inc', ident: 'a.b.c' },
    { disk: 'full', level: 'copy' },
    { disk: 'vda', level: 'inc', ident: 'x.full' },
  ];
  for (const file of cases) {
    const name = dataFileName(file);
    t.deepEqual(parseDataFileName(name), file, name);
  }
});

test('names that are not data files parse to undefined', (t) => {
  for (const name of [
    'vda.full.data.chksum',
    'vda.full.data.partial',
    'vda.inc.virtnbdbackup.1.data.partial',
    'vmconfig.virtnbdbackup.0.xml',
    'vda.virtnbdbackup.0.qcow.json',
    'backup.full.11302026073500.log',
    'vm1.cpt',
    'OVMF_VARS.fd.virtnbdbackup.0',
    '.data',
    'full.data',
    '.full.data',
    'vda.data',
    'vda.inc..data',
    'vda.inc.data',
    '.inc.x.data',
    'dir/vda.full.data',
  ]) {
    t.is(parseDataFileName(name), undefined, name);
  }
});

test('data file names refuse components that would not parse back', (t) => {
  t.throws(() => dataFileName({ disk: '', level: 'full' }), { instanceOf: FileNameError });
  t.throws(() => dataFileName({ disk: 'a/b', level: 'full' }), { instanceOf: FileNameError });
  t.throws(() => dataFileName({ disk: 'x.inc.y', level: 'full' }), { instanceOf: FileNameError });
  t.throws(() => dataFileName({ disk: 'vda', level: 'inc' }), { instanceOf: FileNameError, message: /ident/ });
  t.throws(() => dataFileName({ disk: 'vda', level: 'full', ident: 'virtnbdbackup.0' }), { instanceOf: FileNameError });
  t.throws(() => dataFileName({ disk: 'vda', level: 'diff', ident: '../x' }), { instanceOf: FileNameError });
});

test('checksum and partial names sit beside the file', (t) => {
  t.is(checksumFileName('vda.full.data'), 'vda.full.data.chksum');
  t.is(checksumFileName('/backup/vm1/vda.inc.virtnbdbackup.1.data'), '/backup/vm1/vda.inc.virtnbdbackup.1.data.chksum');
  t.is(partialFileName('vda.full.data'), 'vda.full.data.partial');
  t.is(parsePartialFileName('vda.full.data.partial'), 'vda.full.data');
  t.is(parsePartialFileName('vda.full.data'), undefined);
  t.is(parsePartialFileName('.partial'), undefined);
});

test('config, checkpoint, qcow info, autostart and boot file names', (t) => {
  t.is(vmConfigFileName('virtnbdbackup.0'), 'vmconfig.virtnbdbackup.0.xml');
  t.is(vmConfigFileName('copy'), 'vmconfig.copy.xml');
  t.is(parseVmConfigFileName('vmconfig.virtnbdbackup.0.xml'), 'virtnbdbackup.0');
  t.is(parseVmConfigFileName('vmconfig.xml'), undefined);
  t.is(parseVmConfigFileName('vda.full.data'), undefined);
  t.is(checkpointFileName('virtnbdbackup.2'), 'checkpoints/virtnbdbackup.2.xml');
  t.is(checkpointListFileName('vm1'), 'vm1.cpt');
  t.is(qcowInfoFileName('vda', 'virtnbdbackup.0'), 'vda.virtnbdbackup.0.qcow.json');
  t.is(autostartFileName('virtnbdbackup.0'), 'autostart.virtnbdbackup.0');
  t.is(bootFileName('/var/lib/libvirt/qemu/nvram/vm1_VARS.fd', 'virtnbdbackup.0'), 'vm1_VARS.fd.virtnbdbackup.0');
  t.is(bootFileName('/boot/vmlinuz-6.1.0-cloud-amd64', undefined), 'vmlinuz-6.1.0-cloud-amd64');
  t.throws(() => bootFileName('/', 'x'), { instanceOf: FileNameError });
  t.throws(() => checkpointFileName('a/b'), { instanceOf: FileNameError });
});

test('log file name has the timestamp format of python strftime("%m%d%Y%H%M%S")', async (t) => {
  const at = new Date(2026, 10, 3, 7, 8, 9);
  const python = await new Promise<string>((resolve, reject) => {
    execFile(
      '/usr/bin/python3',
      ['-c', 'import datetime; print(datetime.datetime(2026, 11, 3, 7, 8, 9).strftime("%m%d%Y%H%M%S"))'],
      (error, stdout) => (error ? reject(error) : resolve(stdout.trim())),
    );
  });
  t.is(backupLogFileName('full', at), `backup.full.${python}.log`);
  t.is(backupLogFileName('auto', at), 'backup.auto.11032026070809.log');
  t.throws(() => backupLogFileName('weekly' as 'full', at), { instanceOf: FileNameError });
});

test('ident: checkpoint name, Unix time for diff, "copy" for copy', (t) => {
  const at = new Date(1_733_000_000_999);
  t.is(backupIdent('full', 'virtnbdbackup.0', at), 'virtnbdbackup.0');
  t.is(backupIdent('inc', 'virtnbdbackup.4', at), 'virtnbdbackup.4');
  t.is(backupIdent('diff', 'virtnbdbackup.4', at), '1733000000');
  t.is(backupIdent('copy', undefined, at), 'copy');
  t.throws(() => backupIdent('inc', undefined, at), { instanceOf: FileNameError });
});
