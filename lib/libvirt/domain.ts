/**
 * Domain: one libvirt domain (virDomainPtr), named on the wire by
 * {name, uuid, id}; the daemon finds it by UUID. Every method is one RPC
 * and returns a promise; failures are LibvirtErrors carrying libvirt's code
 * and message.
 */
import { Checkpoint } from './checkpoint.js';
import type { RpcConnection } from './connection.js';
import { VIR_DOMAIN_QEMU_AGENT_COMMAND_DEFAULT } from './flags.js';
import { QemuProcedure, RemoteProcedure } from './procedures.js';
import {
  REMOTE_DOMAIN_CHECKPOINT_LIST_MAX,
  REMOTE_DOMAIN_FSFREEZE_MOUNTPOINTS_MAX,
  REMOTE_DOMAIN_GUEST_INFO_PARAMS_MAX,
  REMOTE_DOMAIN_JOB_STATS_MAX,
  formatUuid,
  readCheckpointRef,
  readDomainRef,
  readOptionalString,
  readString,
  writeDomainRef,
  writeOptionalString,
  writeString,
  type DomainRef,
} from './remote-types.js';
import { readTypedParams, typedParamsToObject, type TypedParams } from './typed-params.js';
import type { XdrWriter } from './xdr.js';

export interface DomainState {
  /** virDomainState, e.g. VIR_DOMAIN_RUNNING. */
  state: number;
  /** Why, e.g. VIR_DOMAIN_RUNNING_BOOTED; its enum depends on the state. */
  reason: number;
}

export interface DomainInfo {
  state: number;
  /** KiB */
  maxMemory: number;
  /** KiB */
  memory: number;
  nrVirtCpu: number;
  /** CPU time used, nanoseconds. */
  cpuTime: number;
}

/** virDomainJobInfo: the legacy, fixed-shape job report. */
export interface JobInfo {
  /** virDomainJobType, e.g. VIR_DOMAIN_JOB_UNBOUNDED; VIR_DOMAIN_JOB_NONE when idle. */
  type: number;
  /** milliseconds */
  timeElapsed: number;
  timeRemaining: number;
  dataTotal: number;
  dataProcessed: number;
  dataRemaining: number;
  memTotal: number;
  memProcessed: number;
  memRemaining: number;
  fileTotal: number;
  fileProcessed: number;
  fileRemaining: number;
}

export interface JobStats {
  /** virDomainJobType */
  type: number;
  /** Named values, e.g. operation, time_elapsed, disk_total (libvirt's VIR_DOMAIN_JOB_* field names). */
  stats: TypedParams;
}

/** virDomainBlockInfo, bytes. */
export interface BlockInfo {
  capacity: number;
  allocation: number;
  physical: number;
}

export class Domain {
  readonly name: string;
  /** 16 raw bytes. */
  readonly uuid: Buffer;
  private cachedId: number;

  constructor(
    /** @internal the connection the domain was obtained on. */
    readonly rpc: RpcConnection,
    ref: DomainRef,
  ) {
    this.name = ref.name;
    this.uuid = ref.uuid;
    this.cachedId = ref.id;
  }

  /** @internal the wire reference. */
  get ref(): DomainRef {
    return { name: this.name, uuid: this.uuid, id: this.cachedId };
  }

  private withDom(extra?: (w: XdrWriter) => void): (w: XdrWriter) => void {
    return (w) => {
      writeDomainRef(w, this.ref);
      extra?.(w);
    };
  }

  getName(): string {
    return this.name;
  }

  /** The UUID as virsh domuuid prints it. */
  getUUID(): string {
    return formatUuid(this.uuid);
  }

  /** The running domain's id, -1 when inactive (asked of the daemon, not cached). */
  async getID(): Promise<number> {
    const ref = await this.rpc.remote(
      RemoteProcedure.DOMAIN_LOOKUP_BY_UUID,
      (w) => w.fixedOpaque(this.uuid, 16),
      readDomainRef,
    );
    this.cachedId = ref.id;
    return ref.id;
  }

