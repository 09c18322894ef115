/**
 * --pause: suspend a running domain right before the backup job starts and
 * resume it right after (also when the job fails to start), so the guest
 * does not run while the job's point in time is set. Combined with the
 * guest agent's freeze by `quiesceInOrder`: freeze, pause, start, resume,
 * thaw.
 */
import type { Domain } from '../libvirt/domain.js';
import { messageOf } from './errors.js';
import type { Quiesce } from './guestAgent.js';
import type { BackupLogger } from './log.js';

export class DomainPause implements Quiesce {
  private paused = false;

  constructor(
    private readonly domain: Domain,
    private readonly log: BackupLogger,
  ) {}

  async freeze(): Promise<boolean> {
    try {
      await this.domain.suspend();
      this.paused = true;
      this.log.info(`Paused domain ${this.domain.name} while the backup job starts (--pause).`);
      return true;
    } catch (e) {
      this.log.warn(`Cannot pause domain ${this.domain.name}: ${messageOf(e)}`);
      return false;
    }
  }

  async thaw(): Promise<void> {
    if (!this.paused) return;
    this.paused = false;
    try {
      await this.domain.resume();
      this.log.info(`Resumed domain ${this.domain.name}.`);
    } catch (e) {
      this.log.error(`Cannot resume domain ${this.domain.name}: ${messageOf(e)}. Resume it by hand: virsh resume ${this.domain.name}`);
    }
  }
}

/** First freezes first and thaws last. */
export function quiesceInOrder(parts: readonly Quiesce[]): Quiesce {
  return {
    async freeze() {
      let any = false;
      for (const p of parts) any = (await p.freeze()) || any;
      return any;
    },
    async thaw() {
      for (const p of [...parts].reverse()) await p.thaw();
    },
  };
}
