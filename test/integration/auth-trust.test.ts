/**
 * Issue 16 item 1: AUTH trust does not rest on the backend's word alone. Through the real guard,
 * in both backend modes, in front of a scripted backend:
 *  - one that answers 235 to any credentials (Exchange with a Guest account): the auth canary
 *    trips at start, junk credentials after STARTTLS get their 235 but no relay (451 4.7.0,
 *    rule auth-unproven), the canary is logged as an error once, counted, shown in /readyz, the
 *    admin API and `relay-guard ctl auth-canary`; once the backend is fixed a canary run clears it;
 *  - an honest one: the canary is refused and an authenticated user relays;
 *  - per-listener `auth: pass | off` and the authRelayUsers allow-list.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { MODES, withMode } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { TlsDialog, type TlsDialog as TlsDialogType } from '../helpers/tls-dialog.js';
import { makeCertificate } from '../helpers/certs.js';
import { startTlsScriptedBackend, type TlsScriptedBackend } from '../helpers/tls-scripted-backend.js';
import { runCtl } from '../../src/cli/ctl.js';

const STRANGER = '127.0.0.9';
const PASSWORD = 'C0rrect-Horse-Battery';
const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const plainAuth = (user: string, pass: string) => `AUTH PLAIN ${b64(`\0${user}\0${pass}`)}`;

type AnyDialog = Dialog | TlsDialogType;

/** STARTTLS, EHLO, AUTH PLAIN on the mx listener; resolves with the dialog and the AUTH reply. */
async function starttlsAuth(port: number, user: string, pass: string): Promise<{ t: AnyDialog; code: number; ehlo: string[] }> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  expect((await d.cmd('STARTTLS')).code).toBe(220);
  const t = await TlsDialog.upgrade(d.socket);
  const ehlo = await t.cmd('EHLO client.test');
  const r = await t.cmd(plainAuth(user, pass));
  return { t, code: r.code, ehlo: ehlo.lines };
}

/** A plaintext session on a listener with plaintextAuthNetworks. */
async function plainSession(port: number): Promise<{ d: Dialog; ehlo: string[] }> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  expect((await d.reply()).code).toBe(220);
  const ehlo = await d.cmd('EHLO client.test');
  expect(ehlo.code).toBe(250);
  return { d, ehlo: ehlo.lines };
}

async function relayAttempt(t: AnyDialog, rcpt = 'victim@elsewhere.test'): Promise<{ mail: number; rcpt: string; local: number }> {
  const mail = (await t.cmd('MAIL FROM:<someone@elsewhere.test>')).code;
  const r = await t.cmd(`RCPT TO:<${rcpt}>`);
  const local = (await t.cmd('RCPT TO:<bob@example.com>')).code;
  await t.cmd('RSET');
  return { mail, rcpt: r.text, local };
}

async function metricValue(g: StartedGuard, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const m = g.guard.metrics.register.getSingleMetric(name);
  if (!m) return undefined;
  const v = (await m.get()).values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return v?.value;
}

async function ctl(g: StartedGuard, args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const a = g.guard.adminAddress()!;
  const code = await runCtl(['--admin', `127.0.0.1:${a.port}`, ...args], { stdout: (s) => (out += s), stderr: (s) => (err += s), env: {} });
  return { code, out, err };
}

let cert: { key: string; cert: string };
beforeAll(async () => {
  cert = await makeCertificate({ commonName: 'localhost' });
});

