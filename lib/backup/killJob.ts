/**
 * `-k/--killonly`: end whatever backup job runs on the domain (one left by
 * `-s/--startonly`, or by a backup that died), as abortJob ends a
 * pull-mode job; libvirt then removes its socket and scratch files.
 * Waits (bounded) until libvirt reports no job.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Domain } from '../libvirt/domain.js';
import { VIR_DOMAIN_JOB_NONE } from '../libvirt/flags.js';
import { BackupError, messageOf } from './errors.js';
import { describeRunningJob } from './job.js';
import type { BackupLogger } from './log.js';

const KILL_WAIT_MS = 30_000;

/** Whether a job was running (and is now ended). */
export async function killBackupJob(domain: Domain, log: BackupLogger): Promise<boolean> {
  const jobType = async (): Promise<number> => {
    try {
      return (await domain.getJobInfo()).type;
    } catch (e) {
      throw new BackupError('libvirt', `Cannot query the jobs of domain ${domain.name}: ${messageOf(e)}`, { cause: e });
    }
  };
  if ((await jobType()) === VIR_DOMAIN_JOB_NONE) {
    log.info(`No backup job runs on domain ${domain.name}: nothing to stop.`);
    return false;
  }
  const what = await describeRunningJob(domain);
  try {
    await domain.abortJob();
  } catch (e) {
    throw new BackupError('job', `Cannot stop ${what} of domain ${domain.name}: ${messageOf(e)}`, { cause: e });
  }
  const deadline = Date.now() + KILL_WAIT_MS;
  while ((await jobType()) !== VIR_DOMAIN_JOB_NONE && Date.now() < deadline) await sleep(50);
  log.info(`Stopped ${what} of domain ${domain.name}.`);
  return true;
}
