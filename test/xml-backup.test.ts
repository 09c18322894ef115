import test from 'ava';
import { readFileSync } from 'node:fs';
import { BackupXmlError, buildBackupXml, scratchFilePath } from '../lib/xml/backupXml.js';
import { CheckpointXmlError, buildCheckpointXml, parseCheckpointXml } from '../lib/xml/checkpointXml.js';
import { parseXmlDocument, XmlDocumentError } from '../lib/xml/xmlTree.js';

const fixture = (name: string): string => readFileSync(new URL(`../fixtures/xml/${name}`, import.meta.url), 'utf8');

test('pull-mode backup XML: unix socket, scratch file per backed-up disk, backup=no for the others', (t) => {
  const xml = buildBackupXml({
    server: { transport: 'unix', socket: '/var/tmp/virtnbdbackup.42' },
    disks: [
      { target: 'vda', scratch: '/var/tmp/backup.AB12C.vda' },
      { target: 'vdb', scratch: '/var/tmp/backup.AB12C.vdb' },
    ],
    skip: ['vdc', 'hdc'],
  });
  t.is(
    xml,
    `<domainbackup mode="pull">
  <server transport="unix" socket="/var/tmp/virtnbdbackup.42"/>
  <disks>
    <disk name="vda" backup="yes" type="file">
      <scratch file="/var/tmp/backup.AB12C.vda"/>
    </disk>
    <disk name="vdb" backup="yes" type="file">
      <scratch file="/var/tmp/backup.AB12C.vdb"/>
    </disk>
    <disk name="vdc" backup="no"/>
    <disk name="hdc" backup="no"/>
  </disks>
</domainbackup>
`,
  );
});

test('incremental job over TCP with TLS: <incremental> and the server name, port and tls attributes', (t) => {
  const root = parseXmlDocument(
    buildBackupXml({
      server: { transport: 'tcp', name: 'kvmhost.example', port: 10809, tls: true },
      incremental: 'virtnbdbackup.3',
      disks: [{ target: 'sda', scratch: '/scratch/backup.X.sda' }],
    }),
    'backup XML',
    'domainbackup',
  );
  t.is(root.attr('mode'), 'pull');
  t.is(root.childText('incremental'), 'virtnbdbackup.3');
  t.deepEqual(root.child('server')?.attributes, { transport: 'tcp', name: 'kvmhost.example', port: '10809', tls: 'yes' });
  const tlsOff = parseXmlDocument(
    buildBackupXml({ server: { transport: 'tcp', name: '192.0.2.1', port: 10810 }, disks: [{ target: 'vda', scratch: '/s/x' }] }),
    'backup XML',
    'domainbackup',
  );
  t.is(tlsOff.child('server')?.attr('tls'), 'no');
  t.is(tlsOff.child('incremental'), undefined);
});

test('paths with XML special characters are escaped and read back intact', (t) => {
  const socket = `/tmp/a&b<c>'d"e/sock`;
  const root = parseXmlDocument(
    buildBackupXml({ server: { transport: 'unix', socket }, disks: [{ target: 'vda', scratch: `/tmp/it's/scratch` }] }),
    'backup XML',
    'domainbackup',
  );
  t.is(root.child('server')?.attr('socket'), socket);
  t.is(root.child('disks')?.child('disk')?.child('scratch')?.attr('file'), `/tmp/it's/scratch`);
});

test('backup XML libvirt would refuse is refused here first, naming the problem', (t) => {
  const disks = [{ target: 'vda', scratch: '/s/vda' }];
  const cases: [() => string, RegExp][] = [
    [() => buildBackupXml({ server: { transport: 'unix', socket: 'relative.sock' }, disks }), /NBD socket file must be an absolute path/],
    [() => buildBackupXml({ server: { transport: 'unix', socket: '/s' }, disks: [{ target: 'vda', scratch: 'x' }] }), /scratch file of disk vda/],
    [() => buildBackupXml({ server: { transport: 'tcp', name: 'h', port: 0 }, disks }), /Invalid NBD port 0/],
    [() => buildBackupXml({ server: { transport: 'tcp', name: '', port: 1 }, disks }), /host name/],
    [() => buildBackupXml({ server: { transport: 'unix', socket: '/s' }, disks: [] }), /at least one disk/],
    [() => buildBackupXml({ server: { transport: 'unix', socket: '/s' }, disks, skip: ['vda'] }), /vda is listed both/],
  ];
  for (const [build, message] of cases) {
    const error = t.throws(build, { instanceOf: BackupXmlError });
    t.regex(error?.message ?? '', message);
  }
});

