import test from 'ava';
import { readFileSync } from 'node:fs';
import { parseDomainXml } from '../lib/xml/domain.js';
import { XmlDocumentError } from '../lib/xml/xmlTree.js';

const fixture = (name: string): string => readFileSync(new URL(`../fixtures/xml/${name}`, import.meta.url), 'utf8');

test('a running domain: name, uuid, and every disk with its device, type, format and source', (t) => {
  const dom = parseDomainXml(fixture('domain-running-mixed-disks.xml'));
  t.is(dom.name, 'webvm');
  t.is(dom.uuid, 'c293448b-38c1-45ed-9d1c-7a1a5261a1a7');
  t.is(dom.hypervisor, 'qemu');
  t.deepEqual(
    dom.disks.map((d) => [d.target, d.device, d.type, d.format, d.path, d.bus]),
    [
      ['vda', 'disk', 'file', 'qcow2', '/var/lib/libvirt/images/sys.qcow2', 'virtio'],
      ['vdb', 'disk', 'file', 'qcow2', '/var/lib/libvirt/images/data.qcow2', 'virtio'],
      ['vdc', 'disk', 'file', 'raw', '/var/lib/libvirt/images/raw.img', 'virtio'],
      ['hdc', 'cdrom', 'file', 'raw', '/var/lib/libvirt/images/cd.iso', 'ide'],
      ['fda', 'floppy', 'file', 'raw', '/var/lib/libvirt/images/floppy.img', 'fdc'],
    ],
  );
  t.is(dom.disks[0].discard, 'unmap');
  t.deepEqual(dom.disks[0].backingStore, ['/var/lib/libvirt/images/base.qcow2']);
  t.deepEqual(dom.disks[1].backingStore, []);
  t.true(dom.disks[3].readonly);
  t.false(dom.disks[0].readonly);
  t.deepEqual(dom.bootFiles, {});
  t.false(dom.emulatedTpm);
});

test('an inactive domain: block, network, volume, LUN and empty cdrom disks; boot files', (t) => {
  const dom = parseDomainXml(fixture('domain-block-lun-network-volume.xml'));
  t.is(dom.name, 'blockvm');
  const byTarget = new Map(dom.disks.map((d) => [d.target, d]));
  t.like(byTarget.get('vda'), { type: 'block', device: 'disk', format: 'qcow2', path: '/dev/vg0/lvqcow' });
  t.like(byTarget.get('vdb'), { type: 'block', format: 'raw', path: '/dev/vg0/lvraw' });
  t.like(byTarget.get('vdc'), { type: 'network', protocol: 'nbd', path: 'export', format: 'raw' });
  t.like(byTarget.get('vdd'), { type: 'volume', pool: 'default', volume: 'vol1.qcow2', format: 'qcow2' });
  t.is(byTarget.get('vdd')?.path, undefined);
  t.like(byTarget.get('sda'), { type: 'block', device: 'lun', path: '/dev/loop0', bus: 'scsi' });
  t.like(byTarget.get('sdb'), { device: 'cdrom', readonly: true });
  t.is(byTarget.get('sdb')?.path, undefined, 'an empty cdrom has no source');
  t.deepEqual(dom.bootFiles, {
    loader: '/usr/share/OVMF/OVMF_CODE_4M.fd',
    nvram: '/var/lib/libvirt/qemu/nvram/blockvm_VARS.fd',
    kernel: '/boot/vmlinuz-test',
    initrd: '/boot/initrd.img-test',
  });
});

test('entities, numeric character references and a nested backing chain are decoded', (t) => {
  const dom = parseDomainXml(`<domain type='kvm'><name>a&amp;b</name><devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/it&apos;s &#x41;.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/img/mid.qcow2'/>
        <backingStore type='block'><format type='raw'/><source dev='/dev/base'/><backingStore/></backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/></disk></devices></domain>`);
  t.is(dom.name, 'a&b');
  t.is(dom.disks[0].path, "/img/it's A.qcow2");
  t.deepEqual(dom.disks[0].backingStore, ['/img/mid.qcow2', '/dev/base']);
});

test('a domain name that looks like a number stays a string', (t) => {
  t.is(parseDomainXml('<domain><name>0123</name></domain>').name, '0123');
});

test('nvram written as a source element (libvirt >= 8.5) and an emulated TPM', (t) => {
  const dom = parseDomainXml(`<domain><name>x</name><os><nvram type='file'><source file='/var/lib/nv.fd'/></nvram></os>
    <devices><tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm></devices></domain>`);
  t.is(dom.bootFiles.nvram, '/var/lib/nv.fd');
  t.true(dom.emulatedTpm);
});

test('disk defaults: no type means file, no device means disk, no driver means no format', (t) => {
  const dom = parseDomainXml(`<domain><name>x</name><devices><disk><source file='/a.img'/><target dev='vda'/></disk></devices></domain>`);
  t.like(dom.disks[0], { type: 'file', device: 'disk', path: '/a.img' });
  t.is(dom.disks[0].format, undefined);
});

test('bad domain XML is refused with a message naming the problem', (t) => {
  const cases: [string, RegExp][] = [
    ['', /domain XML: empty document/],
    ['<domain><name>x</name>', /domain XML.*not well-formed/],
    ['<domaincheckpoint><name>x</name></domaincheckpoint>', /root element is <domaincheckpoint>, expected <domain>/],
    ['<domain><uuid>u</uuid></domain>', /has no <name>/],
    ["<domain><name>x</name><devices><disk type='file'><source file='/a'/></disk></devices></domain>", /disk #1 has no <target dev/],
    [
      "<domain><name>x</name><devices><disk><target dev='vda'/></disk><disk><target dev='vda'/></disk></devices></domain>",
      /two disks have target dev 'vda'/,
    ],
  ];
  for (const [xml, message] of cases) {
    const error = t.throws(() => parseDomainXml(xml), { instanceOf: XmlDocumentError });
    t.regex(error?.message ?? '', message);
  }
});

test('the line of a syntax error is reported', (t) => {
  const error = t.throws(() => parseDomainXml('<domain>\n<name>x</name>\n<devices>\n</domain>', 'vmconfig.virtnbdbackup.0.xml'), {
    instanceOf: XmlDocumentError,
  });
  t.is(error?.line, 4);
  t.regex(error?.message ?? '', /^vmconfig\.virtnbdbackup\.0\.xml \(line 4\)/);
});
