/**
 * Issue 16 item 1, guard-side proof: with `auth.verify: ldap` relay rights rest on the guard's own
 * LDAP bind as the user (a real slapd), never on the backend's 235. The backend here answers 235 to
 * anything (and the canary has tripped), yet a user with the right directory password relays
 * (PLAIN and LOGIN), while a wrong password, an unknown login, an empty password and a directory
 * that is down all get 451 4.7.0 (auth-unproven). The password never reaches the log. Both modes.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { MODES, withMode } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { makeCertificate } from '../helpers/certs.js';
import { startTlsScriptedBackend, type TlsScriptedBackend } from '../helpers/tls-scripted-backend.js';
import { SLAPD_ROOT_DN, SLAPD_ROOT_PW, SLAPD_SUFFIX, BASE_LDIF, startSlapd, type Slapd } from '../helpers/slapd.js';

const STRANGER = '127.0.0.9';
const PASSWORD_ENV = 'RG_TEST_LDAP_PW';
const ALICE_PW = 'Alice-dir3ctory-pw';
const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

const SEED = `${BASE_LDIF}
dn: uid=alice,ou=people,${SLAPD_SUFFIX}
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Alice
mail: alice@example.com
userPassword: ${ALICE_PW}

dn: uid=nopw,ou=people,${SLAPD_SUFFIX}
objectClass: inetOrgPerson
uid: nopw
cn: No Password
sn: Nopw
`;

let slapd: Slapd;
let cert: { key: string; cert: string };

beforeAll(async () => {
  slapd = await startSlapd({ seedLdif: SEED });
  cert = await makeCertificate({ commonName: 'localhost' });
}, 30_000);
afterAll(async () => {
  await slapd?.close();
});

async function session(port: number): Promise<Dialog> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}

async function foreignRcpt(d: Dialog): Promise<string> {
  expect((await d.cmd('MAIL FROM:<alice@example.com>')).code).toBe(250);
  const r = (await d.cmd('RCPT TO:<pal@elsewhere.test>')).text;
  await d.cmd('RSET');
  return r;
}

for (const { mode, config } of MODES) describe(`${mode} mode`, () => {
  let backend: TlsScriptedBackend;
  let g: StartedGuard;

  beforeAll(async () => {
    backend = await startTlsScriptedBackend({ key: cert.key, cert: cert.cert, starttls: false, authMechanisms: ['PLAIN', 'LOGIN'], auth: 'any' });
    g = await startGuard({
      backendPort: backend.port,
      env: { [PASSWORD_ENV]: SLAPD_ROOT_PW },
      rules: {
        recipientValidation: {
          default: 'off',
          ldap: { url: slapd.url, bindDn: SLAPD_ROOT_DN, bindPasswordEnv: PASSWORD_ENV, baseDn: SLAPD_SUFFIX, timeout: '2s' },
        },
      },
      config: withMode(config, {
        timeouts: { drain: '1s' },
        listeners: [{ name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', plaintextAuthNetworks: [`${STRANGER}/32`] }],
        authCanary: { enabled: true, interval: '15m' },
        auth: { verify: 'ldap', ldapUserFilter: '(|(uid={user})(mail={user}))' },
      }),
    });
  });
  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  test('the backend takes any login (the canary tripped), but the right directory password still relays: PLAIN, by uid and by mail', async () => {
    expect(g.guard.authCanary.snapshot().state).toBe('accepted');
    for (const login of ['alice', 'alice@example.com']) {
      const d = await session(g.port);
      expect((await d.cmd(`AUTH PLAIN ${b64(`\0${login}\0${ALICE_PW}`)}`)).code).toBe(235);
      expect(await foreignRcpt(d), login).toMatch(/^250/);
      d.close();
    }
    expect(g.logs.filter((l) => l.msg === 'authenticated').at(-1)).toMatchObject({ relay: true, proof: 'ldap' });
  });

  test('LOGIN with the right password relays too', async () => {
    const d = await session(g.port);
    expect((await d.cmd('AUTH LOGIN')).code).toBe(334);
    expect((await d.cmd(b64('alice'))).code).toBe(334);
    expect((await d.cmd(b64(ALICE_PW))).code).toBe(235);
    expect(await foreignRcpt(d)).toMatch(/^250/);
    d.close();
  });

  test.each([
    { name: 'a wrong password', user: 'alice', pass: 'not-the-password' },
    { name: 'an unknown login', user: 'mallory', pass: 'whatever-pw' },
    { name: 'an entry without a password', user: 'nopw', pass: 'anything-at-all' },
    { name: 'an empty password (an unauthenticated bind would "succeed")', user: 'alice', pass: '' },
    { name: 'acting as another user (PLAIN authzid)', user: 'alice', pass: ALICE_PW, authzid: 'postmaster' },
  ])('$name: the backend says 235, the guard refuses relay with 451 4.7.0 (auth-unproven)', async ({ user, pass, authzid }) => {
    const d = await session(g.port);
    expect((await d.cmd(`AUTH PLAIN ${b64(`${authzid ?? ''}\0${user}\0${pass}`)}`)).code).toBe(235);
    expect(await foreignRcpt(d)).toMatch(/^451 4\.7\.0/);
    d.close();
    expect(g.logs.filter((l) => l.msg === 'authenticated').at(-1)).toMatchObject({ relay: false });
  });

  test('the directory is down: no relay (451 4.7.0), and relay again once it is back', async () => {
    await slapd.stop();
    try {
      const d = await session(g.port);
      expect((await d.cmd(`AUTH PLAIN ${b64(`\0alice\0${ALICE_PW}`)}`)).code).toBe(235);
      expect(await foreignRcpt(d)).toMatch(/^451 4\.7\.0/);
      d.close();
      expect(String(g.logs.filter((l) => l.msg === 'authenticated').at(-1)!.reason)).toContain('could not be asked');
    } finally {
      await slapd.start();
    }
    const d = await session(g.port);
    expect((await d.cmd(`AUTH PLAIN ${b64(`\0alice\0${ALICE_PW}`)}`)).code).toBe(235);
    expect(await foreignRcpt(d)).toMatch(/^250/);
    d.close();
  });

  test('no password, nor the base64 that carries it, ever reaches the log', () => {
    const text = g.logText();
    expect(text).not.toContain(ALICE_PW);
    expect(text).not.toContain(b64(ALICE_PW));
    expect(text).not.toContain(b64(`\0alice\0${ALICE_PW}`));
  });
});
