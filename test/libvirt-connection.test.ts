// RpcConnection against a scripted peer on a unix socket, for what a healthy
// libvirtd never does on demand: replies out of order, garbage, truncated
// replies, hang-ups mid-call, a keepalive PING that must be answered.
// (The same client against the real daemon: libvirt-hypervisor.test.ts.)
import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { RpcConnection } from '../lib/libvirt/connection.js';
import { LibvirtError, VIR_ERR_INVALID_ARG, VIR_ERR_INVALID_CONN, VIR_ERR_RPC } from '../lib/libvirt/errors.js';
import { MessageStatus, MessageType, PacketDecoder, encodePacket, type Packet } from '../lib/libvirt/packet.js';
import { KEEPALIVE_PROGRAM, KeepaliveProcedure, REMOTE_PROGRAM, RemoteProcedure } from '../lib/libvirt/procedures.js';
import { connectUnix } from '../lib/libvirt/transport.js';
import { XdrWriter } from '../lib/libvirt/xdr.js';

interface Peer {
  /** Packets the client sent, as they arrive. */
  next(): Promise<Packet>;
  send(data: Buffer): void;
  hangUp(): void;
}

/** A unix-socket peer in a fresh temp dir; one client; removed on teardown. */
async function startPeer(t: { teardown(fn: () => void | Promise<void>): void }): Promise<{ peer: Promise<Peer>; socketPath: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnbdlv-conn-'));
  const socketPath = path.join(dir, 'peer.sock');
  const server = net.createServer();
  const sockets: net.Socket[] = [];
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const peer = new Promise<Peer>((resolve) => {
    server.once('connection', (socket) => {
      sockets.push(socket);
      const decoder = new PacketDecoder();
      const queue: Packet[] = [];
      const waiters: ((p: Packet) => void)[] = [];
      socket.on('data', (chunk) => {
        for (const p of decoder.push(chunk)) {
          const w = waiters.shift();
          if (w) w(p);
          else queue.push(p);
        }
      });
      socket.on('error', () => {});
      resolve({
        next: () => new Promise((res) => {
          const p = queue.shift();
          if (p) res(p);
          else waiters.push(res);
        }),
        send: (data) => socket.write(data),
        hangUp: () => socket.destroy(),
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return { peer, socketPath };
}

function reply(call: Packet, body: Buffer, status: number = MessageStatus.OK): Buffer {
  return encodePacket({ ...call.header, type: MessageType.REPLY, status }, body);
}

function hostnameCall(rpc: RpcConnection): Promise<string> {
  return rpc.remote(RemoteProcedure.CONNECT_GET_HOSTNAME, undefined, (r) => r.string());
}

test('replies are matched by serial, whatever order they come back in', async (t) => {
  const { peer, socketPath } = await startPeer(t);
  const rpc = new RpcConnection(await connectUnix(socketPath));
  t.teardown(() => rpc.destroy());
  const p = await peer;
  const calls = [hostnameCall(rpc), hostnameCall(rpc), hostnameCall(rpc)];
  const received = [await p.next(), await p.next(), await p.next()];
  t.deepEqual(new Set(received.map((c) => c.header.serial)).size, 3);
  t.true(received.every((c) => c.header.program === REMOTE_PROGRAM && c.header.type === MessageType.CALL));
  for (const call of [...received].reverse()) {
    p.send(reply(call, new XdrWriter().string(`host-${call.header.serial}`).finish()));
  }
  t.deepEqual(await Promise.all(calls), received.map((c) => `host-${c.header.serial}`));
});

test('a keepalive PING from the daemon is answered with a PONG', async (t) => {
  const { peer, socketPath } = await startPeer(t);
  const rpc = new RpcConnection(await connectUnix(socketPath));
  t.teardown(() => rpc.destroy());
  const p = await peer;
  const pinged = new Promise((resolve) => rpc.once('keepalive', resolve));
  p.send(encodePacket({ program: KEEPALIVE_PROGRAM, version: 1, procedure: KeepaliveProcedure.PING, type: MessageType.MESSAGE, serial: 0, status: 0 }));
  const pong = await p.next();
  t.is(await pinged, 'ping');
  t.deepEqual(pong.header, { program: KEEPALIVE_PROGRAM, version: 1, procedure: KeepaliveProcedure.PONG, type: MessageType.MESSAGE, serial: 0, status: 0 });
});

test('an event message is passed on and does not disturb calls', async (t) => {
  const { peer, socketPath } = await startPeer(t);
  const rpc = new RpcConnection(await connectUnix(socketPath));
  t.teardown(() => rpc.destroy());
  const p = await peer;
  const events: Packet[] = [];
  rpc.on('event', (e) => events.push(e));
  const call = hostnameCall(rpc);
  const c = await p.next();
  p.send(encodePacket({ program: REMOTE_PROGRAM, version: 1, procedure: 318, type: MessageType.MESSAGE, serial: 0, status: 0 }, Buffer.alloc(8)));
  p.send(reply(c, new XdrWriter().string('h').finish()));
  t.is(await call, 'h');
  t.is(events.length, 1);
  t.is(events[0].header.procedure, 318);
});

test('an error reply rejects that call with the daemon error; the connection lives on', async (t) => {
  const { peer, socketPath } = await startPeer(t);
  const rpc = new RpcConnection(await connectUnix(socketPath));
  t.teardown(() => rpc.destroy());
  const p = await peer;
  const failing = hostnameCall(rpc);
  const c = await p.next();
  const err = new XdrWriter()
    .int(55).int(10)
    .optional('Requested operation is not valid: domain is not running', (w, v) => w.string(v))
    .int(2).bool(false).bool(false).bool(false).bool(false).int(0).int(0).bool(false)
    .finish();
  p.send(reply(c, err, MessageStatus.ERROR));
  const e = await t.throwsAsync(failing, { instanceOf: LibvirtError });
  t.is(e!.code, 55);
  t.is(e!.message, 'Requested operation is not valid: domain is not running');
  t.is(e!.procedure, 'REMOTE_PROC_CONNECT_GET_HOSTNAME');
  const ok = hostnameCall(rpc);
  p.send(reply(await p.next(), new XdrWriter().string('still here').finish()));
  t.is(await ok, 'still here');
});

test('a truncated reply rejects only its call, naming the procedure', async (t) => {
  const { peer, socketPath } = await startPeer(t);
  const rpc = new RpcConnection(await connectUnix(socketPath));
  t.teardown(() => rpc.destroy());
  const p = await peer;
  const bad = hostnameCall(rpc);
  p.send(reply(await p.next(), Buffer.from('000000ff6162', 'hex')));
  const e = await t.throwsAsync(bad, { instanceOf: LibvirtError });
  t.is(e!.code, VIR_ERR_RPC);
  t.regex(e!.message, /malformed reply to REMOTE_PROC_CONNECT_GET_HOSTNAME: truncated data/);
  t.true(rpc.isOpen);
});

test('a reply with bytes left over is malformed, not silently accepted', async (t) => {
  const { peer, socketPath } = await startPeer(t);
  const rpc = new RpcConnection(await connectUnix(socketPath));
  t.teardown(() => rpc.destroy());
  const p = await peer;
  const bad = hostnameCall(rpc);
  p.send(reply(await p.next(), Buffer.concat([new XdrWriter().string('h').finish(), Buffer.alloc(4)])));
  await t.throwsAsync(bad, { instanceOf: LibvirtError, message: /4 unexpected bytes after the reply to REMOTE_PROC_CONNECT_GET_HOSTNAME/ });
});

test('garbage framing fails every call in flight and the connection, no hang', async (t) => {
  const { peer, socketPath } = await startPeer(t);
  const rpc = new RpcConnection(await connectUnix(socketPath));
  t.teardown(() => rpc.destroy());
  const p = await peer;
  const calls = Array.from({ length: 5 }, () => hostnameCall(rpc));
  for (let i = 0; i < 5; i++) await p.next();
  const closed = new Promise<LibvirtError | null>((resolve) => rpc.once('close', resolve));
  p.send(Buffer.from('ffffffff00000000', 'hex'));
  const results = await Promise.allSettled(calls);
  for (const r of results) {
    t.is(r.status, 'rejected');
    const e = (r as PromiseRejectedResult).reason as LibvirtError;
    t.true(e instanceof LibvirtError);
    t.is(e.code, VIR_ERR_RPC);
    t.regex(e.message, /REMOTE_PROC_CONNECT_GET_HOSTNAME got no reply: protocol error from libvirt at unix socket .*exceeds libvirt's limit/);
  }
  t.regex((await closed)!.message, /protocol error/);
  t.false(rpc.isOpen);
  await t.throwsAsync(hostnameCall(rpc), { instanceOf: LibvirtError, code: VIR_ERR_INVALID_CONN, message: /cannot call REMOTE_PROC_CONNECT_GET_HOSTNAME: protocol error/ });
});

test('the peer hanging up mid-call rejects the call in flight', async (t) => {
  const { peer, socketPath } = await startPeer(t);
  const rpc = new RpcConnection(await connectUnix(socketPath));
  t.teardown(() => rpc.destroy());
  const p = await peer;
  const call = hostnameCall(rpc);
  await p.next();
  p.hangUp();
  const e = await t.throwsAsync(call, { instanceOf: LibvirtError });
  t.is(e!.code, VIR_ERR_RPC);
  t.regex(e!.message, /got no reply: connection to libvirt at unix socket .* was closed by the other end/);
});

test('close() rejects unanswered calls and resolves', async (t) => {
  const { peer, socketPath } = await startPeer(t);
  const rpc = new RpcConnection(await connectUnix(socketPath));
  const p = await peer;
  const call = hostnameCall(rpc);
  await p.next();
  const closing = rpc.close();
  p.hangUp(); // the daemon hangs up when we end our side
  await closing;
  await t.throwsAsync(call, { instanceOf: LibvirtError, message: /got no reply: the connection was closed/ });
});

test('arguments that cannot be encoded are refused before anything is sent', async (t) => {
  const { socketPath } = await startPeer(t);
  const rpc = new RpcConnection(await connectUnix(socketPath));
  t.teardown(() => rpc.destroy());
  const e = await t.throwsAsync(rpc.remote(RemoteProcedure.DOMAIN_GET_XML_DESC, (w) => w.uint(-1)), { instanceOf: LibvirtError });
  t.is(e!.code, VIR_ERR_INVALID_ARG);
  t.regex(e!.message, /invalid arguments for REMOTE_PROC_DOMAIN_GET_XML_DESC: -1 is not a 32-bit unsigned integer/);
  t.is(rpc.inFlight, 0);
});
