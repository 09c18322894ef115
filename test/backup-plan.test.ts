import test from 'ava';
import { readFileSync } from 'node:fs';
import { checkpointName, type CheckpointLink } from '../lib/backup/checkpointChain.js';
import { BackupPlanError, planBackup, type BackupPlan, type BackupPlanInput, type BackupPlanProblem } from '../lib/backup/level.js';
import { buildCheckpointXml, parseCheckpointXml, type SavedCheckpoint } from '../lib/xml/checkpointXml.js';
import { parseDomainXml } from '../lib/xml/domain.js';

const fixture = (name: string): string => readFileSync(new URL(`../fixtures/xml/${name}`, import.meta.url), 'utf8');
// webvm: vda, vdb qcow2; vdc raw; hdc cdrom; fda floppy.
const webvm = parseDomainXml(fixture('domain-running-mixed-disks.xml'));
const NOW = new Date('2026-11-30T08:00:00Z');
const T0 = 1_796_000_000;

/** The saved XML of checkpoint i of a chain, as a backup set holds it. */
function saved(i: number, domainName = 'webvm'): SavedCheckpoint {
  const cp = parseCheckpointXml(
    buildCheckpointXml({ name: checkpointName(i), ...(i > 0 ? { parent: checkpointName(i - 1) } : {}), disks: ['vda', 'vdb'] }),
  );
  return { ...cp, creationTime: T0 + i * 3600, domainName };
}

