/**
 * SCRAM (RFC 5802), as SCRAM-SHA-256 (RFC 7677) or SCRAM-SHA-1, client side,
 * without channel binding (GS2 header "n,,"): the password never crosses the
 * wire, and the server proves it knows the user's key too. One ScramClient
 * runs one exchange: clientFirst() -> clientFinal(serverFirst) ->
 * verifyServerFinal(serverFinal). Pure computation with node:crypto; the
 * SASL conversation that carries the messages lives in sasl.ts.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

export type ScramHash = 'sha256' | 'sha1';

/** The SASL mechanism name for each hash. */
export const SCRAM_MECHANISMS: Readonly<Record<ScramHash, string>> = { sha256: 'SCRAM-SHA-256', sha1: 'SCRAM-SHA-1' };

/**
 * The server asked for more PBKDF2 rounds than this: refuse rather than let
 * a hostile server pin the CPU. Cyrus SASL uses 4096 unless configured.
 */
export const SCRAM_MAX_ITERATIONS = 10_000_000;

/** A malformed or dishonest server message, or an unusable user name or password. */
export class ScramError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ScramError';
  }
}

export interface ScramOptions {
  username: string;
  password: string;
  hash?: ScramHash;
  /** The client nonce; random (24 bytes, base64) unless given, for tests with published vectors. */
  nonce?: string;
}

type Step = 'start' | 'first-sent' | 'final-sent' | 'done';

export class ScramClient {
  readonly hash: ScramHash;
  private readonly username: string;
  private readonly password: string;
  private readonly nonce: string;
  private step: Step = 'start';
  private clientFirstBare = '';
  private serverSignature: Buffer | null = null;

  constructor(options: ScramOptions) {
    this.hash = options.hash ?? 'sha256';
    this.username = saslPrep(options.username, 'user name');
    this.password = saslPrep(options.password, 'password');
    if (this.username === '') throw new ScramError('the user name is empty');
    this.nonce = options.nonce ?? randomBytes(24).toString('base64');
    if (!/^[\x21-\x2b\x2d-\x7e]+$/.test(this.nonce)) throw new ScramError('the client nonce must be printable ASCII without commas');
  }

  get mechanism(): string {
    return SCRAM_MECHANISMS[this.hash];
  }

  /** True once the server's signature was verified. */
  get done(): boolean {
    return this.step === 'done';
  }

  /** client-first-message: "n,,n=<user>,r=<nonce>". */
  clientFirst(): string {
    if (this.step !== 'start') throw new ScramError('clientFirst() called twice');
    this.clientFirstBare = `n=${escapeName(this.username)},r=${this.nonce}`;
    this.step = 'first-sent';
    return `n,,${this.clientFirstBare}`;
  }

