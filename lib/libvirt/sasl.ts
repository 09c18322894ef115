/**
 * SASL login to libvirtd (remote_protocol.x: REMOTE_PROC_AUTH_SASL_INIT,
 * _START, _STEP). INIT lists the daemon's mechanisms; we pick
 * SCRAM-SHA-256 (or SCRAM-SHA-1), or PLAIN where the pipe itself is
 * confidential (TLS, a local socket); START and STEP carry the mechanism's
 * messages until the daemon says complete. Each reply's `nil` says "no
 * data" as opposed to "empty data"; the loop is bounded so a confused
 * daemon cannot keep us forever. Failures are LibvirtAuthError naming the
 * user, never the password.
 */
import type { RpcConnection } from './connection.js';
import { LibvirtAuthError, LibvirtError, VIR_ERR_AUTH_FAILED, VIR_ERR_AUTH_UNAVAILABLE, VIR_FROM_AUTH } from './errors.js';
import { RemoteProcedure } from './procedures.js';
import { readString, writeString } from './remote-types.js';
import { SCRAM_MECHANISMS, ScramClient, ScramError, type ScramHash } from './scram.js';
import type { XdrReader, XdrWriter } from './xdr.js';

/** REMOTE_AUTH_SASL_DATA_MAX: longest SASL message either side may send. */
export const REMOTE_AUTH_SASL_DATA_MAX = 65536;

/** What a SASL login needs; the password stays in memory only. */
export interface Credentials {
  username: string;
  password: string;
}

export interface SaslContext {
  /** Where we log in, for messages, e.g. "tls 127.0.0.1:16514". */
  where: string;
  /** The pipe protects what passes through it (TLS, a local socket): PLAIN is acceptable. */
  confidential: boolean;
  /** True for plain TCP, where libvirtd demands a SASL security layer SCRAM cannot give. */
  plainTcp: boolean;
}

/** One START/STEP reply: `data` is null when the daemon sent none (nil). */
interface SaslReply {
  complete: boolean;
  data: Buffer | null;
}

/** Enough round trips for any mechanism we speak (SCRAM needs two or three). */
const MAX_STEPS = 8;

/**
 * `char data<REMOTE_AUTH_SASL_DATA_MAX>` is an XDR array of chars, each a
 * 4-byte int on the wire (not opaque bytes); chars are signed in libvirt's C.
 */
function writeSaslData(w: XdrWriter, data: Buffer | null): void {
  w.int(data === null ? 1 : 0);
  const bytes = data ?? Buffer.alloc(0);
  w.array([...bytes], (ww, b) => ww.int((b << 24) >> 24), REMOTE_AUTH_SASL_DATA_MAX);
}

function readSaslReply(r: XdrReader): SaslReply {
  const complete = r.int() !== 0;
  const nil = r.int() !== 0;
  const bytes = r.array((rr) => rr.int() & 0xff, REMOTE_AUTH_SASL_DATA_MAX);
  return { complete, data: nil ? null : Buffer.from(bytes) };
}

/** The daemon's mechanisms, upper-case; libvirt separates them with commas (Cyrus may use blanks). */
export function parseMechanisms(list: string): string[] {
  return list
    .split(/[\s,]+/)
    .map((m) => m.trim().toUpperCase())
    .filter((m) => m !== '');
}

export type MechanismChoice = { kind: 'scram'; hash: ScramHash } | { kind: 'plain' };

/**
 * Our pick among the daemon's mechanisms; throws LibvirtError saying why
 * none fits. PLAIN sends the password itself, so only over a confidential pipe.
 */
export function chooseMechanism(offered: readonly string[], ctx: SaslContext): MechanismChoice {
  if (offered.includes(SCRAM_MECHANISMS.sha256)) return { kind: 'scram', hash: 'sha256' };
  if (offered.includes(SCRAM_MECHANISMS.sha1)) return { kind: 'scram', hash: 'sha1' };
  if (offered.includes('PLAIN')) {
    if (ctx.confidential) return { kind: 'plain' };
    throw new LibvirtError({
      code: VIR_ERR_AUTH_UNAVAILABLE,
      domain: VIR_FROM_AUTH,
      message:
        `libvirt at ${ctx.where} offers only SASL PLAIN, which would send the password unencrypted over this connection; ` +
        'refused: use qemu+tls:// (or qemu+ssh://), or let the daemon offer SCRAM-SHA-256',
    });
  }
  throw new LibvirtError({
    code: VIR_ERR_AUTH_UNAVAILABLE,
    domain: 46,
    message:
      `libvirt at ${ctx.where} offers SASL mechanisms ${offered.length ? offered.join(', ') : '(none)'}, none of which virtnbd speaks ` +
      '(SCRAM-SHA-256, SCRAM-SHA-1, or PLAIN over TLS)',
  });
}

