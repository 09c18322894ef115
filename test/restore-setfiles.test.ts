/**
 * Backup-set file rules of a restore (pure): which zip entry names are
 * refused, which domain config / qcow2 info / boot file copy a restore
 * picks for the point it restores to, the qemu-img options that recreate
 * the source image, and the restored image's file name.
 */
import test from 'ava';
import { BackupSetError } from '../lib/restore/errors.js';
import { classifySetFile, pickBootFile, pickQcowInfo, pickVmConfig, qcowCreateOptions, restoredFileName, safeEntryName } from '../lib/restore/setFiles.js';

test('entry names that leave the set are refused, naming the entry', (t) => {
  for (const bad of ['../vda.full.data', 'a/../../etc/passwd', '/etc/cron.d/x', 'C:/x', 'a\\..\\b', 'x\0y', '']) {
    t.throws(() => safeEntryName(bad, 'set.zip'), { instanceOf: BackupSetError, message: /set\.zip: entry .* refusing the archive/ }, JSON.stringify(bad));
  }
  t.is(safeEntryName('./vmconfig.virtnbdbackup.0.xml', 'z'), 'vmconfig.virtnbdbackup.0.xml');
  t.is(safeEntryName('checkpoints/virtnbdbackup.0.xml', 'z'), 'checkpoints/virtnbdbackup.0.xml');
  t.is(safeEntryName('a..b.data', 'z'), 'a..b.data', 'dots inside a name are fine');
});

test('set files are told apart by name', (t) => {
  t.like(classifySetFile('vda.inc.virtnbdbackup.3.data'), { kind: 'data', data: { disk: 'vda', level: 'inc', ident: 'virtnbdbackup.3' } });
  t.like(classifySetFile('vda.full.data.chksum'), { kind: 'checksum', dataFile: 'vda.full.data' });
  t.like(classifySetFile('vmconfig.1764500000.xml'), { kind: 'vmconfig', ident: '1764500000' });
  t.like(classifySetFile('vda.virtnbdbackup.2.qcow.json'), { kind: 'qcowInfo', disk: 'vda', ident: 'virtnbdbackup.2' });
  t.is(classifySetFile('vm1.cpt').kind, 'checkpointList');
  t.is(classifySetFile('checkpoints/virtnbdbackup.0.xml').kind, 'checkpoint');
  t.is(classifySetFile('backup.full.11302026082810.log').kind, 'log');
  t.is(classifySetFile('vda.full.data.partial').kind, 'partial');
  t.is(classifySetFile('OVMF_VARS.fd.virtnbdbackup.0').kind, 'other');
});

const configs = ['vmconfig.virtnbdbackup.0.xml', 'vmconfig.virtnbdbackup.1.xml', 'vmconfig.virtnbdbackup.10.xml', 'vmconfig.virtnbdbackup.2.xml', 'vmconfig.1764500003.xml'];

test('the domain config of the point restored to, else the newest', (t) => {
  t.is(pickVmConfig(configs, { ident: 'virtnbdbackup.1', checkpoint: 'virtnbdbackup.1' }), 'vmconfig.virtnbdbackup.1.xml');
  // A diff's config is written a moment after its data file is named.
  t.is(pickVmConfig(configs, { ident: '1764500001', checkpoint: 'virtnbdbackup.2' }), 'vmconfig.1764500003.xml');
  t.is(pickVmConfig(configs, { ident: '1764600000', checkpoint: 'virtnbdbackup.2' }), 'vmconfig.virtnbdbackup.2.xml');
  t.is(pickVmConfig(configs), 'vmconfig.virtnbdbackup.10.xml', 'numbers, not text order');
  t.is(pickVmConfig(['vmconfig.copy.xml']), 'vmconfig.copy.xml');
  t.is(pickVmConfig(['vda.full.data']), undefined);
});

test('qcow2 info and boot files follow the same rule', (t) => {
  const names = ['vda.virtnbdbackup.0.qcow.json', 'vda.virtnbdbackup.1.qcow.json', 'vdb.virtnbdbackup.1.qcow.json', 'OVMF_VARS.fd.virtnbdbackup.0', 'OVMF_VARS.fd.virtnbdbackup.1', 'vmlinuz'];
  t.is(pickQcowInfo(names, 'vda', { checkpoint: 'virtnbdbackup.0' }), 'vda.virtnbdbackup.0.qcow.json');
  t.is(pickQcowInfo(names, 'vda'), 'vda.virtnbdbackup.1.qcow.json');
  t.is(pickQcowInfo(names, 'vdc'), undefined);
  t.is(pickBootFile(names, '/var/lib/libvirt/qemu/nvram/OVMF_VARS.fd', { checkpoint: 'virtnbdbackup.0' }), 'OVMF_VARS.fd.virtnbdbackup.0');
  t.is(pickBootFile(names, '/var/lib/libvirt/qemu/nvram/OVMF_VARS.fd'), 'OVMF_VARS.fd.virtnbdbackup.1');
  t.is(pickBootFile(names, '/boot/vmlinuz'), 'vmlinuz', 'copy backups keep the plain name');
  t.is(pickBootFile(names, '/boot/initrd.img'), undefined);
});

test('qemu-img create options from the source image info', (t) => {
  const info = {
    'virtual-size': 1073741824,
    'cluster-size': 2097152,
    format: 'qcow2',
    'format-specific': { type: 'qcow2', data: { compat: '1.1', 'compression-type': 'zstd', 'lazy-refcounts': true, 'refcount-bits': 16, corrupt: false, 'extended-l2': true } },
  };
  t.deepEqual(qcowCreateOptions(info, 'x').options, [
    ['compat', '1.1'],
    ['cluster_size', '2097152'],
    ['lazy_refcounts', 'on'],
    ['refcount_bits', '16'],
    ['compression_type', 'zstd'],
    ['extended_l2', 'on'],
  ]);
  const external = qcowCreateOptions({ 'cluster-size': 65536, 'format-specific': { data: { compat: '1.1', 'data-file': '/x/raw' } } }, 'vda.q.json');
  t.deepEqual(external.options, [['compat', '1.1'], ['cluster_size', '65536']]);
  t.regex(external.warnings[0]!, /external data file/);
  // Values that could smuggle options into the command line are dropped.
  t.deepEqual(qcowCreateOptions({ 'format-specific': { data: { compat: '1.1,preallocation=full' } } }, 'x').options, []);
  t.deepEqual(qcowCreateOptions('nope', 'x').options, []);
});

test('restored image name: the source image base name, the volume name, or the disk', (t) => {
  const disk = { target: 'vda', device: 'disk', type: 'file', readonly: false, backingStore: [] };
  t.is(restoredFileName('vda', { ...disk, path: '/var/lib/libvirt/images/web.qcow2' }), 'web.qcow2');
  t.is(restoredFileName('vdd', { ...disk, type: 'volume', pool: 'default', volume: 'vol1.qcow2' }), 'vol1.qcow2');
  t.is(restoredFileName('vdc', { ...disk, type: 'network', path: 'export' }), 'vdc');
  t.is(restoredFileName('vda', undefined), 'vda');
  t.is(restoredFileName('vda', { ...disk, path: '/x/..' }), 'vda');
});
