/**
 * StoragePool: a libvirt storage pool (virStoragePoolPtr). virtnbd only
 * needs to find the pool holding a restored image and refresh it, so the
 * pool's volume list shows the new file.
 */
import type { RpcConnection } from './connection.js';
import { RemoteProcedure } from './procedures.js';
import { formatUuid, readString, writeStoragePoolRef, type StoragePoolRef } from './remote-types.js';

export class StoragePool {
  readonly name: string;
  /** 16 raw bytes. */
  readonly uuid: Buffer;

  constructor(
    /** @internal */
    readonly rpc: RpcConnection,
    ref: StoragePoolRef,
  ) {
    this.name = ref.name;
    this.uuid = ref.uuid;
  }

  /** @internal the wire reference. */
  get ref(): StoragePoolRef {
    return { name: this.name, uuid: this.uuid };
  }

  getName(): string {
    return this.name;
  }

  getUUID(): string {
    return formatUuid(this.uuid);
  }

  /** Rescans the pool's target so new or removed volumes show. */
  refresh(flags = 0): Promise<void> {
    return this.rpc.remote(RemoteProcedure.STORAGE_POOL_REFRESH, (w) => {
      writeStoragePoolRef(w, this.ref);
      w.uint(flags);
    });
  }

  /** The pool XML (flags: VIR_STORAGE_XML_*). */
  getXMLDesc(flags = 0): Promise<string> {
    return this.rpc.remote(
      RemoteProcedure.STORAGE_POOL_GET_XML_DESC,
      (w) => {
        writeStoragePoolRef(w, this.ref);
        w.uint(flags);
      },
      readString,
    );
  }
}
