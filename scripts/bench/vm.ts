/**
 * The bench VM of DESIGN.md: a firmware-only domain (TCG, no OS) whose
 * disk vda is a copy of the bench disk, started paused, since a backup
 * reads the disk through QEMU whatever the guest does and a paused guest
 * spends no CPU the tools under test would miss. Also a pull-mode backup
 * job started with virsh, for the tools that only read an NBD export
 * (nbdcopy). Everything is removed by stop().
 */
import { copyFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from './exec.js';

export interface BenchVm {
  name: string;
  /** The VM's disk image (a copy of the bench disk). */
  image: string;
  /** Removes every checkpoint libvirt holds for the domain (metadata only). */
  dropCheckpoints(): Promise<void>;
  stop(): Promise<void>;
}

const virsh = (args: string[]): Promise<{ stdout: string }> => run('virsh', ['-c', 'qemu:///system', ...args]);

function domainXml(name: string, image: string): string {
  return `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${image}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>
`;
}

/** Define and start (paused) a VM on a copy of `disk` under `dir`. */
export async function startBenchVm(disk: string, dir: string, log: (m: string) => void): Promise<BenchVm> {
  const name = `virtnbd-bench-${process.pid}`;
  const image = join(dir, 'vm-vda.qcow2');
  log(`copying the bench disk for VM ${name}`);
  await copyFile(disk, image);
  const xml = join(dir, 'domain.xml');
  await writeFile(xml, domainXml(name, image));
  await virsh(['define', xml]);
  const dropCheckpoints = async (): Promise<void> => {
    const { stdout } = await virsh(['checkpoint-list', name, '--name', '--topological']).catch(() => ({ stdout: '' }));
    for (const cp of stdout.split('\n').map((l) => l.trim()).filter(Boolean).reverse()) {
      await virsh(['checkpoint-delete', name, cp, '--metadata']).catch(() => undefined);
    }
  };
  const vm: BenchVm = {
    name,
    image,
    dropCheckpoints,
    async stop() {
      await virsh(['domjobabort', name]).catch(() => undefined);
      await virsh(['destroy', name]).catch(() => undefined);
      await dropCheckpoints();
      await virsh(['undefine', name, '--checkpoints-metadata']).catch(() => virsh(['undefine', name]).catch(() => undefined));
      await rm(image, { force: true });
    },
  };
  try {
    await virsh(['start', name, '--paused']);
  } catch (e) {
    await vm.stop();
    throw e;
  }
  return vm;
}

/** A pull-mode backup job of vda (full) exporting on `socket`; resolves once it runs. Ends with endJob(). */
export async function beginPullJob(vm: BenchVm, socket: string, dir: string): Promise<void> {
  const xml = join(dir, 'backup.xml');
  const scratch = join(dir, 'scratch-vda.qcow2');
  await writeFile(
    xml,
    `<domainbackup mode='pull'><server transport='unix' socket='${socket}'/><disks><disk name='vda' backup='yes' type='file'><scratch file='${scratch}'/></disk></disks></domainbackup>\n`,
  );
  await virsh(['backup-begin', vm.name, xml]);
}

export async function endJob(vm: BenchVm): Promise<void> {
  await virsh(['domjobabort', vm.name]).catch(() => undefined);
}