/** Runs the whole SASL exchange on `rpc`; resolves once the daemon accepted us. */
export async function authenticateSasl(rpc: RpcConnection, credentials: Credentials | undefined, ctx: SaslContext): Promise<void> {
  if (!credentials) {
    throw new LibvirtAuthError(
      VIR_ERR_AUTH_UNAVAILABLE,
      `libvirt at ${ctx.where} requires SASL authentication: credentials are needed; pass --user and --password ` +
        '(or --password-file FILE, or the VIRTNBD_PASSWORD environment variable)',
      undefined,
    );
  }
  const user = credentials.username;
  let mechlist: string;
  try {
    mechlist = await rpc.remote(RemoteProcedure.AUTH_SASL_INIT, undefined, readString);
  } catch (err) {
    if (err instanceof LibvirtError && err.code === VIR_ERR_AUTH_FAILED && ctx.plainTcp) {
      throw new LibvirtAuthError(
        VIR_ERR_AUTH_UNAVAILABLE,
        `libvirt at ${ctx.where} refused to start SASL on plain TCP: there libvirtd offers only mechanisms with a security ` +
          'layer (SSF 56 or more, e.g. GSSAPI), and SCRAM-SHA-256 has none; use qemu+tls:// or qemu+ssh:// instead',
        user,
        err,
      );
    }
    throw err;
  }
  const choice = chooseMechanism(parseMechanisms(mechlist), ctx);
  const failed = (why: string, cause?: unknown): LibvirtAuthError =>
    new LibvirtAuthError(VIR_ERR_AUTH_FAILED, `authentication failed for user '${user}' at ${ctx.where}: ${why}`, user, cause);

  const call = async (first: { mech: string } | null, data: Buffer | null): Promise<SaslReply> => {
    try {
      if (first) {
        return await rpc.remote(RemoteProcedure.AUTH_SASL_START, (w) => {
          writeString(w, first.mech);
          writeSaslData(w, data);
        }, readSaslReply);
      }
      return await rpc.remote(RemoteProcedure.AUTH_SASL_STEP, (w) => writeSaslData(w, data), readSaslReply);
    } catch (err) {
      if (err instanceof LibvirtError && err.code === VIR_ERR_AUTH_FAILED) {
        throw failed('the daemon rejected the user name or password', err);
      }
      throw err;
    }
  };

  if (choice.kind === 'plain') {
    // authzid NUL authcid NUL password (RFC 4616); no authzid: act as ourselves.
    const message = Buffer.from(`\0${user}\0${credentials.password}`, 'utf8');
    const reply = await call({ mech: 'PLAIN' }, message);
    if (!reply.complete) throw failed('the daemon did not complete a PLAIN login');
    return;
  }

  let scram: ScramClient;
  try {
    scram = new ScramClient({ username: user, password: credentials.password, hash: choice.hash });
  } catch (err) {
    throw failed((err as Error).message, err);
  }
  try {
    let reply = await call({ mech: scram.mechanism }, Buffer.from(scram.clientFirst(), 'utf8'));
    for (let step = 0; ; step++) {
      if (step >= MAX_STEPS) throw failed(`the ${scram.mechanism} exchange did not finish after ${MAX_STEPS} steps`);
      const serverData = reply.data === null ? null : reply.data.toString('utf8');
      let answer: Buffer | null = null;
      if (!scram.done && serverData !== null && serverData !== '') {
        if (serverData.startsWith('v=') || serverData.startsWith('e=')) scram.verifyServerFinal(serverData);
        else answer = Buffer.from(scram.clientFinal(serverData), 'utf8');
      }
      if (reply.complete) {
        // The daemon is satisfied; we are only when it proved it knows our key.
        if (!scram.done) throw failed(`the daemon ended ${scram.mechanism} without proving its identity (no server signature)`);
        return;
      }
      // After the server signature the mechanism has nothing more to say: an empty step lets the daemon finish.
      reply = await call(null, answer ?? Buffer.alloc(0));
    }
  } catch (err) {
    if (err instanceof ScramError) throw failed(err.message, err);
    throw err;
  }
}