function live(i: number): CheckpointLink {
  return { name: checkpointName(i), ...(i > 0 ? { parent: checkpointName(i - 1) } : {}), creationTime: T0 + i * 3600 };
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** A target directory after a full backup and n-1 incrementals of webvm. */
function backupSet(n: number): Pick<BackupPlanInput, 'targetFiles' | 'checkpointList' | 'savedCheckpoints'> {
  const files = ['webvm.cpt', 'vda.full.data', 'vdb.full.data', 'vda.full.data.chksum', 'vmconfig.virtnbdbackup.0.xml', 'checkpoints'];
  for (let i = 1; i < n; i++) files.push(`vda.inc.virtnbdbackup.${i}.data`, `vdb.inc.virtnbdbackup.${i}.data`);
  return { targetFiles: files, checkpointList: range(n).map(checkpointName), savedCheckpoints: range(n).map((i) => saved(i)) };
}

function input(overrides: Partial<BackupPlanInput> = {}): BackupPlanInput {
  return {
    domain: webvm,
    running: true,
    level: 'full',
    type: 'stream',
    raw: false,
    stdout: false,
    compress: false,
    targetDir: '/backup/webvm',
    targetFiles: [],
    checkpointDir: '/backup/webvm/checkpoints',
    savedCheckpoints: [],
    libvirtCheckpoints: [],
    now: NOW,
    ...overrides,
  };
}

function refused(t: import('ava').ExecutionContext, overrides: Partial<BackupPlanInput>, problem: BackupPlanProblem, message: RegExp): void {
  const error = t.throws(() => planBackup(input(overrides)), { instanceOf: BackupPlanError });
  t.is(error?.problem, problem);
  t.regex(error?.message ?? '', message);
}

const warnings = (plan: BackupPlan): string[] => plan.messages.filter((m) => m.level === 'warning').map((m) => m.text);

test('full backup into an empty directory of a running domain', (t) => {
  const plan = planBackup(input());
  t.like(plan, { requestedLevel: 'full', level: 'full', offline: false, ident: 'virtnbdbackup.0', resetCheckpointFiles: true, checkpointListFile: 'webvm.cpt', workers: 2 });
  t.deepEqual(plan.checkpoint, { name: 'virtnbdbackup.0', create: true, disks: ['vda', 'vdb'], skip: ['vdc', 'hdc', 'fda'] });
  t.deepEqual(
    plan.targets.map((x) => [x.disk.target, x.dataFile, x.streamType, x.metaContext, x.qcowInfoFile]),
    [
      ['vda', 'vda.full.data', 'stream', 'base:allocation', 'vda.virtnbdbackup.0.qcow.json'],
      ['vdb', 'vdb.full.data', 'stream', 'base:allocation', 'vdb.virtnbdbackup.0.qcow.json'],
    ],
  );
  t.deepEqual(plan.jobSkip, ['vdc', 'hdc', 'fda']);
  t.deepEqual(plan.redefine, []);
  t.deepEqual(plan.remove, []);
  t.deepEqual(warnings(plan), ['Skipping disk vdc: format raw has no changed block tracking; use --raw to include it in full and copy backups.']);
});

test('full and copy refuse a directory that already holds backup data (even a partial or checksum file)', (t) => {
  for (const file of ['vda.full.data', 'vda.copy.data.partial', 'vda.inc.virtnbdbackup.1.data.chksum']) {
    refused(t, { level: 'full', targetFiles: ['webvm.cpt', file] }, 'target-not-empty', new RegExp(`already contains a backup \\(${file.replace(/\./g, '\\.')}\\)`));
    refused(t, { level: 'copy', targetFiles: [file] }, 'target-not-empty', /a copy backup needs an empty directory/);
  }
  t.notThrows(
    () => planBackup(input({ targetFiles: ['backup.full.11302026080000.log', 'checkpoints', 'notes.txt', 'webvm.cpt', 'old.database'] })),
    'logs, the checkpoint list and other files do not count',
  );
  t.notThrows(() => planBackup(input({ stdout: true, targetFiles: ['vda.full.data'] })), 'a zip to stdout does not write there');
  t.notThrows(() => planBackup(input({ startOnly: true, targetFiles: ['vda.full.data'] })));
});

test('full backup: checkpoints libvirt lost are redefined parent first, then all of ours deleted children first', (t) => {
  const set = backupSet(12);
  const plan = planBackup(
    input({
      level: 'full',
      targetFiles: [],
      checkpointList: set.checkpointList,
      savedCheckpoints: [...(set.savedCheckpoints ?? [])].reverse(),
      libvirtCheckpoints: range(9).map(live),
    }),
  );
  t.deepEqual(plan.redefine.map((c) => c.name), ['virtnbdbackup.9', 'virtnbdbackup.10', 'virtnbdbackup.11']);
  t.deepEqual(plan.remove, range(12).reverse().map(checkpointName));
  t.like(plan.checkpoint, { name: 'virtnbdbackup.0', create: true });
  t.is(plan.checkpoint.parent, undefined);
});

test('a checkpoint not made by virtnbdbackup stops full, inc and diff, not copy', (t) => {
  const libvirtCheckpoints = [live(0), { name: 'before-upgrade' }];
  for (const level of ['full', 'inc', 'diff'] as const) {
    refused(
      t,
      { level, libvirtCheckpoints, ...(level === 'full' ? {} : backupSet(1)) },
      'foreign-checkpoint',
      /Domain webvm has checkpoint before-upgrade, which was not created by virtnbdbackup.*virsh checkpoint-delete webvm before-upgrade.*full backup/,
    );
  }
  const copy = planBackup(input({ level: 'copy', libvirtCheckpoints }));
  t.like(copy, { level: 'copy', ident: 'copy' });
  t.deepEqual(copy.remove, []);
});

test('auto: full into an empty directory, inc next to a full backup, refused next to a copy', (t) => {
  t.is(planBackup(input({ level: 'auto', targetFiles: ['checkpoints'] })).level, 'full');
  const inc = planBackup(input({ level: 'auto', ...backupSet(1), libvirtCheckpoints: [live(0)] }));
  t.like(inc, { requestedLevel: 'auto', level: 'inc', ident: 'virtnbdbackup.1' });
  refused(t, { level: 'auto', targetFiles: ['vda.copy.data'] }, 'no-full-backup', /auto cannot continue.*no full backup/);
});

test('incremental: next name is the length of the chain, parent the last one; lost checkpoints redefined in chain order', (t) => {
  const set = backupSet(12);
  const plan = planBackup(input({ level: 'inc', ...set, libvirtCheckpoints: range(9).map(live) }));
  t.like(plan, { level: 'inc', ident: 'virtnbdbackup.12', resetCheckpointFiles: false });
  t.deepEqual(plan.checkpoint, {
    name: 'virtnbdbackup.12',
    parent: 'virtnbdbackup.11',
    incremental: 'virtnbdbackup.11',
    create: true,
    disks: ['vda', 'vdb'],
    skip: ['vdc', 'hdc', 'fda'],
  });
  t.deepEqual(plan.redefine.map((c) => c.name), ['virtnbdbackup.9', 'virtnbdbackup.10', 'virtnbdbackup.11']);
  t.deepEqual(plan.remove, []);
  t.deepEqual(
    plan.targets.map((x) => [x.dataFile, x.metaContext]),
    [
      ['vda.inc.virtnbdbackup.12.data', 'qemu:dirty-bitmap:backup-vda'],
      ['vdb.inc.virtnbdbackup.12.data', 'qemu:dirty-bitmap:backup-vdb'],
    ],
  );
});

test('incremental without a full backup, without checkpoints or after a failed backup is refused', (t) => {
  refused(t, { level: 'inc', targetFiles: [] }, 'no-full-backup', /Cannot run an incremental backup: target directory \/backup\/webvm holds no full backup/);
  refused(t, { level: 'inc', targetFiles: ['vda.full.data'] }, 'no-checkpoints', /No checkpoint found in \/backup\/webvm\/webvm\.cpt: run a full backup first/);
  refused(t, { level: 'diff', targetFiles: ['vda.full.data'], checkpointList: [] }, 'no-checkpoints', /run a full backup first/);
  const set = backupSet(2);
  refused(
    t,
    { level: 'inc', ...set, targetFiles: [...(set.targetFiles ?? []), 'vda.inc.virtnbdbackup.2.data.partial'] },
    'partial-backup',
    /holds a partial backup \(vda\.inc\.virtnbdbackup\.2\.data\.partial\)/,
  );
});

test('a chain that cannot continue: last checkpoint lost with no saved XML, parents that do not link, another chain in libvirt', (t) => {
  const set = backupSet(3);
  refused(
    t,
    { level: 'inc', ...set, savedCheckpoints: (set.savedCheckpoints ?? []).slice(0, 2), libvirtCheckpoints: range(2).map(live) },
    'broken-chain',
    /Checkpoint virtnbdbackup\.2, the last one in webvm\.cpt, is not defined for domain webvm and \/backup\/webvm\/checkpoints\/virtnbdbackup\.2\.xml is missing/,
  );
  refused(
    t,
    { level: 'inc', ...set, checkpointList: ['virtnbdbackup.0', 'virtnbdbackup.2'], libvirtCheckpoints: range(3).map(live) },
    'broken-chain',
    /virtnbdbackup\.2 has parent virtnbdbackup\.1, but webvm\.cpt lists virtnbdbackup\.0 before it/,
  );
  refused(
    t,
    { level: 'inc', ...set, libvirtCheckpoints: range(4).map(live) },
    'chain-mismatch',
    /already has checkpoint virtnbdbackup\.3, which webvm\.cpt does not list/,
  );
  // Another directory's full backup recreated virtnbdbackup.0 later.
  refused(
    t,
    { level: 'diff', ...set, libvirtCheckpoints: [{ name: 'virtnbdbackup.0', creationTime: T0 + 86_400 }] },
    'chain-mismatch',
    /Checkpoint virtnbdbackup\.0 of domain webvm \(created 2026-12-01.*is not the one this backup set saved/,
  );
});

test('differential: no checkpoint created, files named by Unix time, metadata names the would-be next checkpoint', (t) => {
  const plan = planBackup(input({ level: 'diff', ...backupSet(3), libvirtCheckpoints: range(3).map(live) }));
  const unix = String(Math.floor(NOW.getTime() / 1000));
  t.like(plan, { level: 'diff', ident: unix });
  t.deepEqual(plan.checkpoint, {
    name: 'virtnbdbackup.3',
    parent: 'virtnbdbackup.2',
    incremental: 'virtnbdbackup.2',
    create: false,
    disks: ['vda', 'vdb'],
    skip: ['vdc', 'hdc', 'fda'],
  });
  t.deepEqual(plan.targets.map((x) => x.dataFile), [`vda.diff.${unix}.data`, `vdb.diff.${unix}.data`]);
  t.is(plan.targets[0].qcowInfoFile, `vda.${unix}.qcow.json`);
});

test('shut-off domain: full becomes copy with a warning; inc and diff read the last bitmap offline', (t) => {
  const copy = planBackup(input({ level: 'full', running: false }));
  t.like(copy, { level: 'copy', offline: true, ident: 'copy', resetCheckpointFiles: false });
  t.false(copy.checkpoint.create);
  t.deepEqual(copy.targets.map((x) => x.dataFile), ['vda.copy.data', 'vdb.copy.data']);
  t.true(warnings(copy).some((w) => /not running: .* runs as a copy/.test(w)));

  const set = backupSet(2);
  const inc = planBackup(input({ level: 'inc', running: false, ...set, libvirtCheckpoints: [] }));
  t.like(inc.checkpoint, { name: 'virtnbdbackup.1', parent: 'virtnbdbackup.1', bitmap: 'virtnbdbackup.1', create: false });
  t.is(inc.checkpoint.incremental, undefined);
  t.deepEqual(inc.redefine, [], 'nothing is redefined offline');
  // Named after the checkpoint and the time, so it never replaces the online inc that created the checkpoint.
  const unixNow = Math.floor(NOW.getTime() / 1000);
  t.is(inc.ident, `virtnbdbackup.1.${unixNow}`);
  t.deepEqual(
    inc.targets.map((x) => [x.dataFile, x.metaContext]),
    [
      [`vda.inc.virtnbdbackup.1.${unixNow}.data`, 'qemu:dirty-bitmap:virtnbdbackup.1'],
      [`vdb.inc.virtnbdbackup.1.${unixNow}.data`, 'qemu:dirty-bitmap:virtnbdbackup.1'],
    ],
  );
  t.false(inc.targets.some((x) => set.targetFiles.includes(x.dataFile)), 'no existing file is replaced');
  const again = t.throws(() => planBackup(input({ level: 'inc', running: false, ...set, targetFiles: [...set.targetFiles, `vda.inc.virtnbdbackup.1.${unixNow}.data`] })));
  t.regex(again?.message ?? '', /within the same second/);

  const diff = planBackup(input({ level: 'diff', running: false, ...set }));
  t.like(diff.checkpoint, { name: 'virtnbdbackup.1', bitmap: 'virtnbdbackup.1', create: false });
  t.is(diff.targets[0].dataFile, `vda.diff.${Math.floor(NOW.getTime() / 1000)}.data`);
  t.is(diff.targets[0].metaContext, 'qemu:dirty-bitmap:virtnbdbackup.1');
  t.deepEqual(warnings(diff), ['Skipping disk vdc: format raw has no changed block tracking; use --raw to include it in full and copy backups.']);
});

test('--raw: raw disks saved whole as copy files in full backups, dropped with a warning for inc', (t) => {
  const full = planBackup(input({ raw: true }));
  t.deepEqual(
    full.targets.map((x) => [x.dataFile, x.streamType, x.qcowInfoFile]),
    [
      ['vda.full.data', 'stream', 'vda.virtnbdbackup.0.qcow.json'],
      ['vdb.full.data', 'stream', 'vdb.virtnbdbackup.0.qcow.json'],
      ['vdc.copy.data', 'raw', undefined],
    ],
  );
  t.deepEqual(full.checkpoint.disks, ['vda', 'vdb'], 'no bitmap for the raw disk');
  t.deepEqual(full.checkpoint.skip, ['vdc', 'hdc', 'fda']);
  t.deepEqual(full.jobSkip, ['hdc', 'fda']);
  const inc = planBackup(input({ level: 'inc', raw: true, ...backupSet(1), libvirtCheckpoints: [live(0)] }));
  t.false(inc.raw);
  t.deepEqual(inc.targets.map((x) => x.disk.target), ['vda', 'vdb']);
  t.true(warnings(inc).some((w) => /Raw disks cannot be part of incremental/.test(w)));
});

test('only raw disks selected: full becomes copy', (t) => {
  const plan = planBackup(input({ raw: true, include: ['vdc'] }));
  t.like(plan, { level: 'copy', ident: 'copy' });
  t.deepEqual(plan.targets.map((x) => [x.dataFile, x.streamType]), [['vdc.copy.data', 'raw']]);
  t.true(plan.messages.some((m) => m.level === 'info' && /running a copy backup/.test(m.text)));
});

test('-t raw writes qcow2 disks as raw images in full backups and cannot do inc', (t) => {
  t.deepEqual(planBackup(input({ type: 'raw' })).targets.map((x) => x.streamType), ['raw', 'raw']);
  refused(t, { type: 'raw', level: 'inc', ...backupSet(1) }, 'invalid-options', /Output type raw \(-t raw\) cannot hold incremental/);
  refused(t, { type: 'raw', level: 'auto', ...backupSet(1) }, 'invalid-options', /cannot hold incremental/);
});

test('option combinations virtnbdbackup refuses', (t) => {
  refused(t, { stdout: true, type: 'raw' }, 'invalid-options', /cannot be written to stdout/);
  refused(t, { stdout: true, raw: true }, 'invalid-options', /--raw\) cannot be written to stdout/);
  refused(t, { compress: 2, type: 'raw' }, 'invalid-options', /Compression \(-z\) is not supported with output type raw/);
  t.notThrows(() => planBackup(input({ compress: 0 })), '-z 0 is a compression level');
});

test("a directory holding another domain's backups is refused", (t) => {
  refused(t, { level: 'inc', ...backupSet(1), targetFiles: ['dbvm.cpt', 'vda.full.data'] }, 'other-domain', /holds backups of another domain \(checkpoint list dbvm\.cpt\), not of webvm/);
  refused(t, { level: 'auto', targetFiles: ['vda.full.data'], vmConfigNames: ['dbvm'] }, 'other-domain', /configuration names domain dbvm/);
  refused(
    t,
    { level: 'full', savedCheckpoints: [saved(0, 'dbvm')] },
    'other-domain',
    /Checkpoint directory \/backup\/webvm\/checkpoints holds checkpoint virtnbdbackup\.0 of domain dbvm, not of webvm/,
  );
});

test('nothing to back up is refused; unmatched names are mentioned', (t) => {
  const error = t.throws(() => planBackup(input({ include: ['vdz'] })), { instanceOf: BackupPlanError });
  t.is(error?.problem, 'no-disks');
  const plan = planBackup(input({ exclude: ['vdz'] }));
  t.true(plan.messages.some((m) => m.level === 'info' && /No disk of domain webvm is named vdz/.test(m.text)));
});

test('workers: default one per disk, at least 1, at most the disks, 1 for stdout', (t) => {
  t.is(planBackup(input({ worker: 0 })).workers, 1);
  t.is(planBackup(input({ worker: -3 })).workers, 1);
  t.is(planBackup(input({ worker: 8 })).workers, 2);
  t.is(planBackup(input({ stdout: true })).workers, 1);
});

test('a second differential backup within the same second is refused before anything starts', (t) => {
  const set = backupSet(3);
  const unix = String(Math.floor(NOW.getTime() / 1000));
  refused(
    t,
    { level: 'diff', ...set, targetFiles: [...set.targetFiles, `vda.diff.${unix}.data`], libvirtCheckpoints: range(3).map(live) },
    'target-not-empty',
    new RegExp(`vda\\.diff\\.${unix}\\.data exists already.*Wait a second`),
  );
});
