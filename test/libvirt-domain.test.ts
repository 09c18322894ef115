// Domain, backup and checkpoint calls against the real libvirtd, each result
// checked with virsh (or nbdinfo). One small firmware-only TCG VM at a time
// (serial tests), named vnbdlv-*, always destroyed and undefined in teardown.
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { XMLParser } from 'fast-xml-parser';
import {
  Hypervisor,
  LibvirtError,
  VIR_CONNECT_LIST_DOMAINS_ACTIVE,
  VIR_CONNECT_LIST_DOMAINS_INACTIVE,
  VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE,
  VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY,
  VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL,
  VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN,
  VIR_DOMAIN_DESTROY_GRACEFUL,
  VIR_DOMAIN_JOB_NONE,
  VIR_DOMAIN_JOB_OPERATION_BACKUP,
  VIR_DOMAIN_JOB_UNBOUNDED,
  VIR_DOMAIN_PAUSED,
  VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
  VIR_DOMAIN_RUNNING,
  VIR_DOMAIN_SHUTOFF,
  VIR_DOMAIN_START_PAUSED,
  VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
  VIR_ERR_AGENT_UNRESPONSIVE,
  VIR_ERR_NO_DOMAIN,
  VIR_ERR_NO_DOMAIN_CHECKPOINT,
  VIR_ERR_OPERATION_INVALID,
  type Domain,
} from '../lib/libvirt/index.js';

const run = promisify(execFile);
const DISK_SIZE = 64 * 1024 * 1024;

async function virsh(...args: string[]): Promise<string> {
  const { stdout } = await run('virsh', ['-c', 'qemu:///system', ...args]);
  return stdout;
}

const xmlParser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@' });

interface TestVm {
  name: string;
  dir: string;
  disk: string;
  xml: string;
  hv: Hypervisor;
  dom: Domain;
}

/**
 * Defines a firmware-only TCG VM with one qcow2 disk (vda) and a guest-agent
 * channel (no agent answers: the guest has no OS). Teardown destroys and
 * undefines it with virsh, checkpoints included, and removes its files,
 * whatever state the test left it in.
 */
async function defineVm(t: ExecutionContext): Promise<TestVm> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnbdlv-'));
  const name = `vnbdlv-${path.basename(dir).slice('vnbdlv-'.length)}`;
  const disk = path.join(dir, 'vda.qcow2');
  const hv = new Hypervisor('qemu:///system');
  t.teardown(async () => {
    await hv.close();
    await virsh('destroy', name).catch(() => {});
    await virsh('undefine', name, '--checkpoints-metadata').catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(DISK_SIZE)]);
  await hv.connect();
  const xml = `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>`;
  const dom = await hv.defineXML(xml);
  return { name, dir, disk, xml, hv, dom };
}

async function virshState(name: string): Promise<string> {
  return (await virsh('domstate', name)).trim();
}

