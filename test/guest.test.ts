/**
 * The real Linux test guest (fixtures/guest, test/helpers/guest.ts), checked
 * against libvirt and the disk image itself: it boots under TCG, its agent
 * answers, runs programs and writes files, freezes its root so that the
 * disk image on the host holds what the guest wrote, and shuts down
 * cleanly. One guest serves all tests here (booting costs seconds of TCG),
 * so they run serially, in order.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import test from 'ava';
import { run } from './helpers/exec.js';
import {
  agentCommand,
  bootGuest,
  GUEST_READY_MARKER,
  GuestAgentError,
  guestExec,
  guestReadFile,
  guestRun,
  guestSha256,
  guestSync,
  guestWriteFile,
  readConsole,
  sha256,
  type Guest,
} from './helpers/guest.js';
import { KiB, TestHost } from './helpers/host.js';
import { virsh } from './helpers/virsh.js';

let host: TestHost;
let guest: Guest;
const teardowns: (() => void | Promise<void>)[] = [];

test.before(async () => {
  host = await TestHost.create({ teardown: (fn) => teardowns.push(fn) });
  guest = await bootGuest(host);
});

test.after.always(async () => {
  for (const fn of teardowns.reverse()) await fn();
});

/** A raw copy of the guest's root disk as it is on the host now (`-U`: the VM may hold it). */
async function rootSnapshot(name: string): Promise<string> {
  const raw = host.path(name);
  await run('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', guest.root.path, raw]);
  return raw;
}

/** A file read from an ext4 image on the host by debugfs, without mounting or journal replay. */
async function debugfsRead(rawImage: string, path: string, name: string): Promise<Buffer> {
  const out = host.path(name);
  await run('debugfs', ['-R', `dump ${path} ${out}`, rawImage]);
  return readFile(out);
}

test.serial('the guest boots, prints its ready marker on ttyS0 and its agent answers guest-ping', async (t) => {
  const lines = (await readConsole(guest.consoleLog)).split(/\r?\n/);
  t.true(lines.includes(GUEST_READY_MARKER), 'the marker is a line of its own');
  t.true(lines.some((l) => l.includes('Run /init as init process')), 'booted through our initramfs');
  t.deepEqual(await agentCommand(guest.vm, 'guest-ping'), {});
  t.is(await guest.vm.state(), 'running');
  t.log(`up ${guest.bootMs} ms after virsh start`);
});

test.serial('guest-exec runs uname -r: the Debian cloud kernel the image was built from', async (t) => {
  const r = await guestExec(guest.vm, ['uname', '-r']);
  t.is(r.exitCode, 0);
  t.is(r.stdout.toString().trim(), guest.image.kernelRelease);
  t.regex(guest.image.kernelRelease, /-cloud-amd64$/);
});

test.serial('guest-exec passes stdin and returns stdout, stderr and the exit code', async (t) => {
  const input = randomBytes(3000);
  const r = await guestExec(guest.vm, ['sh', '-c', 'cat; echo to-stderr >&2; exit 3'], { input });
  t.is(r.exitCode, 3);
  t.true(r.stdout.equals(input), 'binary stdin comes back unchanged');
  t.is(r.stderr.toString(), 'to-stderr\n');
  t.false(r.truncated);
  const failed = await t.throwsAsync(guestRun(guest.vm, ['false']), { instanceOf: GuestAgentError });
  t.regex(failed.message, /false exited with 1/);
});

test.serial('a program the guest does not have is a GuestAgentError naming guest-exec', async (t) => {
  const e = await t.throwsAsync(guestExec(guest.vm, ['/no/such/program']), { instanceOf: GuestAgentError });
  t.regex(e.message, /guest-exec/);
  t.regex(e.message, /no\/such\/program/);
});

test.serial('a file written through the agent reads back with the same bytes and sha256', async (t) => {
  // Several guest-file-write chunks, the last one partial.
  const bytes = randomBytes(200 * KiB + 123);
  await guestWriteFile(guest.vm, '/data/agent-written.bin', bytes);
  t.is(await guestSha256(guest.vm, '/data/agent-written.bin'), sha256(bytes));
  t.true((await guestReadFile(guest.vm, '/data/agent-written.bin')).equals(bytes));
  t.is((await guestRun(guest.vm, ['stat', '-c', '%s', '/data/agent-written.bin'])).trim(), String(bytes.length));
  await guestSync(guest.vm);
});

test.serial('domfsfreeze freezes the root (1 filesystem) and puts what the guest wrote on the disk image; domfsthaw undoes it', async (t) => {
  const bytes = randomBytes(300 * KiB);
  await guestWriteFile(guest.vm, '/data/before-freeze.bin', bytes);
  // No sync: freezing must flush the file system and the journal by itself.
  t.regex(await virsh(['domfsfreeze', guest.vm.name]), /Froze 1 filesystem\(s\)/);
  let snapshot: string;
  try {
    t.is(await agentCommand<string>(guest.vm, 'guest-fsfreeze-status'), 'frozen');
    snapshot = await rootSnapshot('frozen-root.raw');
  } finally {
    t.regex(await virsh(['domfsthaw', guest.vm.name]), /Thawed 1 filesystem\(s\)/);
  }
  t.is(await agentCommand<string>(guest.vm, 'guest-fsfreeze-status'), 'thawed');
  t.is(sha256(await debugfsRead(snapshot, '/data/before-freeze.bin', 'before-freeze.bin')), sha256(bytes));
  // Thawed, the guest writes again.
  await guestWriteFile(guest.vm, '/data/after-thaw.txt', Buffer.from('thawed\n'));
  t.is((await guestReadFile(guest.vm, '/data/after-thaw.txt')).toString(), 'thawed\n');
});

test.serial('shutdown through the agent powers the guest off and leaves a clean ext4 holding its files', async (t) => {
  const bytes = randomBytes(64 * KiB);
  await guestWriteFile(guest.vm, '/data/last.bin', bytes);
  await virsh(['shutdown', guest.vm.name, '--mode', 'agent']);
  const deadline = Date.now() + 120_000;
  while ((await guest.vm.state()) !== 'shut off') {
    if (Date.now() > deadline) throw new Error(`VM still ${await guest.vm.state()} 120 s after the agent shutdown`);
    await new Promise((r) => setTimeout(r, 250));
  }
  const raw = await rootSnapshot('after-shutdown.raw');
  // e2fsck -n exits 0 only if the file system is clean; it needs no journal replay after a clean unmount.
  const fsck = await run('e2fsck', ['-fn', raw], { okCodes: [0, 1, 4, 8] });
  t.is(fsck.exitCode, 0, fsck.stdout + fsck.stderr);
  t.is(sha256(await debugfsRead(raw, '/data/last.bin', 'last.bin')), sha256(bytes));
});
