// 200 calls in flight at once on one connection to the real libvirtd, of
// many kinds (lookups by name and UUID of several domains, missing domains,
// hostname, versions, domain XML), each answer checked against its own
// question with virsh as the oracle: replies matched by serial, none lost,
// none crossed, although libvirtd serves only a few of a client's calls at
// a time and holds the rest back.
import test from 'ava';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Hypervisor, LibvirtError, VIR_ERR_NO_DOMAIN, versionToString, type Domain } from '../lib/libvirt/index.js';
import { domainXml } from './helpers/domain-xml.js';

const run = promisify(execFile);
const CALLS = 200;
const DOMAINS = 5;

async function virsh(...args: string[]): Promise<string> {
  const { stdout } = await run('virsh', ['-c', 'qemu:///system', ...args]);
  return stdout;
}

function uniqueName(prefix: string): string {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}

/** One question and the only answer that fits it. */
interface Question {
  ask(): Promise<unknown>;
  expected: unknown;
  what: string;
}

test(`${CALLS} concurrent calls on one connection each get their own answer`, async (t) => {
  const hv = new Hypervisor('qemu:///system');
  t.teardown(() => hv.close());
  await hv.connect();

  const names = Array.from({ length: DOMAINS }, (_, i) => uniqueName(`vnbdcc${i}`));
  t.teardown(async () => {
    for (const name of names) await virsh('undefine', name).catch(() => {});
  });
  const domains: Domain[] = [];
  for (const name of names) domains.push(await hv.defineXML(domainXml({ name, disks: [], memoryMiB: 32 })));
  const uuids = await Promise.all(names.map(async (n) => (await virsh('domuuid', n)).trim()));
  const hostname = (await virsh('hostname')).trim();
  const version = await virsh('version', '--daemon');
  const daemon = /Running against daemon: (\S+)/.exec(version)![1];
  const hypervisor = /Running hypervisor: QEMU (\S+)/.exec(version)![1];

  const kinds: ((i: number) => Question)[] = [
    (i) => {
      const k = i % DOMAINS;
      return { what: `lookup ${names[k]} by name`, ask: () => hv.lookupDomainByName(names[k]).then((d) => [d.getName(), d.getUUID()]), expected: [names[k], uuids[k]] };
    },
    (i) => {
      const k = (i * 3) % DOMAINS;
      return { what: `lookup ${uuids[k]} by UUID`, ask: () => hv.lookupDomainByUUID(uuids[k]).then((d) => [d.getName(), d.getUUID()]), expected: [names[k], uuids[k]] };
    },
    (i) => {
      const missing = uniqueName(`vnbdcc-none${i}`);
      return {
        what: `lookup missing ${missing}`,
        ask: () => hv.lookupDomainByName(missing).then(
          (d) => `found ${d.getName()}?!`,
          (e: LibvirtError) => [e.code, e.message],
        ),
        expected: [VIR_ERR_NO_DOMAIN, `Domain not found: no domain with matching name '${missing}'`],
      };
    },
    () => ({ what: 'hostname', ask: () => hv.getHostname(), expected: hostname }),
    () => ({ what: 'hypervisor version', ask: () => hv.getVersion().then(versionToString), expected: hypervisor }),
    () => ({ what: 'library version', ask: () => hv.getLibVersion().then(versionToString), expected: daemon }),
    (i) => {
      const k = (i * 7) % DOMAINS;
      return {
        what: `XML of ${names[k]}`,
        ask: () => domains[k].getXMLDesc().then((xml) => [/<name>([^<]*)<\/name>/.exec(xml)?.[1], /<uuid>([^<]*)<\/uuid>/.exec(xml)?.[1]]),
        expected: [names[k], uuids[k]],
      };
    },
    (i) => {
      const k = (i * 11) % DOMAINS;
      return { what: `is ${names[k]} active`, ask: () => domains[k].isActive(), expected: false };
    },
  ];
  const questions = Array.from({ length: CALLS }, (_, i) => kinds[i % kinds.length](i));

  const answers = questions.map((q) => q.ask());
  // Every call went out before any reply could be read: all are in flight together.
  t.is(hv.connection.inFlight, CALLS);
  const settled = await Promise.allSettled(answers);

  t.is(hv.connection.inFlight, 0);
  settled.forEach((s, i) => {
    const q = questions[i];
    if (s.status === 'rejected') t.fail(`call ${i} (${q.what}) failed: ${(s.reason as Error).message}`);
    else t.deepEqual(s.value, q.expected, `call ${i} (${q.what})`);
  });
  // The connection is still in step after the burst.
  t.is(await hv.getHostname(), hostname);
});
