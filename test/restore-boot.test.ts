/**
 * A restored image boots, and holds what the guest wrote: the real test
 * guest writes files through its agent (guest-file-write), one set before
 * a full backup, more (and a rewrite of one file) before an incremental
 * backup taken with `-F /`; our virtnbdrestore rebuilds the qcow2 from the
 * set; a new guest boots from that qcow2, and each file's sha256, read
 * back inside it through the agent, is the one of the bytes last written.
 */
import { randomBytes } from 'node:crypto';
import { basename, join } from 'node:path';
import test from 'ava';
import { assertNothingLeft, jobArgs, runBackup } from './helpers/backup-run.js';
import { bootGuest, guestSha256, guestSync, guestWriteFile, sha256 } from './helpers/guest.js';
import { KiB, MiB, TestHost } from './helpers/host.js';
import { imageInfo, type Image } from './helpers/image.js';
import { listFiles } from './helpers/peer.js';
import { leftovers, ourRestore } from './helpers/restore-check.js';
import type { TestVm } from './helpers/vm.js';

async function writeAll(vm: TestVm, files: ReadonlyMap<string, Buffer>): Promise<void> {
  for (const [path, bytes] of files) await guestWriteFile(vm, path, bytes);
  await guestSync(vm);
}

test('files written in the guest before the full and the inc backup are in the restored image, read back by the booted guest', async (t) => {
  const host = await TestHost.create(t);
  const guest = await bootGuest(host);
  const paths = { socket: host.path('backup.sock'), scratchDir: host.path('scratch') };
  const set = host.path('set');

  const beforeFull = new Map<string, Buffer>([
    ['/data/full-a.bin', randomBytes(200 * KiB)],
    ['/data/full-note.txt', Buffer.from('written through guest-file-write before the full backup\n')],
    // Rewritten before the inc: the restore must yield the newer bytes.
    ['/data/rewritten.bin', randomBytes(64 * KiB)],
  ]);
  await writeAll(guest.vm, beforeFull);
  const full = await runBackup(host, jobArgs(paths, '-d', guest.vm.name, '-l', 'full', '-o', set, '-F', '/'));
  t.is(full.exitCode, 0, full.stderr);
  t.regex(full.stderr, /Froze \[1\] filesystems on \/ /);

  const beforeInc = new Map<string, Buffer>([
    ['/data/inc-b.bin', randomBytes(MiB + 123)],
    ['/data/inc-note.txt', Buffer.from('written through guest-file-write before the inc backup\n')],
    ['/data/rewritten.bin', randomBytes(96 * KiB)],
  ]);
  await writeAll(guest.vm, beforeInc);
  const inc = await runBackup(host, jobArgs(paths, '-d', guest.vm.name, '-l', 'inc', '-o', set, '-F', '/'));
  t.is(inc.exitCode, 0, inc.stderr);
  t.regex(inc.stderr, /Froze \[1\] filesystems on \/ /);
  const setFiles = await listFiles(set);
  t.true(setFiles.includes('vda.full.data'), setFiles.join(', '));
  t.true(setFiles.includes('vda.inc.virtnbdbackup.1.data'), setFiles.join(', '));
  await assertNothingLeft(t, guest.vm, paths, [set]);
  // The original guest is done: free the CPU for the restored one.
  await guest.vm.destroy();

  const out = host.path('out');
  const r = await ourRestore(host.dir, ['-i', set, '-o', out]);
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(await leftovers(host.dir), []);
  const restoredPath = join(out, basename(guest.root.path));
  const info = await imageInfo(restoredPath);
  t.is(info.format, 'qcow2');
  t.is(info['virtual-size'], guest.root.size);
  const restored: Image = { path: restoredPath, format: 'qcow2', size: info['virtual-size'] };

  const booted = await bootGuest(host, { root: restored });
  t.is(booted.root.path, restoredPath, 'the new guest runs on the restored image');
  const expected = new Map([...beforeFull, ...beforeInc]);
  for (const [path, bytes] of expected) {
    t.is(await guestSha256(booted.vm, path), sha256(bytes), `${path} as the restored guest reads it`);
  }
});