test.serial('define, list, start paused, resume, inspect, suspend, stop gracefully, undefine', async (t) => {
  const { name, disk, xml, hv, dom } = await defineVm(t);

  t.is(dom.getName(), name);
  t.is(dom.getUUID(), (await virsh('domuuid', name)).trim());
  t.false(await dom.isActive());
  t.true(await dom.isPersistent());
  t.false(await dom.getAutostart());
  t.deepEqual((await dom.getState()).state, VIR_DOMAIN_SHUTOFF);
  t.true((await hv.listAllDomains(VIR_CONNECT_LIST_DOMAINS_INACTIVE)).some((d) => d.getName() === name));
  t.false((await hv.listAllDomains(VIR_CONNECT_LIST_DOMAINS_ACTIVE)).some((d) => d.getName() === name));
  t.true((await virsh('list', '--all', '--name')).split('\n').includes(name));

  await dom.create(VIR_DOMAIN_START_PAUSED);
  t.is((await dom.getState()).state, VIR_DOMAIN_PAUSED);
  t.is(await virshState(name), 'paused');
  t.is(await dom.getID(), Number((await virsh('domid', name)).trim()));

  await dom.resume();
  t.is((await dom.getState()).state, VIR_DOMAIN_RUNNING);
  t.is(await virshState(name), 'running');
  t.true(await dom.isActive());
  t.true((await hv.listAllDomains(VIR_CONNECT_LIST_DOMAINS_ACTIVE)).some((d) => d.getName() === name));
  const again = await hv.lookupDomainByName(name);
  t.is(again.getUUID(), dom.getUUID());
  t.is((await hv.lookupDomainByUUID(dom.getUUID())).getName(), name);

  // The same XML virsh dumps, compared as parsed documents.
  t.deepEqual(xmlParser.parse(await dom.getXMLDesc()), xmlParser.parse(await virsh('dumpxml', name)));

  const info = await dom.getInfo();
  t.is(info.state, VIR_DOMAIN_RUNNING);
  t.is(info.maxMemory, 64 * 1024);
  t.is(info.nrVirtCpu, 1);

  const block = await dom.getBlockInfo('vda');
  const domblk = await virsh('domblkinfo', name, 'vda');
  t.is(block.capacity, DISK_SIZE);
  t.is(block.capacity, Number(/Capacity:\s+(\d+)/.exec(domblk)![1]));
  t.is(block.physical, Number(/Physical:\s+(\d+)/.exec(domblk)![1]));

  const hmp = await dom.qemuMonitorCommand('info block', VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP);
  t.true(hmp.includes(disk), hmp);
  const qmp = JSON.parse(await dom.qemuMonitorCommand('{"execute":"query-name"}'));
  t.is(qmp.return.name, name);

  // No OS, so no agent answers: each agent call fails with libvirt's agent error.
  const agentCalls: [string, Promise<unknown>][] = [
    ['qemuAgentCommand', dom.qemuAgentCommand('{"execute":"guest-ping"}', 1)],
    ['getGuestInfo', dom.getGuestInfo()],
    ['fsFreeze', dom.fsFreeze(['/'])],
    ['fsThaw', dom.fsThaw()],
  ];
  for (const [what, call] of agentCalls) {
    const err = await t.throwsAsync(call, { instanceOf: LibvirtError }, what);
    t.is(err!.code, VIR_ERR_AGENT_UNRESPONSIVE, `${what}: ${err!.message}`);
    t.regex(err!.message, /agent/i);
  }

  t.is((await dom.getJobInfo()).type, VIR_DOMAIN_JOB_NONE);

  await dom.suspend();
  t.is(await virshState(name), 'paused');
  await dom.resume();
  t.is(await virshState(name), 'running');

  await dom.destroy(VIR_DOMAIN_DESTROY_GRACEFUL);
  t.is((await dom.getState()).state, VIR_DOMAIN_SHUTOFF);
  t.is(await virshState(name), 'shut off');
  t.is(await dom.getID(), -1);

  await dom.undefine();
  const gone = await t.throwsAsync(hv.lookupDomainByName(name), { instanceOf: LibvirtError });
  t.is(gone!.code, VIR_ERR_NO_DOMAIN);
  t.is(gone!.message, `Domain not found: no domain with matching name '${name}'`);
  await t.throwsAsync(virsh('dominfo', name));

  // The same XML as a transient domain: started at once, gone once destroyed.
  const transient = await hv.createXML(xml, VIR_DOMAIN_START_PAUSED);
  t.is(transient.getName(), name);
  t.false(await transient.isPersistent());
  t.is(await virshState(name), 'paused');
  await transient.destroy();
  await t.throwsAsync(hv.lookupDomainByName(name), { instanceOf: LibvirtError, code: VIR_ERR_NO_DOMAIN });
});

