/**
 * Instant recovery with `virtnbdmap --boot`: the real test guest writes a
 * file, is backed up (full), writes another, is backed up again (inc),
 * and is then destroyed and undefined. virtnbdmap boots a transient
 * domain from the backup set (qcow2 overlays on our NBD exports of the
 * chain): the guest prints its ready marker on the serial console, and the
 * file written before the inc reads back through the guest agent with the
 * same sha256. Ctrl-C (SIGINT) then leaves nothing: no domain, no socket,
 * no overlay, no process.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import {
  agentCommand,
  bootGuest,
  GUEST_READY_MARKER,
  GuestAgentError,
  guestSha256,
  guestSync,
  guestWriteFile,
  readConsole,
  sha256,
} from './helpers/guest.js';
import { KiB, TestHost } from './helpers/host.js';
import { startMap } from './helpers/map-run.js';
import { ourBackup } from './helpers/our-backup.js';
import { processesMentioning } from './helpers/restore-check.js';
import { virsh } from './helpers/virsh.js';
import type { TestVm } from './helpers/vm.js';

/** Up to 180 s for TCG on a loaded host (the guest needs ~6 s when idle). */
const BOOT_TIMEOUT_MS = 180_000;

test('virtnbdmap --boot runs the backed-up guest from its backup; Ctrl-C removes it all', async (t) => {
  const host = await TestHost.create(t);
  const guest = await bootGuest(host);
  const first = randomBytes(200 * KiB);
  const second = randomBytes(300 * KiB);
  await guestWriteFile(guest.vm, '/data/first.bin', first);
  await guestSync(guest.vm);
  const set = host.path('set');
  await ourBackup(host, guest.vm, 'full', set);
  await guestWriteFile(guest.vm, '/data/second.bin', second);
  await guestSync(guest.vm);
  await ourBackup(host, guest.vm, 'inc', set);
  await guest.vm.undefine();
  // The instant domain writes the same console file: start it empty, so the marker is the new boot's.
  await rm(guest.consoleLog, { force: true });

  const name = `${host.id}-instant`;
  // Should the test fail midway, killing virtnbdmap drops its libvirt connection and libvirt destroys the domain;
  // this is the safety net on top.
  host.onCleanup(`instant domain ${name}`, async () => {
    await virsh(['destroy', name]).catch(() => undefined);
  });
  const m = await startMap(t, ['-v', '--boot', '--name', name, '-f', set, '-L', host.path('map.log')], { readyTimeoutMs: 120_000 });
  for (const line of m.log().split('\n').filter((l) => /WARNING|ERROR|Instant domain config/.test(l))) t.log(line);
  t.regex(m.log(), new RegExp(`Starting transient domain ${name} from vmconfig\\.virtnbdbackup\\.1\\.xml`));
  const overlay = /vda -> (\S+\.qcow2)/.exec(m.log())?.[1];
  t.truthy(overlay, m.log());
  const socket = /NBD server listening on (\S+)/.exec(m.log())?.[1];
  t.truthy(socket);
  t.is((await virsh(['domstate', name])).trim(), 'running');
  t.regex(await virsh(['dumpxml', name]), /<backingStore type='network'[^>]*>\s*<format type='raw'\/>\s*<source protocol='nbd' name='vda'/, 'vda is a qcow2 overlay on our NBD export');

  // The agent commands only need the domain's name.
  const instant = { name } as TestVm;
  const deadline = Date.now() + BOOT_TIMEOUT_MS;
  for (;;) {
    const console = await readConsole(guest.consoleLog);
    if (console.includes(GUEST_READY_MARKER)) {
      const pong = await agentCommand(instant, 'guest-ping', undefined, { timeoutS: 5 }).then(
        () => true,
        (e: unknown) => (e instanceof GuestAgentError ? false : Promise.reject(e)),
      );
      if (pong) break;
    }
    if (/Kernel panic|VIRTNBD-GUEST-ERROR/.test(console)) t.fail(`the instant guest failed to boot:\n${console.slice(-3000)}`);
    if (Date.now() > deadline) t.fail(`no ready marker and agent within ${BOOT_TIMEOUT_MS} ms:\n${console.slice(-3000)}\n${m.log()}`);
    await sleep(500);
  }
  t.true((await readConsole(guest.consoleLog)).split(/\r?\n/).includes(GUEST_READY_MARKER), 'the guest printed its marker on the serial console');
  t.is(await guestSha256(instant, '/data/second.bin'), sha256(second), 'the file written before the inc backup is there');
  t.is(await guestSha256(instant, '/data/first.bin'), sha256(first), 'and the one from before the full');

  t.is(await m.stop(), 0, m.log());
  t.regex(m.log(), new RegExp(`Destroyed domain ${name}`));
  const gone = await virsh(['domstate', name]).then(
    () => false,
    () => true,
  );
  t.true(gone, 'the transient domain is gone');
  t.false(existsSync(socket!), 'the NBD socket is gone');
  t.false(existsSync(overlay!), 'the overlays are gone');
  t.deepEqual(await processesMentioning(overlay!.replace(/\/[^/]+$/, '')), [], 'no process uses the work directory');
});