for (const { mode, config } of MODES) describe(`${mode} mode`, () => {
  describe('a backend that answers 235 to any credentials, then gets fixed', () => {
    let backend: TlsScriptedBackend;
    let g: StartedGuard;
    let open = true;

    beforeAll(async () => {
      backend = await startTlsScriptedBackend({
        key: cert.key,
        cert: cert.cert,
        starttls: false,
        authMechanisms: ['PLAIN', 'LOGIN'],
        auth: (user, pass) => open || (user === 'alice' && pass === PASSWORD),
      });
      g = await startGuard({
        backendPort: backend.port,
        config: withMode(config, {
          timeouts: { drain: '1s' },
          listeners: [{ name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', starttls: true }],
          admin: { enabled: true, address: '127.0.0.1', port: 0 },
          authCanary: { enabled: true, interval: '15m' },
        }),
      });
      expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
    });
    afterAll(async () => {
      await g?.stop();
      await backend?.close();
    });

    test('the canary ran at start with random credentials and tripped: state, metric, one error line', async () => {
      const snap = g.guard.authCanary.snapshot();
      expect(snap.state).toBe('accepted');
      expect(snap.accepted).toBe(true);
      const probe = backend.auths.find((a) => a.user.startsWith('relay-guard-canary-'));
      expect(probe?.ok).toBe(true);
      expect(await metricValue(g, 'relay_guard_auth_canary_accepted')).toBe(1);
      expect(await metricValue(g, 'relay_guard_auth_canary_runs_total', { result: 'accepted' })).toBe(1);
      const errors = g.logs.filter((l) => l.level === 50 && String(l.msg).startsWith('auth canary accepted'));
      expect(errors).toHaveLength(1);
    });

    test('junk credentials after STARTTLS: the 235 passes, relaying does not (451 4.7.0), local mail still flows', async () => {
      const before = backend.lines.length;
      const { t, code } = await starttlsAuth(g.port, 'nobody-at-all', 'junk-password');
      expect(code).toBe(235);
      const r = await relayAttempt(t);
      expect(r.mail).toBe(250);
      expect(r.rcpt).toMatch(/^451 4\.7\.0/);
      expect(r.local).toBe(250);
      await t.cmd('QUIT');
      t.close();
      // Nothing for the foreign recipient ever reached the backend.
      expect(backend.lines.slice(before).filter((l) => /^RCPT/i.test(l.line)).map((l) => l.line)).toEqual(['RCPT TO:<bob@example.com>']);
      const refused = g.logs.filter((l) => l.msg === 'rcpt refused' && l.ruleId === 'auth-unproven');
      expect(refused.length).toBeGreaterThan(0);
      const authLine = g.logs.filter((l) => l.msg === 'authenticated').at(-1)!;
      expect(authLine.relay).toBe(false);
      expect(String(authLine.reason)).toContain('auth canary');
      expect(await metricValue(g, 'relay_guard_auth_grants_total', { grant: 'unproven' })).toBeGreaterThanOrEqual(1);
    });

    test('while tripped, /readyz, GET /api/v1/auth/canary and ctl show it; another run is not logged as an error again', async () => {
      const a = g.guard.adminAddress()!;
      const ready = await fetch(`http://127.0.0.1:${a.port}/readyz`, { signal: AbortSignal.timeout(10_000) });
      const readyBody = (await ready.json()) as { authCanary?: { accepted: boolean; state: string } };
      expect(readyBody.authCanary).toMatchObject({ accepted: true, state: 'accepted' });
      const api = await fetch(`http://127.0.0.1:${a.port}/api/v1/auth/canary`, { signal: AbortSignal.timeout(10_000) });
      expect(api.status).toBe(200);
      expect(await api.json()).toMatchObject({ enabled: true, state: 'accepted', accepted: true });
      const shown = await ctl(g, ['auth-canary']);
      expect(shown.code).toBe(0);
      expect(shown.out).toContain('ACCEPTED');
      const again = await ctl(g, ['auth-canary', 'run']);
      expect(again.code).toBe(0);
      expect(again.out).toContain('ACCEPTED');
      expect(g.logs.filter((l) => l.level === 50 && String(l.msg).startsWith('auth canary accepted'))).toHaveLength(1);
      expect(await metricValue(g, 'relay_guard_auth_canary_runs_total', { result: 'accepted' })).toBe(2);
    });

    test('the backend is fixed: POST /api/v1/auth/canary is refused, AUTH relays again for the real user only', async () => {
      open = false;
      const a = g.guard.adminAddress()!;
      const res = await fetch(`http://127.0.0.1:${a.port}/api/v1/auth/canary`, { method: 'POST', signal: AbortSignal.timeout(10_000) });
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ state: 'refused', accepted: false });
      expect(await metricValue(g, 'relay_guard_auth_canary_accepted')).toBe(0);
      expect(g.logs.some((l) => l.msg === 'auth canary refused again: AUTH grants relay again')).toBe(true);

      const junk = await starttlsAuth(g.port, 'nobody-at-all', 'junk-password');
      expect(junk.code).toBe(535);
      junk.t.close();

      const { t, code } = await starttlsAuth(g.port, 'alice', PASSWORD);
      expect(code).toBe(235);
      expect((await t.cmd('MAIL FROM:<alice@example.com>')).code).toBe(250);
      expect((await t.cmd('RCPT TO:<pal@elsewhere.test>')).code).toBe(250);
      expect((await t.cmd('DATA')).code).toBe(354);
      expect((await t.cmd('Subject: roaming\r\n\r\nfrom the road\r\n.')).code).toBe(250);
      expect(backend.messages.at(-1)).toContain('from the road');
      await t.cmd('QUIT');
      t.close();
      expect(g.logs.filter((l) => l.msg === 'authenticated').at(-1)).toMatchObject({ relay: true, proof: 'backend' });
    });
  });

  describe('per-listener auth (relay, pass, off) and authRelayUsers', () => {
    let backend: TlsScriptedBackend;
    let g: StartedGuard;
    const users = new Set(['alice', 'bob', 'svc-mailer']);

    beforeAll(async () => {
      backend = await startTlsScriptedBackend({
        key: cert.key,
        cert: cert.cert,
        starttls: false,
        authMechanisms: ['PLAIN', 'LOGIN'],
        auth: (user, pass) => users.has(user) && pass === PASSWORD,
      });
      const office = [`${STRANGER}/32`];
      g = await startGuard({
        backendPort: backend.port,
        config: withMode(config, {
          timeouts: { drain: '1s' },
          listeners: [
            { name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', starttls: true, plaintextAuthNetworks: office },
            { name: 'pass', address: '127.0.0.1', port: 0, kind: 'mx', auth: 'pass', plaintextAuthNetworks: office },
            { name: 'off', address: '127.0.0.1', port: 0, kind: 'mx', auth: 'off', plaintextAuthNetworks: office },
          ],
          authRelayUsers: ['alice', 'SVC-*'],
          authCanary: { enabled: true, interval: '15m' },
        }),
      });
    });
    afterAll(async () => {
      await g?.stop();
      await backend?.close();
    });

    test('an honest backend refuses the canary; listed users relay (exact name and glob, any case)', async () => {
      expect(g.guard.authCanary.snapshot().state).toBe('refused');
      expect(await metricValue(g, 'relay_guard_auth_canary_accepted')).toBe(0);
      for (const user of ['alice', 'svc-mailer']) {
        const { d } = await plainSession(g.port);
        expect((await d.cmd(plainAuth(user, PASSWORD))).code).toBe(235);
        const r = await relayAttempt(d);
        expect(r.rcpt, user).toMatch(/^250/);
        d.close();
      }
    });

    test('a user outside authRelayUsers authenticates but may not relay (550 5.7.1 relay-denied)', async () => {
      const { d } = await plainSession(g.port);
      expect((await d.cmd(plainAuth('bob', PASSWORD))).code).toBe(235);
      const r = await relayAttempt(d);
      expect(r.rcpt).toMatch(/^550 5\.7\.1/);
      expect(r.local).toBe(250);
      d.close();
      expect(g.logs.filter((l) => l.msg === 'authenticated').at(-1)).toMatchObject({ authUser: 'bob', relay: false, reason: 'user not in authRelayUsers' });
      expect(await metricValue(g, 'relay_guard_auth_grants_total', { grant: 'not_listed' })).toBeGreaterThanOrEqual(1);
    });

    test('auth: pass — AUTH reaches the backend and succeeds, but grants no relay', async () => {
      const before = backend.auths.length;
      const { d, ehlo } = await plainSession(g.guard.address('pass').port);
      expect(ehlo.some((l) => /^AUTH /.test(l))).toBe(true);
      expect((await d.cmd(plainAuth('alice', PASSWORD))).code).toBe(235);
      expect(backend.auths.slice(before)).toEqual([expect.objectContaining({ user: 'alice', ok: true })]);
      const r = await relayAttempt(d);
      expect(r.rcpt).toMatch(/^550 5\.7\.1/);
      expect(r.local).toBe(250);
      d.close();
      expect(await metricValue(g, 'relay_guard_auth_grants_total', { grant: 'pass' })).toBeGreaterThanOrEqual(1);
    });

    test('auth: off — AUTH is not offered and the verb is refused; the backend never sees it', async () => {
      const before = backend.lines.length;
      const { d, ehlo } = await plainSession(g.guard.address('off').port);
      expect(ehlo.some((l) => /^AUTH\b/i.test(l))).toBe(false);
      const r = await d.cmd(plainAuth('alice', PASSWORD));
      expect(r.code).toBe(502);
      expect(r.text).toContain('5.5.1');
      expect((await relayAttempt(d)).rcpt).toMatch(/^550 5\.7\.1/);
      d.close();
      expect(backend.lines.slice(before).filter((l) => /^AUTH/i.test(l.line))).toEqual([]);
    });
  });
});