test('scratch file path: <dir>/backup.<id>.<dev>', (t) => {
  t.is(scratchFilePath('/var/tmp', 'vda', 'K3J9Q'), '/var/tmp/backup.K3J9Q.vda');
  t.is(scratchFilePath('/var/tmp/', 'sdb', 'A'), '/var/tmp/backup.A.sdb');
});

test('checkpoint XML as virtnbdbackup creates it: name, description, parent, bitmap and no disks', (t) => {
  const xml = buildCheckpointXml({ name: 'virtnbdbackup.1', parent: 'virtnbdbackup.0', disks: ['vda'], skip: ['vdb', 'hdc'] });
  t.is(
    xml,
    `<domaincheckpoint>
  <name>virtnbdbackup.1</name>
  <description>Backup checkpoint</description>
  <parent>
    <name>virtnbdbackup.0</name>
  </parent>
  <disks>
    <disk name="vda" checkpoint="bitmap"/>
    <disk name="vdb" checkpoint="no"/>
    <disk name="hdc" checkpoint="no"/>
  </disks>
</domaincheckpoint>
`,
  );
  const back = parseCheckpointXml(xml);
  t.like(back, { name: 'virtnbdbackup.1', parent: 'virtnbdbackup.0', description: 'Backup checkpoint' });
  t.deepEqual(back.disks, [
    { name: 'vda', checkpoint: 'bitmap' },
    { name: 'vdb', checkpoint: 'no' },
    { name: 'hdc', checkpoint: 'no' },
  ]);
  t.is(back.xml, xml, 'the XML is kept verbatim for redefinition');
});

test('the first checkpoint of a chain has no parent element', (t) => {
  const back = parseCheckpointXml(buildCheckpointXml({ name: 'virtnbdbackup.0', disks: ['vda', 'vdb'] }));
  t.is(back.parent, undefined);
  t.false(buildCheckpointXml({ name: 'virtnbdbackup.0', disks: ['vda'] }).includes('<parent>'));
});

test('bad checkpoint specs are refused', (t) => {
  t.throws(() => buildCheckpointXml({ name: '', disks: ['vda'] }), { instanceOf: CheckpointXmlError, message: /Invalid checkpoint name/ });
  t.throws(() => buildCheckpointXml({ name: 'a/b', disks: ['vda'] }), { instanceOf: CheckpointXmlError });
  t.throws(() => buildCheckpointXml({ name: 'c', disks: [] }), { instanceOf: CheckpointXmlError, message: /no disk/ });
  t.throws(() => buildCheckpointXml({ name: 'c', disks: ['vda'], skip: ['vda'] }), { instanceOf: CheckpointXmlError, message: /both/ });
});

test('a checkpoint as libvirt dumps it: parent, creation time, bitmap, size and the domain inside', (t) => {
  const cp = parseCheckpointXml(fixture('checkpoint-virtnbdbackup.1.xml'), 'checkpoints/virtnbdbackup.1.xml');
  t.is(cp.name, 'virtnbdbackup.1');
  t.is(cp.parent, 'virtnbdbackup.0');
  t.is(cp.creationTime, 1796025409);
  t.is(cp.description, 'Backup checkpoint');
  t.deepEqual(cp.disks, [
    { name: 'vda', checkpoint: 'bitmap', bitmap: 'virtnbdbackup.1', size: 0 },
    { name: 'vdb', checkpoint: 'no' },
  ]);
  t.is(cp.domainName, 'webvm');
  t.is(cp.domainUuid, '8738b9ae-fd1d-41e1-93b4-6404855b21cd');
});

test('broken checkpoint files are refused with the file named', (t) => {
  const cases: [string, RegExp][] = [
    ['<domaincheckpoint><name>x</name>', /^checkpoints\/x\.xml \(line \d+\): not well-formed/],
    ['<domaincheckpoint><description>d</description></domaincheckpoint>', /has no <name>/],
    ['<domaincheckpoint><name>x</name><creationTime>soon</creationTime></domaincheckpoint>', /<creationTime> is not a non-negative integer/],
    ["<domaincheckpoint><name>x</name><disks><disk checkpoint='bitmap'/></disks></domaincheckpoint>", /a <disk> has no name/],
    ["<domaincheckpoint><name>x</name><disks><disk name='vda' size='-1'/></disks></domaincheckpoint>", /size of disk vda/],
    ['<domain><name>x</name></domain>', /root element is <domain>, expected <domaincheckpoint>/],
  ];
  for (const [xml, message] of cases) {
    const error = t.throws(() => parseCheckpointXml(xml, 'checkpoints/x.xml'), { instanceOf: XmlDocumentError });
    t.regex(error?.message ?? '', message);
  }
});
