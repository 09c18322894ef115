/**
 * The QEMU guest agent's part in a backup: ask it for the guest's OS
 * information (saved as `osinfo.<ident>`), and freeze the guest's
 * filesystems just before the backup job starts and thaw them right after,
 * so the job's point in time is filesystem-consistent. Without an agent
 * (none configured, or it does not answer) the backup goes on,
 * crash-consistent only, after one warning (which counts for --strict).
 * A thaw is attempted whenever a freeze was, whatever the job did: a guest
 * must never be left frozen.
 */
import type { Domain } from '../libvirt/domain.js';
import { VIR_DOMAIN_GUEST_INFO_OS } from '../libvirt/flags.js';
import type { TypedParams } from '../libvirt/typed-params.js';
import { messageOf } from './errors.js';
import type { BackupLogger } from './log.js';

/** `osinfo.<ident>`: the guest's OS information, as JSON. */
export function osInfoFileName(ident: string): string {
  return `osinfo.${ident}`;
}

/** Freezing around the job start; what BackupJob.begin() calls. */
export interface Quiesce {
  /** Freeze; false when nothing was frozen (already warned). */
  freeze(): Promise<boolean>;
  /** Thaw what freeze() froze; never throws. */
  thaw(): Promise<void>;
}

export class GuestAgent implements Quiesce {
  private frozen = false;

  private constructor(
    private readonly domain: Domain,
    private readonly log: BackupLogger,
    /** The agent's OS information (`os.*` keys); undefined when it did not answer. */
    readonly osInfo: TypedParams | undefined,
    /** -F: only these mountpoints; empty: all. */
    private readonly mountpoints: readonly string[],
  ) {}

  /**
   * Ask the agent for the OS information; a domain without a (working)
   * agent gets the one warning here, and freeze() then does nothing.
   */
  static async probe(domain: Domain, mountpoints: readonly string[], log: BackupLogger): Promise<GuestAgent> {
    try {
      const info = await domain.getGuestInfo(VIR_DOMAIN_GUEST_INFO_OS);
      log.info(`Guest agent of domain ${domain.name} answers${typeof info['os.pretty-name'] === 'string' ? ` (${info['os.pretty-name']})` : ''}.`);
      return new GuestAgent(domain, log, info, mountpoints);
    } catch (e) {
      log.warn(
        `Guest agent of domain ${domain.name} is not available (${messageOf(e)}): filesystems are not frozen, ` +
          'the backup is crash-consistent only.',
      );
      return new GuestAgent(domain, log, undefined, mountpoints);
    }
  }

  get available(): boolean {
    return this.osInfo !== undefined;
  }

  async freeze(): Promise<boolean> {
    if (!this.available) return false;
    const which = this.mountpoints.length > 0 ? ` on ${this.mountpoints.join(', ')}` : '';
    try {
      const count = await this.domain.fsFreeze(this.mountpoints);
      this.frozen = true;
      this.log.info(`Froze [${count}] filesystems${which} of domain ${this.domain.name}.`);
      return true;
    } catch (e) {
      // A failed freeze may still have frozen some: thaw() tries anyway.
      this.frozen = true;
      this.log.warn(`Cannot freeze the filesystems${which} of domain ${this.domain.name}: ${messageOf(e)}; the backup is crash-consistent only.`);
      return false;
    }
  }

  async thaw(): Promise<void> {
    if (!this.frozen) return;
    this.frozen = false;
    try {
      // libvirt thaws all or nothing (mountpoints are refused): the agent only thaws what it froze.
      const count = await this.domain.fsThaw();
      this.log.info(`Thawed [${count}] filesystems of domain ${this.domain.name}.`);
    } catch (e) {
      this.log.error(
        `Cannot thaw the filesystems of domain ${this.domain.name}: ${messageOf(e)}. Thaw them by hand: virsh domfsthaw ${this.domain.name}`,
      );
    }
  }

  /** The OS information as saved in the set. */
  osInfoText(): string | undefined {
    if (this.osInfo === undefined) return undefined;
    const plain: Record<string, string | number | boolean> = {};
    for (const [k, v] of Object.entries(this.osInfo)) plain[k] = typeof v === 'bigint' ? Number(v) : v;
    return `${JSON.stringify(plain, null, 2)}\n`;
  }
}
