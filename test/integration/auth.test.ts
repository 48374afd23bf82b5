/**
 * Issue 4 acceptance, AUTH: the guard relays the SASL exchange (RFC 4954) to a backend that checks
 * credentials (smtp-server with onAuth). A good password lets the client relay; a bad one gets the
 * backend's 535 and then 550 5.7.1 at RCPT with nothing reaching the backend. AUTH is not offered
 * before TLS on an mx listener (RFC 4954 §4: 530 5.7.0 must issue STARTTLS). The log holds the user
 * name and never the password.
 * All of it twice: one backend connection per client, and pooled mode (the guard greets and answers
 * EHLO itself; AUTH takes a pre-opened backend session out of the pool for that client for good),
 * where what the backend saw is searched across all its connections since the test began.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { MODES, since } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { TlsDialog } from '../helpers/tls-dialog.js';
import { withTimeout } from '../helpers/with-timeout.js';

const STRANGER = '127.0.0.9';
const OFFICE = '127.0.0.5'; // may AUTH without TLS (plaintextAuthNetworks)
const USER = 'alice';
const PASSWORD = 'Tr0ub4dor&3-secret';
const BAD_PASSWORD = 'wrong-Pa55word!';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const plain = (user: string, pass: string) => b64(`\0${user}\0${pass}`);

for (const { mode, config } of MODES) describe(`${mode} mode`, () => {
  let backend: RecordingBackend;
  let g: StartedGuard;
  const backendAuths: Array<{ method: string; username: string | undefined; ok: boolean }> = [];

  beforeAll(async () => {
    backend = await startRecordingBackend({
      server: {
        authMethods: ['PLAIN', 'LOGIN'],
        allowInsecureAuth: true, // the guard↔backend leg is plaintext here
        onMailFrom(address, _session, callback) {
          // A backend's own refusal of a sender (e.g. a SIZE above its limit), for the pooled cases below.
          if (address.address.startsWith('refused@')) return callback(Object.assign(new Error('sender refused'), { responseCode: 550 }));
          callback();
        },
        onAuth(auth, _session, callback) {
          const ok = auth.username === USER && auth.password === PASSWORD;
          backendAuths.push({ method: auth.method, username: auth.username, ok });
          if (ok) callback(null, { user: USER });
          else callback(new Error('Invalid username or password'));
        },
      },
    });
    g = await startGuard({
      backendPort: backend.port,
      config: {
        timeouts: { drain: '1s' },
        listeners: [{ name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', starttls: true, plaintextAuthNetworks: [`${OFFICE}/32`] }],
        ...config,
      },
    });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
  });

  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  async function plainSession(from = STRANGER): Promise<{ d: Dialog; ehlo: string[] }> {
    const d = await Dialog.connect(g.port, { localAddress: from });
    expect((await d.reply()).code).toBe(220);
    const ehlo = await d.cmd('EHLO client.test');
    expect(ehlo.code).toBe(250);
    return { d, ehlo: ehlo.lines };
  }

  async function tlsSession(): Promise<{ t: TlsDialog; ehlo: string[] }> {
    const { d } = await plainSession();
    expect((await d.cmd('STARTTLS')).code).toBe(220);
    const t = await TlsDialog.upgrade(d.socket);
    const ehlo = await t.cmd('EHLO client.test');
    expect(ehlo.code).toBe(250);
    return { t, ehlo: ehlo.lines };
  }

  /** Relay one message to a foreign domain through an authenticated session; returns the RCPT reply. */
  async function relayForeign(t: TlsDialog | Dialog, tag: string): Promise<number> {
    expect((await t.cmd(`MAIL FROM:<${USER}@example.com>`)).code).toBe(250);
    const rcpt = await t.cmd(`RCPT TO:<friend-${tag}@elsewhere.test>`);
    if (rcpt.code !== 250) return rcpt.code;
    expect((await t.cmd('DATA')).code).toBe(354);
    const before = backend.messages.length;
    expect((await t.cmd(`Subject: ${tag}\r\n\r\nbody ${tag}\r\n.`)).code).toBe(250);
    expect(backend.messages.length).toBe(before + 1);
    expect(backend.messages.at(-1)!.rcptTo).toEqual([`friend-${tag}@elsewhere.test`]);
    return rcpt.code;
  }

  async function authCount(result: string): Promise<number> {
    const m = await g.guard.metrics.auth.get();
    return m.values.find((v) => v.labels.result === result)?.value ?? 0;
  }

  describe('AUTH before TLS on an mx listener', () => {
    test('plaintext EHLO offers STARTTLS but no AUTH; AUTH → 530 5.7.0 and nothing reaches the backend', async () => {
      const seen = since(backend);
      const { d, ehlo } = await plainSession();
      expect(ehlo).toContain('STARTTLS');
      expect(ehlo.some((l) => /^AUTH\b/i.test(l))).toBe(false);
      const r = await d.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`);
      expect(r.code).toBe(530);
      expect(r.text).toContain('5.7.0');
      expect(r.text).toMatch(/STARTTLS/i);
      expect((await d.cmd('MAIL FROM:<x@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<victim@elsewhere.test>')).code).toBe(550);
      await d.cmd('QUIT');
      d.close();
      // The MAIL went through (so the tap saw this session); the AUTH and the refused RCPT did not.
      expect(seen().filter((l) => /^AUTH|^MAIL|^RCPT/i.test(l))).toEqual(['MAIL FROM:<x@elsewhere.test>']);
    });
  });

  describe('AUTH over STARTTLS, relayed to the backend', () => {
    test('EHLO after TLS offers the backend mechanisms', async () => {
      const { t, ehlo } = await tlsSession();
      const auth = ehlo.find((l) => /^AUTH /i.test(l));
      expect(auth?.split(/\s+/).slice(1).sort()).toEqual(['LOGIN', 'PLAIN']);
      await t.cmd('QUIT');
      t.close();
    });

    test('PLAIN with an initial response → 235, then relay to a foreign domain works', async () => {
      const success = await authCount('success');
      const { t } = await tlsSession();
      const r = await t.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`);
      expect(r.code).toBe(235);
      expect(await relayForeign(t, 'plain-ir')).toBe(250);
      await t.cmd('QUIT');
      t.close();
      expect(await authCount('success')).toBe(success + 1);
    });

    test('PLAIN without an initial response: 334 continuation, then 235', async () => {
      const { t } = await tlsSession();
      const c = await t.cmd('AUTH PLAIN');
      expect(c.code).toBe(334);
      expect((await t.cmd(plain(USER, PASSWORD))).code).toBe(235);
      expect(await relayForeign(t, 'plain-334')).toBe(250);
      await t.cmd('QUIT');
      t.close();
    });

    test('LOGIN multi-step exchange passes through intact', async () => {
      const { t } = await tlsSession();
      const c1 = await t.cmd('AUTH LOGIN');
      expect(c1.code).toBe(334);
      expect(Buffer.from(c1.lines[0]!, 'base64').toString()).toMatch(/user/i);
      const c2 = await t.cmd(b64(USER));
      expect(c2.code).toBe(334);
      expect(Buffer.from(c2.lines[0]!, 'base64').toString()).toMatch(/pass/i);
      expect((await t.cmd(b64(PASSWORD))).code).toBe(235);
      expect(backendAuths.at(-1)).toEqual({ method: 'LOGIN', username: USER, ok: true });
      expect(await relayForeign(t, 'login')).toBe(250);
      await t.cmd('QUIT');
      t.close();
    });

    test('bad password → 535 from the backend, then 550 5.7.1 at RCPT and nothing reaches the backend', async () => {
      const failure = await authCount('failure');
      const { t } = await tlsSession();
      const r = await t.cmd(`AUTH PLAIN ${plain(USER, BAD_PASSWORD)}`);
      expect(r.code).toBe(535);
      expect(backendAuths.at(-1)).toEqual({ method: 'PLAIN', username: USER, ok: false });
      const seen = since(backend);
      expect((await t.cmd('MAIL FROM:<someone@elsewhere.test>')).code).toBe(250);
      const rcpt = await t.cmd('RCPT TO:<victim@elsewhere.test>');
      expect(rcpt.code).toBe(550);
      expect(rcpt.text).toContain('5.7.1');
      expect((await t.cmd('DATA')).code).toBeGreaterThanOrEqual(500);
      await t.cmd('QUIT');
      t.close();
      expect(seen().filter((l) => /^MAIL|^RCPT|^DATA/i.test(l))).toEqual(['MAIL FROM:<someone@elsewhere.test>']);
      expect(backend.lines().join('\n')).not.toContain('victim@elsewhere.test');
      expect(await authCount('failure')).toBe(failure + 1);
    });

    test('LOGIN with a bad password and a "*" cancel are both failures, never a session', async () => {
      const { t } = await tlsSession();
      expect((await t.cmd('AUTH LOGIN')).code).toBe(334);
      expect((await t.cmd(b64(USER))).code).toBe(334);
      expect((await t.cmd(b64(BAD_PASSWORD))).code).toBe(535);
      expect((await t.cmd('AUTH LOGIN')).code).toBe(334);
      const cancel = await t.cmd('*');
      expect(cancel.code).toBe(501); // RFC 4954 §4: "*" cancels with 501
      expect((await t.cmd('MAIL FROM:<x@elsewhere.test>')).code).toBe(250);
      expect((await t.cmd('RCPT TO:<victim@elsewhere.test>')).code).toBe(550);
      await t.cmd('QUIT');
      t.close();
    });
  });

  describe('AUTH sequencing', () => {
    test('after STARTTLS, AUTH before the new EHLO → 503 and nothing reaches the backend (RFC 3207 §4.2)', async () => {
      const { d } = await plainSession();
      expect((await d.cmd('STARTTLS')).code).toBe(220);
      const t = await TlsDialog.upgrade(d.socket);
      const seen = since(backend);
      const r = await t.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`);
      expect(r.code).toBe(503);
      expect((await t.cmd('EHLO client.test')).code).toBe(250);
      expect((await t.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code).toBe(235);
      expect((await t.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code).toBe(503); // RFC 4954 §4: once only
      await t.cmd('QUIT');
      t.close();
      // Only the AUTH after the new EHLO reached the backend.
      expect(seen().filter((l) => /^AUTH/i.test(l))).toEqual([`AUTH PLAIN ${plain(USER, PASSWORD)}`]);
    });

    test('an over-long SASL response ends the exchange on both sides: 500, and the next command is a command again', async () => {
      const { t } = await tlsSession();
      expect((await t.cmd('AUTH PLAIN')).code).toBe(334);
      const long = await t.cmd('A'.repeat(13_000)); // over RFC 4954's 12288 octets
      expect(long.code).toBe(500);
      expect((await t.cmd('NOOP')).text).toBe('250 2.0.0 OK');
      expect((await t.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code).toBe(235);
      expect((await t.cmd(`MAIL FROM:<${USER}@example.com>`)).code).toBe(250);
      await t.cmd('QUIT');
      t.close();
    });

    test('AUTH pipelined with MAIL and RCPT: the barrier holds the rest until the backend answered', async () => {
      const { t } = await tlsSession();
      t.send(`AUTH PLAIN ${plain(USER, PASSWORD)}\r\nMAIL FROM:<${USER}@example.com>\r\nRCPT TO:<pipelined@elsewhere.test>\r\n`);
      expect((await t.reply()).code).toBe(235);
      expect((await t.reply()).code).toBe(250);
      expect((await t.reply()).code).toBe(250);
      await t.cmd('RSET');
      await t.cmd('QUIT');
      t.close();
    });
  });

  describe('an authenticated backend session', () => {
    /** Later clients, more than a pool holds, each send one message; none may go over the backend connection that carried `tag`'s AUTH. */
    async function laterClientsAvoid(tag: string): Promise<void> {
      const later = Array.from({ length: 6 }, (_, i) => `later-${tag}-${i}@elsewhere.test`);
      for (const sender of later) {
        const { d } = await plainSession();
        expect((await d.cmd(`MAIL FROM:<${sender}>`)).code).toBe(250);
        expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
        expect((await d.cmd('DATA')).code).toBe(354);
        expect((await d.cmd(`Subject: later\r\n\r\nfrom ${sender}\r\n.`)).code).toBe(250);
        expect((await d.cmd('QUIT')).code).toBe(221);
        d.close();
      }
      const wires = backend.connections.map((c) => Buffer.concat(c).toString('latin1'));
      const authed = wires.filter((w) => w.includes(`friend-${tag}@`));
      expect(authed).toHaveLength(1);
      expect(authed[0]).toMatch(/^AUTH /m);
      for (const sender of later) {
        const carriers = wires.filter((w) => w.includes(`MAIL FROM:<${sender}>`));
        expect(carriers, sender).toHaveLength(1);
        expect(carriers[0], sender).not.toMatch(/^AUTH /m);
      }
    }

    test('never carries another client: later clients, more than a pool holds, all send over backend connections that saw no AUTH', async () => {
      const { t } = await tlsSession();
      expect((await t.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code).toBe(235);
      expect(await relayForeign(t, 'authed-first')).toBe(250);
      expect((await t.cmd('QUIT')).code).toBe(221);
      await t.waitClosed();
      await laterClientsAvoid('authed-first');
    });

    test('nor when AUTH follows a MAIL the backend refused with RCPT pipelined behind it (the session held then must not go back)', async () => {
      const { d } = await plainSession(OFFICE);
      d.send('MAIL FROM:<refused@elsewhere.test>\r\nRCPT TO:<x@example.com>\r\n');
      expect((await d.reply()).code).toBe(550);
      expect((await d.reply()).code).toBeGreaterThanOrEqual(500);
      expect((await d.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code).toBe(235);
      expect(await relayForeign(d, 'authed-after-refusal')).toBe(250);
      expect((await d.cmd('QUIT')).code).toBe(221);
      await d.waitClosed();
      await laterClientsAvoid('authed-after-refusal');
    });
  });

  describe('plaintext AUTH from plaintextAuthNetworks', () => {
    test('EHLO without TLS offers AUTH to the office network, and AUTH LOGIN works there', async () => {
      const { d, ehlo } = await plainSession(OFFICE);
      expect(ehlo.some((l) => /^AUTH /i.test(l))).toBe(true);
      expect((await d.cmd('AUTH LOGIN')).code).toBe(334);
      expect((await d.cmd(b64(USER))).code).toBe(334);
      expect((await d.cmd(b64(PASSWORD))).code).toBe(235);
      expect(await relayForeign(d, 'office')).toBe(250);
      await d.cmd('QUIT');
      d.close();
    });
  });

  describe('nodemailer SMTPConnection as a real client', () => {
    test('STARTTLS + AUTH (PLAIN) + relay to a foreign domain', async () => {
      const conn = new SMTPConnection({
        port: g.port,
        host: '127.0.0.1',
        localAddress: STRANGER,
        secure: false,
        requireTLS: true,
        tls: { rejectUnauthorized: false },
        connectionTimeout: 5000,
        greetingTimeout: 5000,
        socketTimeout: 5000,
      });
      conn.on('error', () => undefined);
      await withTimeout(new Promise<void>((resolve, reject) => conn.connect((err?: Error) => (err ? reject(err) : resolve()))), 5000, 'connect');
      expect(conn.secure).toBe(true);
      await withTimeout(
        new Promise<void>((resolve, reject) => conn.login({ user: USER, pass: PASSWORD }, (err?: Error) => (err ? reject(err) : resolve()))),
        5000,
        'login',
      );
      const before = backend.messages.length;
      const info = await withTimeout(
        new Promise<{ accepted: string[] }>((resolve, reject) =>
          conn.send({ from: `${USER}@example.com`, to: ['pal@far-away.test'] }, 'Subject: nm\r\n\r\nnodemailer auth body\r\n', (err, i) =>
            err ? reject(err) : resolve(i as { accepted: string[] }),
          ),
        ),
        5000,
        'send',
      );
      expect(info.accepted).toEqual(['pal@far-away.test']);
      expect(backend.messages.length).toBe(before + 1);
      expect(backend.messages.at(-1)!.rcptTo).toEqual(['pal@far-away.test']);
      conn.quit();
      conn.close();
    });

    test('nodemailer with a bad password is refused', async () => {
      const conn = new SMTPConnection({ port: g.port, host: '127.0.0.1', localAddress: STRANGER, requireTLS: true, tls: { rejectUnauthorized: false } });
      conn.on('error', () => undefined);
      await withTimeout(new Promise<void>((resolve, reject) => conn.connect((err?: Error) => (err ? reject(err) : resolve()))), 5000, 'connect');
      const err = await withTimeout(
        new Promise<Error | undefined>((resolve) => conn.login({ user: USER, pass: BAD_PASSWORD }, (e?: Error) => resolve(e))),
        5000,
        'login',
      );
      expect((err as { responseCode?: number } | undefined)?.responseCode).toBe(535);
      conn.close();
    });
  });

  describe('logs', () => {
    test('hold the user name and never a password nor the base64 that carries it', () => {
      const text = g.logText();
      const authLines = g.logs.filter((l) => l.msg === 'authenticated');
      expect(authLines.length).toBeGreaterThanOrEqual(4);
      expect(authLines.every((l) => l.authUser === USER)).toBe(true);
      expect(g.logs.some((l) => l.msg === 'authentication failed' && l.authUser === USER)).toBe(true);
      for (const secret of [
        PASSWORD,
        BAD_PASSWORD,
        b64(PASSWORD),
        b64(BAD_PASSWORD),
        plain(USER, PASSWORD),
        plain(USER, BAD_PASSWORD),
        b64(`${USER}\0${PASSWORD}`),
        b64(`\0${USER}\0${PASSWORD}`).slice(4, 24),
      ]) {
        expect(text, `log contains ${secret}`).not.toContain(secret);
      }
      expect(text).toContain(USER);
    });
  });

  describe('failed AUTH feeds the rate limiter', () => {
    test('a password guesser is banned after the limit; the next connection is refused', async () => {
      const guard = await startGuard({
        backendPort: backend.port,
        rules: {
          limits: {
            enabled: true,
            prefixV4: 24,
            prefixV6: 64,
            limits: [{ id: 'auth-failures-per-ip', event: 'auth-failure', key: 'ip', limit: 2, window: '15m', action: 'ban', ban: '1h', maxBan: '24h', exemptTrusted: true }],
          },
        },
        config: { ...config, timeouts: { drain: '1s' }, listeners: [{ name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', plaintextAuthNetworks: ['127.0.0.0/8'] }] },
      });
      try {
        const guesser = '127.0.0.77';
        const d = await Dialog.connect(guard.port, { localAddress: guesser });
        expect((await d.reply()).code).toBe(220);
        expect((await d.cmd('EHLO guesser.test')).code).toBe(250);
        const codes: number[] = [];
        for (let i = 0; i < 5 && !d.closed; i++) {
          const r = await d.cmd(`AUTH PLAIN ${plain(USER, `guess-${i}`)}`).catch(() => undefined);
          if (!r) break;
          codes.push(r.code);
        }
        await d.waitClosed();
        expect(codes.slice(0, 2)).toEqual([535, 535]);
        expect(codes.length).toBeLessThanOrEqual(4);
        expect(codes.at(-1)).toBeGreaterThanOrEqual(400);
        const again = await Dialog.connect(guard.port, { localAddress: guesser });
        const r = await again.reply();
        expect([421, 554]).toContain(r.code);
        await again.waitClosed();
        // A good password from elsewhere still works.
        const ok = await Dialog.connect(guard.port, { localAddress: '127.0.0.78' });
        expect((await ok.reply()).code).toBe(220);
        expect((await ok.cmd('EHLO ok.test')).code).toBe(250);
        expect((await ok.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code).toBe(235);
        await ok.cmd('QUIT');
        ok.close();
        expect(guard.logText()).not.toContain('guess-1');
      } finally {
        await guard.stop();
      }
    });
  });
});
