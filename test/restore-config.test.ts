/**
 * The adjusted domain config of a restore (-c), pure: read back with our
 * domain XML reader (and, for well-formedness, fast-xml-parser's validator)
 * it has no uuid, the new name, restored disks on their new images without
 * backing chains, and no disk that was not restored (cdrom, floppy, lun,
 * raw without --raw); everything else is unchanged.
 */
import { readFileSync } from 'node:fs';
import test from 'ava';
import { XMLValidator } from 'fast-xml-parser';
import { adjustDomainConfig, DomainConfigError } from '../lib/restore/config.js';
import { parseDomainXml } from '../lib/xml/domain.js';

const mixed = readFileSync(new URL('../fixtures/xml/domain-running-mixed-disks.xml', import.meta.url), 'utf8');
const blocky = readFileSync(new URL('../fixtures/xml/domain-block-lun-network-volume.xml', import.meta.url), 'utf8');

test('restored qcow2 disks point at the new images; raw, cdrom and floppy are removed; uuid gone; name restore_<name>', (t) => {
  const out = adjustDomainConfig(mixed, {
    disks: [
      { target: 'vda', path: '/restore/sys.qcow2', format: 'qcow2' },
      { target: 'vdb', path: '/restore/data.qcow2', format: 'qcow2' },
    ],
  });
  t.true(XMLValidator.validate(out.xml) === true);
  const info = parseDomainXml(out.xml);
  t.is(info.name, 'restore_webvm');
  t.is(out.name, 'restore_webvm');
  t.is(info.uuid, undefined);
  t.deepEqual(
    info.disks.map((d) => [d.target, d.device, d.type, d.format, d.path, d.backingStore]),
    [
      ['vda', 'disk', 'file', 'qcow2', '/restore/sys.qcow2', []],
      ['vdb', 'disk', 'file', 'qcow2', '/restore/data.qcow2', []],
    ],
  );
  t.notRegex(out.xml, /base\.qcow2|backingStore|<source[^>]*index=/, 'backing chain and old source attributes are gone');
  // Unrelated parts stay as they were.
  t.regex(out.xml, /<seclabel type="dynamic" model="dac" relabel="yes">/);
  t.regex(out.xml, /<driver name="qemu" type="qcow2" discard="unmap"\/>/);
  t.regex(out.xml, /<controller type="ide" index="0">/);
  t.true(out.changes.some((c) => /removed cdrom hdc/.test(c)));
  t.true(out.changes.some((c) => /removed disk vdc: not restored/.test(c)));
});

test('--raw keeps the raw disk on its copied image; --name sets the name; a restore_ name is kept', (t) => {
  const out = adjustDomainConfig(mixed, {
    name: 'clone-1',
    disks: [
      { target: 'vda', path: '/r/sys.qcow2', format: 'qcow2' },
      { target: 'vdc', path: '/r/raw.img', format: 'raw' },
    ],
  });
  const info = parseDomainXml(out.xml);
  t.is(info.name, 'clone-1');
  t.deepEqual(
    info.disks.map((d) => [d.target, d.format, d.path]),
    [
      ['vda', 'qcow2', '/r/sys.qcow2'],
      ['vdc', 'raw', '/r/raw.img'],
    ],
  );
  const again = adjustDomainConfig(out.xml.replace('clone-1', 'restore_webvm'), { disks: [] });
  t.is(again.name, 'restore_webvm');
});

test('block and volume disks become file disks; network, lun and empty cdrom go; boot files keep their paths', (t) => {
  const out = adjustDomainConfig(blocky, {
    disks: [
      { target: 'vda', path: '/r/lvqcow', format: 'qcow2' },
      { target: 'vdd', path: '/r/vol1.qcow2', format: 'qcow2' },
    ],
  });
  const info = parseDomainXml(out.xml);
  t.deepEqual(
    info.disks.map((d) => [d.target, d.type, d.path, d.pool, d.volume]),
    [
      ['vda', 'file', '/r/lvqcow', undefined, undefined],
      ['vdd', 'file', '/r/vol1.qcow2', undefined, undefined],
    ],
  );
  t.deepEqual(info.bootFiles, {
    loader: '/usr/share/OVMF/OVMF_CODE_4M.fd',
    nvram: '/var/lib/libvirt/qemu/nvram/blockvm_VARS.fd',
    kernel: '/boot/vmlinuz-test',
    initrd: '/boot/initrd.img-test',
  });
  t.regex(out.xml, /<cmdline>root=\/dev\/vda rw console=ttyS0<\/cmdline>/);
});

test('text and attributes with XML special characters survive', (t) => {
  const xml = `<domain type='qemu'><name>a&amp;b</name><description>x &lt; y &amp; "q"</description>
  <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/a&amp;b/d.qcow2'/><target dev='vda'/></disk></devices></domain>`;
  const out = adjustDomainConfig(xml, { disks: [{ target: 'vda', path: "/r/it's & more.qcow2", format: 'qcow2' }] });
  t.true(XMLValidator.validate(out.xml) === true, out.xml);
  const info = parseDomainXml(out.xml);
  t.is(info.name, 'restore_a&b');
  t.is(info.disks[0]!.path, "/r/it's & more.qcow2");
  t.regex(out.xml, /<description>x &lt; y &amp; (&quot;|")q(&quot;|")<\/description>/);
});

test('not a domain: a typed error naming the source', (t) => {
  t.throws(() => adjustDomainConfig('<domain><name>x</name>', { disks: [] }, 'vmconfig.x.xml'), { instanceOf: DomainConfigError, message: /vmconfig\.x\.xml is not well-formed XML/ });
  t.throws(() => adjustDomainConfig('<network><name>x</name></network>', { disks: [] }), { instanceOf: DomainConfigError, message: /no <domain>/ });
  t.throws(() => adjustDomainConfig('<domain type="qemu"></domain>', { disks: [] }), { instanceOf: DomainConfigError, message: /no <name>/ });
});
