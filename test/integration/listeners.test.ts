/**
 * Issue 4 acceptance, listeners: one guard with four listeners at once — mx, submission, smtps and
 * an internal mx marked `relay: allow`. Submission refuses MAIL before AUTH (RFC 6409 §4.3, 530
 * 5.7.0); the internal listener lets any client relay but never-relay networks still apply; smtps is
 * TLS from the first byte (RFC 8314 §3).
 * All of it twice: one backend connection per client, and pooled mode (the guard greets and answers
 * EHLO itself and lends a pre-opened backend session from MAIL to end-of-data; AUTH keeps one for
 * that client for good), where what the backend saw is searched across all its connections since
 * the test began.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { makeCertificate } from '../helpers/certs.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { MODES, since } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { TlsDialog } from '../helpers/tls-dialog.js';

const STRANGER = '127.0.0.9';
const NEVER = '127.0.0.3';
const USER = 'bob';
const PASSWORD = 'listener-pass-42';
const plain = Buffer.from(`\0${USER}\0${PASSWORD}`).toString('base64');

for (const { mode, config } of MODES) describe(`${mode} mode`, () => {
  let backend: RecordingBackend;
  let g: StartedGuard;

  beforeAll(async () => {
    backend = await startRecordingBackend({
      server: {
        authMethods: ['PLAIN', 'LOGIN'],
        allowInsecureAuth: true,
        onAuth(auth, _s, cb) {
          if (auth.username === USER && auth.password === PASSWORD) cb(null, { user: USER });
          else cb(new Error('Invalid username or password'));
        },
      },
    });
    g = await startGuard({
      backendPort: backend.port,
      rules: { neverRelayNetworks: [NEVER] },
      config: {
        ...config,
        listeners: [
          { name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx' },
          { name: 'submission', address: '127.0.0.1', port: 0, kind: 'submission' },
          { name: 'smtps', address: '127.0.0.1', port: 0, kind: 'smtps' },
          { name: 'internal', address: '127.0.0.1', port: 0, kind: 'mx', relay: 'allow', starttls: false },
        ],
        timeouts: { drain: '1s' },
      },
    });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
  });

  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  async function open(listener: string, from = STRANGER): Promise<Dialog> {
    const d = await Dialog.connect(g.guard.address(listener).port, { localAddress: from });
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO client.test')).code).toBe(250);
    return d;
  }

  async function deliver(d: Dialog | TlsDialog, rcpt: string, tag: string): Promise<void> {
    expect((await d.cmd('DATA')).code).toBe(354);
    const before = backend.messages.length;
    expect((await d.cmd(`Subject: ${tag}\r\n\r\n${tag}\r\n.`)).code).toBe(250);
    expect(backend.messages.length).toBe(before + 1);
    expect(backend.messages.at(-1)!.rcptTo).toEqual([rcpt]);
  }

  test('four listeners bound at once on distinct ports', () => {
    const ports = ['mx', 'submission', 'smtps', 'internal'].map((n) => g.guard.address(n).port);
    expect(new Set(ports).size).toBe(4);
    expect(ports.every((p) => p > 0)).toBe(true);
  });

  describe('mx listener', () => {
    test('a stranger may send to our domain but not relay', async () => {
      const d = await open('mx');
      expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<victim@elsewhere.test>')).code).toBe(550);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      await deliver(d, 'user@example.com', 'mx inbound');
      await d.cmd('QUIT');
      d.close();
    });
  });

  describe('submission listener', () => {
    test('MAIL before AUTH → 530 5.7.0, nothing forwarded', async () => {
      const seen = since(backend);
      const d = await open('submission');
      const r = await d.cmd('MAIL FROM:<a@example.com>');
      expect(r.code).toBe(530);
      expect(r.text).toContain('5.7.0');
      expect((await d.cmd('RCPT TO:<pal@elsewhere.test>')).code).toBe(503);
      expect((await d.cmd('QUIT')).code).toBe(221);
      d.close();
      expect(seen().filter((l) => /^(MAIL|RCPT)/i.test(l))).toEqual([]);
    });

    test('after STARTTLS and AUTH the user submits to a foreign domain', async () => {
      const d = await open('submission');
      expect((await d.cmd('STARTTLS')).code).toBe(220);
      const t = await TlsDialog.upgrade(d.socket);
      const ehlo = await t.cmd('EHLO client.test');
      expect(ehlo.lines.some((l) => /^AUTH .*PLAIN/.test(l))).toBe(true);
      expect((await t.cmd('MAIL FROM:<bob@example.com>')).code).toBe(530);
      const seen = since(backend);
      expect((await t.cmd(`AUTH PLAIN ${plain}`)).code).toBe(235);
      expect((await t.cmd('MAIL FROM:<bob@example.com>')).code).toBe(250);
      expect((await t.cmd('RCPT TO:<pal@elsewhere.test>')).code).toBe(250);
      await deliver(t, 'pal@elsewhere.test', 'submission relay');
      await t.cmd('QUIT');
      t.close();
      // The refused MAIL before AUTH never reached the backend; the one after it did, once.
      expect(seen().filter((l) => /^(AUTH|MAIL)/i.test(l))).toEqual([`AUTH PLAIN ${plain}`, 'MAIL FROM:<bob@example.com>']);
    });
  });

  describe('smtps listener', () => {
    test('implicit TLS: handshake first, then the greeting; AUTH offered at once; no STARTTLS', async () => {
      const t = await TlsDialog.connect(g.guard.address('smtps').port, STRANGER);
      expect((await t.reply()).code).toBe(220);
      const ehlo = await t.cmd('EHLO client.test');
      expect(ehlo.lines).not.toContain('STARTTLS');
      expect(ehlo.lines.some((l) => /^AUTH /.test(l))).toBe(true);
      expect((await t.cmd(`AUTH PLAIN ${plain}`)).code).toBe(235);
      expect((await t.cmd('MAIL FROM:<bob@example.com>')).code).toBe(250);
      expect((await t.cmd('RCPT TO:<pal2@elsewhere.test>')).code).toBe(250);
      await deliver(t, 'pal2@elsewhere.test', 'smtps relay');
      await t.cmd('QUIT');
      t.close();
    });

    test('a plaintext client on the smtps port never gets an SMTP greeting', async () => {
      const d = await Dialog.connect(g.guard.address('smtps').port, { localAddress: STRANGER });
      d.send('EHLO plain.test\r\n');
      await d.waitClosed(15_000);
      await expect(d.reply(10)).rejects.toThrow();
    });
  });

  describe('internal listener (relay: allow)', () => {
    test('any client relays without AUTH; STARTTLS not offered there', async () => {
      const d = await Dialog.connect(g.guard.address('internal').port, { localAddress: STRANGER });
      expect((await d.reply()).code).toBe(220);
      const ehlo = await d.cmd('EHLO app.internal');
      expect(ehlo.lines).not.toContain('STARTTLS');
      expect((await d.cmd('MAIL FROM:<app@example.com>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<customer@elsewhere.test>')).code).toBe(250);
      await deliver(d, 'customer@elsewhere.test', 'internal relay');
      await d.cmd('QUIT');
      d.close();
    });

    test('never-relay networks are still refused there', async () => {
      const seen = since(backend);
      const d = await open('internal', NEVER);
      expect((await d.cmd('MAIL FROM:<app@example.com>')).code).toBe(250);
      const r = await d.cmd('RCPT TO:<customer@elsewhere.test>');
      expect(r.code).toBe(550);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      await d.cmd('QUIT');
      d.close();
      // The refused recipient never reached the backend; the one after it did (so the tap saw this session).
      expect(seen().filter((l) => /^RCPT/i.test(l))).toEqual(['RCPT TO:<user@example.com>']);
    });

    test('a never-relay client cannot use routing tricks there either', async () => {
      const d = await open('internal', NEVER);
      expect((await d.cmd('MAIL FROM:<app@example.com>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<victim%elsewhere.test@example.com>')).code).toBeGreaterThanOrEqual(500);
      await d.cmd('QUIT');
      d.close();
    });
  });

  test('sessions are counted per listener', async () => {
    const m = await g.guard.metrics.connections.get();
    const accepted = (l: string) => m.values.find((v) => v.labels.listener === l && v.labels.outcome === 'accepted')?.value ?? 0;
    for (const l of ['mx', 'submission', 'smtps', 'internal']) expect(accepted(l), l).toBeGreaterThanOrEqual(1);
  });

  describe('per-listener TLS settings', () => {
    test('each listener serves the certificate of its own tls block; a listener without one uses the first', async () => {
      const a = await makeCertificate({ commonName: 'outside.test' });
      const b = await makeCertificate({ commonName: 'inside.test' });
      const dir = mkdtempSync(path.join(tmpdir(), 'rg-listener-tls-'));
      for (const [n, c] of [['a', a], ['b', b]] as const) {
        writeFileSync(path.join(dir, `${n}.crt`), c.cert);
        writeFileSync(path.join(dir, `${n}.key`), c.key);
      }
      const tlsOf = (n: string) => ({ certFile: path.join(dir, `${n}.crt`), keyFile: path.join(dir, `${n}.key`) });
      const guard = await startGuard({
        backendPort: backend.port,
        config: {
          ...config,
          timeouts: { drain: '1s' },
          listeners: [
            { name: 'outside', address: '127.0.0.1', port: 0, kind: 'smtps', tls: tlsOf('a') },
            { name: 'inside', address: '127.0.0.1', port: 0, kind: 'smtps', tls: tlsOf('b') },
            { name: 'plain', address: '127.0.0.1', port: 0, kind: 'smtps' },
          ],
        },
      });
      try {
        const served: Record<string, string | undefined> = {};
        for (const name of ['outside', 'inside', 'plain']) {
          const t = await TlsDialog.connect(guard.guard.address(name).port, STRANGER);
          served[name] = t.socket.getPeerX509Certificate()?.subject;
          t.close();
        }
        expect(served).toEqual({ outside: 'CN=outside.test', inside: 'CN=inside.test', plain: 'CN=outside.test' });
      } finally {
        await guard.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
