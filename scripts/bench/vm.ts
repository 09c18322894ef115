/**
 * The bench VM of DESIGN.md: a firmware-only domain (TCG, no OS) whose
 * disk vda is a copy of the bench disk, started paused, since a backup
 * reads the disk through QEMU whatever the guest does and a paused guest
 * spends no CPU the tools under test would miss. Also a pull-mode backup
 * job started with virsh, for the tools that only read an NBD export
 * (nbdcopy). Everything is removed by stop().
 * Incremental rounds also need checkpoints removed for real (bitmaps too:
 * a full backup makes a new virtnbdbackup.0, whose bitmap must not exist)
 * and the QOM path of vda, where scripts/bench/dirty.ts writes.
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
  /** Deletes every checkpoint of the running domain with its bitmaps. */
  deleteCheckpoints(): Promise<void>;
  /** QOM path of vda's block backend (`/machine/peripheral/<alias>/virtio-backend`), for HMP `qemu-io -d`. */
  qomPath(): Promise<string>;
  stop(): Promise<void>;
}

export const virsh = (args: string[]): Promise<{ stdout: string }> => run('virsh', ['-c', 'qemu:///system', ...args]);

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

/** Define and start (paused) a VM on a copy of `disk` under `dir`; `tag` tells apart VMs of one process. */
export async function startBenchVm(disk: string, dir: string, log: (m: string) => void, tag = ''): Promise<BenchVm> {
  const name = `virtnbd-bench-${process.pid}${tag && `-${tag}`}`;
  const image = join(dir, `vm-${tag && `${tag}-`}vda.qcow2`);
  log(`copying the bench disk for VM ${name}`);
  await copyFile(disk, image);
  const xml = join(dir, `domain${tag && `-${tag}`}.xml`);
  await writeFile(xml, domainXml(name, image));
  await virsh(['define', xml]);
  const checkpoints = async (): Promise<string[]> => {
    const { stdout } = await virsh(['checkpoint-list', name, '--name', '--topological']).catch(() => ({ stdout: '' }));
    return stdout.split('\n').map((l) => l.trim()).filter(Boolean);
  };
  const dropCheckpoints = async (): Promise<void> => {
    for (const cp of (await checkpoints()).reverse()) {
      await virsh(['checkpoint-delete', name, cp, '--metadata']).catch(() => undefined);
    }
  };
  const vm: BenchVm = {
    name,
    image,
    dropCheckpoints,
    async deleteCheckpoints() {
      // Leaves first: no delete has children to re-parent.
      for (const cp of (await checkpoints()).reverse()) await virsh(['checkpoint-delete', name, cp]);
    },
    async qomPath() {
      const { stdout } = await virsh(['dumpxml', name]);
      const disk = stdout.split('</disk>').find((d) => /<target dev='vda'/.test(d));
      const alias = disk && /<alias name='([^']+)'/.exec(disk)?.[1];
      if (!alias) throw new Error(`VM ${name}: no device alias for vda; is it running?`);
      return `/machine/peripheral/${alias}/virtio-backend`;
    },
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

/**
 * An incremental pull-mode job since checkpoint `since` that also creates
 * checkpoint `next`, as an incremental backup does; written as the two XML
 * files `virsh backup-begin` takes. The export is `vda` on `socket`, its
 * dirty bitmap the meta context `qemu:dirty-bitmap:backup-vda`.
 */
export async function incrementalJobXml(dir: string, socket: string, since: string, next: string): Promise<{ backup: string; checkpoint: string }> {
  const backup = join(dir, 'backup-inc.xml');
  const checkpoint = join(dir, 'checkpoint-inc.xml');
  const scratch = join(dir, 'scratch-inc-vda.qcow2');
  await writeFile(
    backup,
    `<domainbackup mode='pull'><incremental>${since}</incremental><server transport='unix' socket='${socket}'/><disks><disk name='vda' backup='yes' type='file'><scratch file='${scratch}'/></disk></disks></domainbackup>\n`,
  );
  await writeFile(checkpoint, `<domaincheckpoint><name>${next}</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>\n`);
  return { backup, checkpoint };
}

/** A checkpoint of vda outside any job (the limit's stand-in for a full backup's). */
export async function createCheckpoint(vm: BenchVm, dir: string, name: string): Promise<void> {
  const xml = join(dir, `checkpoint-${name}.xml`);
  await writeFile(xml, `<domaincheckpoint><name>${name}</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>\n`);
  await virsh(['checkpoint-create', vm.name, xml]);
}

export async function endJob(vm: BenchVm): Promise<void> {
  await virsh(['domjobabort', vm.name]).catch(() => undefined);
}