test.serial('pull-mode backup with a checkpoint; checkpoints listed, redefined, deleted', async (t) => {
  const { name, dir, hv, dom } = await defineVm(t);
  await dom.create();
  const socket = path.join(dir, 'backup.sock');
  const scratch = path.join(dir, 'scratch-vda.qcow2');
  const backupXml = `<domainbackup mode='pull'>
  <server transport='unix' socket='${socket}'/>
  <disks><disk name='vda' backup='yes' type='file'><scratch file='${scratch}'/></disk></disks>
</domainbackup>`;
  const checkpointXml = `<domaincheckpoint><name>cp0</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>`;

  await dom.backupBegin(backupXml, checkpointXml);
  t.teardown(() => dom.abortJob().catch(() => {}));

  const job = await dom.getJobInfo();
  t.is(job.type, VIR_DOMAIN_JOB_UNBOUNDED);
  const stats = await dom.getJobStats();
  t.is(stats.type, VIR_DOMAIN_JOB_UNBOUNDED);
  t.is(stats.stats.operation, VIR_DOMAIN_JOB_OPERATION_BACKUP);
  t.is(typeof stats.stats.time_elapsed, 'number');
  t.regex(await virsh('domjobinfo', name), /Operation:\s+Backup/);

  const backup = xmlParser.parse(await dom.backupGetXMLDesc());
  t.is(backup.domainbackup['@mode'], 'pull');
  t.is(backup.domainbackup.server['@socket'], socket);

  t.deepEqual((await virsh('checkpoint-list', name, '--name')).trim().split('\n'), ['cp0']);
  const { stdout: nbd } = await run('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${socket}`]);
  const exports = JSON.parse(nbd).exports as { 'export-name': string; 'export-size': number }[];
  t.deepEqual(exports.map((e) => e['export-name']), ['vda']);
  t.is(exports[0]['export-size'], DISK_SIZE);

  await dom.abortJob();
  t.is((await dom.getJobInfo()).type, VIR_DOMAIN_JOB_NONE);
  await t.throwsAsync(run('nbdinfo', ['--size', `nbd+unix:///vda?socket=${socket}`]), undefined, 'the export is gone');

  // The checkpoint outlives the job.
  const cp0 = await dom.checkpointLookupByName('cp0');
  const savedXml = await cp0.getXMLDesc();
  t.deepEqual(xmlParser.parse(savedXml), xmlParser.parse(await virsh('checkpoint-dumpxml', name, 'cp0')));
  const brief = xmlParser.parse(await cp0.getXMLDesc(VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN));
  t.is(brief.domaincheckpoint.name, 'cp0');
  t.is(brief.domaincheckpoint.domain, undefined);
  const noParent = await t.throwsAsync(cp0.getParent(), { instanceOf: LibvirtError });
  t.is(noParent!.code, VIR_ERR_NO_DOMAIN_CHECKPOINT);

  // Forget the metadata (the bitmap stays in the image), then redefine it from the saved XML.
  await cp0.delete(VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY);
  t.deepEqual(await dom.listAllCheckpoints(), []);
  t.is((await virsh('checkpoint-list', name, '--name')).trim(), '');
  const missing = await t.throwsAsync(dom.checkpointLookupByName('cp0'), { instanceOf: LibvirtError });
  t.is(missing!.code, VIR_ERR_NO_DOMAIN_CHECKPOINT);
  const redefined = await dom.checkpointCreateXML(savedXml, VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE);
  t.is(redefined.getName(), 'cp0');
  t.deepEqual((await virsh('checkpoint-list', name, '--name')).trim().split('\n'), ['cp0']);

  // A second checkpoint: parents come first in topological order.
  const cp1 = await dom.checkpointCreateXML(
    `<domaincheckpoint><name>cp1</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>`,
  );
  t.deepEqual((await dom.listAllCheckpoints(VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL)).map((c) => c.getName()), ['cp0', 'cp1']);
  t.is((await cp1.getParent()).getName(), 'cp0');
  t.deepEqual((await redefined.listAllChildren()).map((c) => c.getName()), ['cp1']);
  t.regex(await virsh('checkpoint-info', name, 'cp1'), /Parent:\s+cp0/);

  await cp1.delete();
  t.deepEqual((await virsh('checkpoint-list', name, '--name')).trim().split('\n'), ['cp0']);

  // A domain with checkpoints is only undefined when their metadata may go too.
  await dom.destroy(VIR_DOMAIN_DESTROY_GRACEFUL);
  const refused = await t.throwsAsync(dom.undefine(), { instanceOf: LibvirtError });
  t.is(refused!.code, VIR_ERR_OPERATION_INVALID, refused!.message);
  await dom.undefine(VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA);
  await t.throwsAsync(virsh('dominfo', name));
  await t.throwsAsync(hv.lookupDomainByName(name), { instanceOf: LibvirtError, code: VIR_ERR_NO_DOMAIN });
});