  /** Takes server-first-message "r=...,s=...,i=...", returns client-final-message with the proof. */
  clientFinal(serverFirst: string): string {
    if (this.step !== 'first-sent') throw new ScramError('clientFinal() out of order');
    const attrs = parseAttributes(serverFirst, 'server-first-message');
    if (attrs.has('e')) throw new ScramError(`the server refused the exchange: ${attrs.get('e')}`);
    if (attrs.has('m')) throw new ScramError('the server demands a SCRAM extension this client does not know');
    const nonce = required(attrs, 'r', 'server-first-message');
    if (!nonce.startsWith(this.nonce) || nonce.length === this.nonce.length) {
      throw new ScramError('the server nonce does not extend ours (a replayed or forged server-first-message)');
    }
    const salt = decodeBase64(required(attrs, 's', 'server-first-message'), 'salt');
    const iterText = required(attrs, 'i', 'server-first-message');
    if (!/^[1-9][0-9]{0,9}$/.test(iterText)) throw new ScramError(`bad iteration count '${iterText}' in server-first-message`);
    const iterations = Number(iterText);
    if (iterations > SCRAM_MAX_ITERATIONS) throw new ScramError(`the server asks for ${iterations} iterations, more than ${SCRAM_MAX_ITERATIONS}`);

    const size = createHash(this.hash).digest().length;
    const saltedPassword = pbkdf2Sync(Buffer.from(this.password, 'utf8'), salt, iterations, size, this.hash);
    const clientKey = this.hmac(saltedPassword, 'Client Key');
    const storedKey = createHash(this.hash).update(clientKey).digest();
    // "biws" is base64("n,,"): no channel binding, no authzid.
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const clientSignature = this.hmac(storedKey, authMessage);
    const proof = Buffer.alloc(size);
    for (let i = 0; i < size; i++) proof[i] = clientKey[i] ^ clientSignature[i];
    const serverKey = this.hmac(saltedPassword, 'Server Key');
    this.serverSignature = this.hmac(serverKey, authMessage);
    this.step = 'final-sent';
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  /** Checks server-final-message "v=<signature>"; an "e=" or a wrong signature throws. */
  verifyServerFinal(serverFinal: string): void {
    if (this.step !== 'final-sent' || !this.serverSignature) throw new ScramError('verifyServerFinal() out of order');
    const attrs = parseAttributes(serverFinal, 'server-final-message');
    if (attrs.has('e')) throw new ScramError(`the server refused the proof: ${attrs.get('e')}`);
    const signature = decodeBase64(required(attrs, 'v', 'server-final-message'), 'server signature');
    if (signature.length !== this.serverSignature.length || !timingSafeEqual(signature, this.serverSignature)) {
      throw new ScramError('the server signature is wrong: the server does not know this user\'s key (an impostor?)');
    }
    this.step = 'done';
  }

  private hmac(key: Buffer, text: string): Buffer {
    return createHmac(this.hash, key).update(text, 'utf8').digest();
  }
}

/** "a=1,b=2" -> Map; attribute names are single letters (RFC 5802 section 7). */
function parseAttributes(message: string, what: string): Map<string, string> {
  const attrs = new Map<string, string>();
  for (const part of message.split(',')) {
    const m = /^([A-Za-z])=(.*)$/s.exec(part);
    if (!m) throw new ScramError(`malformed ${what}: '${part.slice(0, 40)}' is not an attribute`);
    if (!attrs.has(m[1])) attrs.set(m[1], m[2]);
  }
  return attrs;
}

function required(attrs: Map<string, string>, name: string, what: string): string {
  const v = attrs.get(name);
  if (v === undefined || v === '') throw new ScramError(`${what} lacks its '${name}=' attribute`);
  return v;
}

function decodeBase64(text: string, what: string): Buffer {
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(text)) throw new ScramError(`the ${what} is not base64`);
  return Buffer.from(text, 'base64');
}

/** saslname: ',' and '=' are escaped as =2C and =3D. */
function escapeName(name: string): string {
  return name.replace(/=/g, '=3D').replace(/,/g, '=2C');
}

/** RFC 3454 table B.1: characters SASLprep maps to nothing. */
const MAPPED_TO_NOTHING = /[\u00AD\u034F\u1806\u180B-\u180D\u200B-\u200D\u2060\uFE00-\uFE0F\uFEFF]/g;
/** RFC 3454 table C.1.2: non-ASCII spaces, mapped to a space. */
const NON_ASCII_SPACE = /[\u00A0\u1680\u2000-\u200B\u202F\u205F\u3000]/g;
/** Control characters and other prohibited code points (C.2, C.3, C.8 subset, C.9). */
const PROHIBITED = /[\u0000-\u001F\u007F-\u009F\u06DD\u070F\u180E\u200E\u200F\u202A-\u202E\u2028\u2029\u2061-\u2063\u206A-\u206F\uE000-\uF8FF\uFFF9-\uFFFD]/;

/**
 * SASLprep (RFC 4013) as far as it matters for user names and passwords:
 * map, NFKC-normalise, refuse control characters. Plain ASCII passes
 * unchanged, so what saslpasswd2 stored matches what we send.
 */
export function saslPrep(text: string, what: string): string {
  const mapped = text.replace(NON_ASCII_SPACE, ' ').replace(MAPPED_TO_NOTHING, '').normalize('NFKC');
  if (PROHIBITED.test(mapped)) throw new ScramError(`the ${what} contains a control or prohibited character`);
  return mapped;
}
