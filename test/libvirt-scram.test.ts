/**
 * SCRAM client (lib/libvirt/scram.ts) against the published exchanges of
 * RFC 7677 (SCRAM-SHA-256) and RFC 5802 (SCRAM-SHA-1), and against servers
 * that lie or send garbage: each must be refused with a ScramError, and no
 * error may contain the password.
 */
import test from 'ava';
import { SCRAM_MAX_ITERATIONS, ScramClient, ScramError, saslPrep } from '../lib/libvirt/scram.js';

const RFC7677 = {
  nonce: 'rOprNGfwEbeRWgbNEkqO',
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal: 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
};

const RFC5802 = {
  nonce: 'fyko+d2lbbFgONRv9qkxdawL',
  clientFirst: 'n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL',
  serverFirst: 'r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096',
  clientFinal: 'c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=',
  serverFinal: 'v=rmF9pqV8S7suAoZWja4dJRkFsKQ=',
};

function rfc7677Client(password = 'pencil'): ScramClient {
  return new ScramClient({ username: 'user', password, nonce: RFC7677.nonce });
}

test('SCRAM-SHA-256: the RFC 7677 exchange, byte for byte, and the server signature verifies', (t) => {
  const c = rfc7677Client();
  t.is(c.mechanism, 'SCRAM-SHA-256');
  t.is(c.clientFirst(), RFC7677.clientFirst);
  t.is(c.clientFinal(RFC7677.serverFirst), RFC7677.clientFinal);
  t.false(c.done);
  c.verifyServerFinal(RFC7677.serverFinal);
  t.true(c.done);
});

test('SCRAM-SHA-1: the RFC 5802 exchange', (t) => {
  const c = new ScramClient({ username: 'user', password: 'pencil', hash: 'sha1', nonce: RFC5802.nonce });
  t.is(c.mechanism, 'SCRAM-SHA-1');
  t.is(c.clientFirst(), RFC5802.clientFirst);
  t.is(c.clientFinal(RFC5802.serverFirst), RFC5802.clientFinal);
  c.verifyServerFinal(RFC5802.serverFinal);
  t.true(c.done);
});

test('a wrong password gives another proof, and the real server signature no longer verifies', (t) => {
  const c = rfc7677Client('pencil2');
  c.clientFirst();
  t.not(c.clientFinal(RFC7677.serverFirst), RFC7677.clientFinal);
  const e = t.throws(() => c.verifyServerFinal(RFC7677.serverFinal), { instanceOf: ScramError });
  t.regex(e!.message, /server signature is wrong/);
  t.false(e!.message.includes('pencil2'));
  t.false(c.done);
});

test('random nonces differ per client and are printable without commas', (t) => {
  const a = new ScramClient({ username: 'u', password: 'p' }).clientFirst();
  const b = new ScramClient({ username: 'u', password: 'p' }).clientFirst();
  t.not(a, b);
  for (const m of [a, b]) t.regex(m, /^n,,n=u,r=[\x21-\x2b\x2d-\x7e]{20,}$/);
});

test('user names escape "," and "=" as =2C and =3D', (t) => {
  const c = new ScramClient({ username: 'a,b=c', password: 'p', nonce: 'abc' });
  t.is(c.clientFirst(), 'n,,n=a=2Cb=3Dc,r=abc');
});

test('servers that lie or send garbage are refused', (t) => {
  const base = RFC7677.serverFirst;
  const cases: [string, RegExp][] = [
    ['r=someoneElsesNonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096', /nonce does not extend ours/],
    [`r=${RFC7677.nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`, /nonce does not extend ours/],
    [base.replace(',i=4096', ''), /lacks its 'i=' attribute/],
    [base.replace('s=W22ZaJ0SNY7soEsUEjb6gQ==,', ''), /lacks its 's=' attribute/],
    [base.replace('i=4096', 'i=0'), /bad iteration count/],
    [base.replace('i=4096', 'i=-5'), /bad iteration count/],
    [base.replace('i=4096', `i=${SCRAM_MAX_ITERATIONS + 1}`), /more than/],
    [base.replace('W22ZaJ0SNY7soEsUEjb6gQ==', 'not*base64'), /salt is not base64/],
    [`m=ext,${base}`, /extension/],
    ['e=unknown-user', /refused the exchange: unknown-user/],
    ['garbage', /not an attribute/],
  ];
  for (const [serverFirst, message] of cases) {
    const c = rfc7677Client();
    c.clientFirst();
    t.throws(() => c.clientFinal(serverFirst), { instanceOf: ScramError, message }, serverFirst);
  }
});

test('a server-final with an error, a wrong or a malformed signature is refused', (t) => {
  const cases: [string, RegExp][] = [
    ['e=invalid-proof', /refused the proof: invalid-proof/],
    ['v=AAAA', /server signature is wrong/],
    ['v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=', /server signature is wrong/],
    ['v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4', /not base64/],
    ['x=1', /lacks its 'v=' attribute/],
  ];
  for (const [serverFinal, message] of cases) {
    const c = rfc7677Client();
    c.clientFirst();
    c.clientFinal(RFC7677.serverFirst);
    t.throws(() => c.verifyServerFinal(serverFinal), { instanceOf: ScramError, message }, serverFinal);
    t.false(c.done);
  }
});

test('steps out of order are refused', (t) => {
  const c = rfc7677Client();
  t.throws(() => c.clientFinal(RFC7677.serverFirst), { instanceOf: ScramError, message: /out of order/ });
  t.throws(() => c.verifyServerFinal(RFC7677.serverFinal), { instanceOf: ScramError, message: /out of order/ });
  c.clientFirst();
  t.throws(() => c.clientFirst(), { instanceOf: ScramError, message: /twice/ });
});

test('SASLprep: ASCII unchanged, non-ASCII spaces mapped, soft hyphens dropped, control characters refused', (t) => {
  t.is(saslPrep('Pa ss,=word!', 'password'), 'Pa ss,=word!');
  t.is(saslPrep('a\u00A0b', 'password'), 'a b');
  t.is(saslPrep('I\u00ADX', 'password'), 'IX');
  t.is(saslPrep('\u2168', 'password'), 'IX');
  t.throws(() => saslPrep('bad\u0007', 'password'), { instanceOf: ScramError, message: /password contains a control/ });
  t.throws(() => new ScramClient({ username: '', password: 'p' }), { instanceOf: ScramError, message: /user name is empty/ });
});
