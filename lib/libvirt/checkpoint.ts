/**
 * Checkpoint: a libvirt domain checkpoint (a named point in time whose
 * dirty bitmaps record what changed since), as virDomainCheckpointPtr.
 */
import type { RpcConnection } from './connection.js';
import type { Domain } from './domain.js';
import { RemoteProcedure } from './procedures.js';
import {
  REMOTE_DOMAIN_CHECKPOINT_LIST_MAX,
  readCheckpointRef,
  readString,
  writeCheckpointRef,
  type CheckpointRef,
} from './remote-types.js';

export class Checkpoint {
  constructor(
    /** The domain this checkpoint belongs to. */
    readonly domain: Domain,
    readonly name: string,
  ) {}

  private get rpc(): RpcConnection {
    return this.domain.rpc;
  }

  /** @internal the wire reference. */
  get ref(): CheckpointRef {
    return { name: this.name, dom: this.domain.ref };
  }

  getName(): string {
    return this.name;
  }

  /** The checkpoint XML (flags: VIR_DOMAIN_CHECKPOINT_XML_*). */
  getXMLDesc(flags = 0): Promise<string> {
    return this.rpc.remote(
      RemoteProcedure.DOMAIN_CHECKPOINT_GET_XML_DESC,
      (w) => {
        writeCheckpointRef(w, this.ref);
        w.uint(flags);
      },
      readString,
    );
  }

  /**
   * The parent checkpoint. A checkpoint without a parent rejects with
   * VIR_ERR_NO_DOMAIN_CHECKPOINT ("checkpoint 'x' does not have a parent"),
   * as libvirt does.
   */
  async getParent(flags = 0): Promise<Checkpoint> {
    const ref = await this.rpc.remote(
      RemoteProcedure.DOMAIN_CHECKPOINT_GET_PARENT,
      (w) => {
        writeCheckpointRef(w, this.ref);
        w.uint(flags);
      },
      readCheckpointRef,
    );
    return new Checkpoint(this.domain, ref.name);
  }

  /** Children of this checkpoint (flags: VIR_DOMAIN_CHECKPOINT_LIST_*). */
  async listAllChildren(flags = 0): Promise<Checkpoint[]> {
    const refs = await this.rpc.remote(
      RemoteProcedure.DOMAIN_CHECKPOINT_LIST_ALL_CHILDREN,
      (w) => {
        writeCheckpointRef(w, this.ref);
        w.int(1); // need_results
        w.uint(flags);
      },
      (r) => {
        const list = r.array(readCheckpointRef, REMOTE_DOMAIN_CHECKPOINT_LIST_MAX);
        r.int(); // ret: the count again
        return list;
      },
    );
    return refs.map((ref) => new Checkpoint(this.domain, ref.name));
  }

  /** Deletes the checkpoint (flags: VIR_DOMAIN_CHECKPOINT_DELETE_*, e.g. METADATA_ONLY). */
  delete(flags = 0): Promise<void> {
    return this.rpc.remote(RemoteProcedure.DOMAIN_CHECKPOINT_DELETE, (w) => {
      writeCheckpointRef(w, this.ref);
      w.uint(flags);
    });
  }
}