  /** The domain XML (flags: VIR_DOMAIN_XML_*). */
  getXMLDesc(flags = 0): Promise<string> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_GET_XML_DESC, this.withDom((w) => w.uint(flags)), readString);
  }

  isActive(): Promise<boolean> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_IS_ACTIVE, this.withDom(), (r) => r.int() !== 0);
  }

  isPersistent(): Promise<boolean> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_IS_PERSISTENT, this.withDom(), (r) => r.int() !== 0);
  }

  getState(flags = 0): Promise<DomainState> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_GET_STATE, this.withDom((w) => w.uint(flags)), (r) => ({
      state: r.int(),
      reason: r.int(),
    }));
  }

  getInfo(): Promise<DomainInfo> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_GET_INFO, this.withDom(), (r) => ({
      // unsigned char and unsigned short travel as 4-byte XDR unsigned ints.
      state: r.uint(),
      maxMemory: r.uhyperNumber('maxMem'),
      memory: r.uhyperNumber('memory'),
      nrVirtCpu: r.uint(),
      cpuTime: r.uhyperNumber('cpuTime'),
    }));
  }

  /** Starts the defined domain (flags: VIR_DOMAIN_START_*, e.g. START_PAUSED). */
  async create(flags = 0): Promise<void> {
    const ref = await this.rpc.remote(
      RemoteProcedure.DOMAIN_CREATE_WITH_FLAGS,
      this.withDom((w) => w.uint(flags)),
      readDomainRef,
    );
    this.cachedId = ref.id;
  }

  resume(): Promise<void> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_RESUME, this.withDom());
  }

  suspend(): Promise<void> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_SUSPEND, this.withDom());
  }

  /** Asks the guest to shut down (flags: VIR_DOMAIN_SHUTDOWN_*). */
  shutdown(flags = 0): Promise<void> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_SHUTDOWN_FLAGS, this.withDom((w) => w.uint(flags)));
  }

  /** Stops the domain now (flags: VIR_DOMAIN_DESTROY_*, e.g. GRACEFUL). */
  async destroy(flags = 0): Promise<void> {
    await this.rpc.remote(RemoteProcedure.DOMAIN_DESTROY_FLAGS, this.withDom((w) => w.uint(flags)));
    this.cachedId = -1;
  }

  /** Removes the definition (flags: VIR_DOMAIN_UNDEFINE_*, e.g. CHECKPOINTS_METADATA | NVRAM). */
  undefine(flags = 0): Promise<void> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_UNDEFINE_FLAGS, this.withDom((w) => w.uint(flags)));
  }

  getAutostart(): Promise<boolean> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_GET_AUTOSTART, this.withDom(), (r) => r.int() !== 0);
  }

  setAutostart(autostart: boolean): Promise<void> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_SET_AUTOSTART, this.withDom((w) => w.int(autostart ? 1 : 0)));
  }

  /**
   * Starts a backup job (push or pull mode, per the <domainbackup> XML);
   * with checkpoint XML, also creates that checkpoint atomically
   * (flags: VIR_DOMAIN_BACKUP_BEGIN_*).
   */
  backupBegin(backupXml: string, checkpointXml: string | null = null, flags = 0): Promise<void> {
    return this.rpc.remote(
      RemoteProcedure.DOMAIN_BACKUP_BEGIN,
      this.withDom((w) => {
        writeString(w, backupXml);
        writeOptionalString(w, checkpointXml);
        w.uint(flags);
      }),
    );
  }

  /** The XML of the running backup job. */
  backupGetXMLDesc(flags = 0): Promise<string> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_BACKUP_GET_XML_DESC, this.withDom((w) => w.uint(flags)), readString);
  }

  /** Aborts the running job, e.g. ends a pull-mode backup (flags: VIR_DOMAIN_ABORT_JOB_*). */
  abortJob(flags = 0): Promise<void> {
    // The flags variant only exists since libvirt 8.5; plain abort reaches older daemons.
    if (flags === 0) return this.rpc.remote(RemoteProcedure.DOMAIN_ABORT_JOB, this.withDom());
    return this.rpc.remote(RemoteProcedure.DOMAIN_ABORT_JOB_FLAGS, this.withDom((w) => w.uint(flags)));
  }

  getJobInfo(): Promise<JobInfo> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_GET_JOB_INFO, this.withDom(), (r) => ({
      type: r.int(),
      timeElapsed: r.uhyperNumber('timeElapsed'),
      timeRemaining: r.uhyperNumber('timeRemaining'),
      dataTotal: r.uhyperNumber('dataTotal'),
      dataProcessed: r.uhyperNumber('dataProcessed'),
      dataRemaining: r.uhyperNumber('dataRemaining'),
      memTotal: r.uhyperNumber('memTotal'),
      memProcessed: r.uhyperNumber('memProcessed'),
      memRemaining: r.uhyperNumber('memRemaining'),
      fileTotal: r.uhyperNumber('fileTotal'),
      fileProcessed: r.uhyperNumber('fileProcessed'),
      fileRemaining: r.uhyperNumber('fileRemaining'),
    }));
  }

  /** Job statistics as typed parameters (flags: VIR_DOMAIN_JOB_STATS_*). */
  getJobStats(flags = 0): Promise<JobStats> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_GET_JOB_STATS, this.withDom((w) => w.uint(flags)), (r) => ({
      type: r.int(),
      stats: typedParamsToObject(readTypedParams(r, REMOTE_DOMAIN_JOB_STATS_MAX)),
    }));
  }

  /** Creates a checkpoint, or with VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE re-creates its metadata from saved XML. */
  async checkpointCreateXML(xml: string, flags = 0): Promise<Checkpoint> {
    const ref = await this.rpc.remote(
      RemoteProcedure.DOMAIN_CHECKPOINT_CREATE_XML,
      this.withDom((w) => {
        writeString(w, xml);
        w.uint(flags);
      }),
      readCheckpointRef,
    );
    return new Checkpoint(this, ref.name);
  }

  /** All checkpoints (flags: VIR_DOMAIN_CHECKPOINT_LIST_*, e.g. TOPOLOGICAL for parents first). */
  async listAllCheckpoints(flags = 0): Promise<Checkpoint[]> {
    const refs = await this.rpc.remote(
      RemoteProcedure.DOMAIN_LIST_ALL_CHECKPOINTS,
      this.withDom((w) => {
        w.int(1); // need_results
        w.uint(flags);
      }),
      (r) => {
        const list = r.array(readCheckpointRef, REMOTE_DOMAIN_CHECKPOINT_LIST_MAX);
        r.int(); // ret: the count again
        return list;
      },
    );
    return refs.map((ref) => new Checkpoint(this, ref.name));
  }

  async checkpointLookupByName(name: string, flags = 0): Promise<Checkpoint> {
    const ref = await this.rpc.remote(
      RemoteProcedure.DOMAIN_CHECKPOINT_LOOKUP_BY_NAME,
      this.withDom((w) => {
        writeString(w, name);
        w.uint(flags);
      }),
      readCheckpointRef,
    );
    return new Checkpoint(this, ref.name);
  }

  /** Freezes guest filesystems through the agent (all when `mountpoints` is empty); returns how many. */
  fsFreeze(mountpoints: readonly string[] = [], flags = 0): Promise<number> {
    return this.rpc.remote(
      RemoteProcedure.DOMAIN_FSFREEZE,
      this.withDom((w) => {
        w.array(mountpoints, writeString, REMOTE_DOMAIN_FSFREEZE_MOUNTPOINTS_MAX);
        w.uint(flags);
      }),
      (r) => r.int(),
    );
  }

  /** Thaws guest filesystems (all when `mountpoints` is empty); returns how many. */
  fsThaw(mountpoints: readonly string[] = [], flags = 0): Promise<number> {
    return this.rpc.remote(
      RemoteProcedure.DOMAIN_FSTHAW,
      this.withDom((w) => {
        w.array(mountpoints, writeString, REMOTE_DOMAIN_FSFREEZE_MOUNTPOINTS_MAX);
        w.uint(flags);
      }),
      (r) => r.int(),
    );
  }

  /** Guest information from the agent (types: VIR_DOMAIN_GUEST_INFO_* bits, 0 for all). */
  getGuestInfo(types = 0, flags = 0): Promise<TypedParams> {
    return this.rpc.remote(
      RemoteProcedure.DOMAIN_GET_GUEST_INFO,
      this.withDom((w) => {
        w.uint(types);
        w.uint(flags);
      }),
      (r) => typedParamsToObject(readTypedParams(r, REMOTE_DOMAIN_GUEST_INFO_PARAMS_MAX)),
    );
  }

  /**
   * Sends a raw guest-agent command (JSON); returns the agent's JSON reply,
   * or null when the command has none. `timeout` in seconds or one of
   * VIR_DOMAIN_QEMU_AGENT_COMMAND_{BLOCK,DEFAULT,NOWAIT}.
   */
  qemuAgentCommand(cmd: string, timeout = VIR_DOMAIN_QEMU_AGENT_COMMAND_DEFAULT, flags = 0): Promise<string | null> {
    return this.rpc.qemu(
      QemuProcedure.DOMAIN_AGENT_COMMAND,
      this.withDom((w) => {
        writeString(w, cmd);
        w.int(timeout);
        w.uint(flags);
      }),
      readOptionalString,
    );
  }

  /** Sends a QMP command (JSON), or an HMP one with VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP; returns the reply text. */
  qemuMonitorCommand(cmd: string, flags = 0): Promise<string> {
    return this.rpc.qemu(
      QemuProcedure.DOMAIN_MONITOR_COMMAND,
      this.withDom((w) => {
        writeString(w, cmd);
        w.uint(flags);
      }),
      readString,
    );
  }

  /** Capacity, allocation and physical size of a disk, by target ("vda") or source path. */
  getBlockInfo(disk: string, flags = 0): Promise<BlockInfo> {
    return this.rpc.remote(
      RemoteProcedure.DOMAIN_GET_BLOCK_INFO,
      this.withDom((w) => {
        writeString(w, disk);
        w.uint(flags);
      }),
      (r) => ({
        allocation: r.uhyperNumber('allocation'),
        capacity: r.uhyperNumber('capacity'),
        physical: r.uhyperNumber('physical'),
      }),
    );
  }
}
