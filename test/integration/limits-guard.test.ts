/**
 * Issue 5 acceptance, one limit at a time, through the real guard: real client connections
 * (bound to distinct 127.0.0.x addresses), the guard, and a recording backend. Each test starts
 * its own guard with small thresholds in rules/limits.yaml and asserts the reply code, and for
 * bans that the banned client never reaches the backend again (554 5.7.1 at connect).
 * All of it twice: one backend connection per client, and pooled mode (the guard greets and
 * answers EHLO itself and lends a pre-opened backend session from MAIL to end-of-data), where what
 * the backend saw is searched across all its connections since the test began, and a next
 * client's message still goes through the pool after a limit or a ban.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import type { LimitRule } from '../../src/limits/schema.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { MODES, withMode, since } from '../helpers/modes.js';
import { startGuard, writeRules, type StartedGuard, type TestRules } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { until, withTimeout } from '../helpers/with-timeout.js';

const STRANGER = '127.0.0.9';
const ATTACKER = '127.0.0.10';
const TRUSTED = '127.0.0.2';
const OFFICE = '127.0.0.5'; // may AUTH without TLS
const USER = 'alice';
const PASSWORD = 'correct-horse-battery';
/** Outside 127.0.0.0/24 (every address of 127/8 is loopback on Linux): not hit by a /24 limit. */
const OTHER_PREFIX = '127.0.1.9';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const plain = (user: string, pass: string) => b64(`\0${user}\0${pass}`);

for (const { mode, config: modeConfig } of MODES) describe(`${mode} mode`, () => {
  let backend: RecordingBackend;
  let g: StartedGuard | undefined;

  beforeAll(async () => {
    backend = await startRecordingBackend({
      server: {
        authMethods: ['PLAIN'],
        allowInsecureAuth: true,
        onAuth(auth, _session, callback) {
          if (auth.username === USER && auth.password === PASSWORD) callback(null, { user: USER });
          else callback(new Error('Invalid username or password'));
        },
      },
    });
  });

  afterEach(async () => {
    await g?.stop();
    g = undefined;
  });

  afterAll(async () => {
    await backend?.close();
  });

  async function guardWith(limits: LimitRule[], rules: TestRules = {}, config: Record<string, unknown> = {}): Promise<StartedGuard> {
    g = await startGuard({
      backendPort: backend.port,
      rules: { limits: { enabled: true, prefixV4: 24, prefixV6: 64, limits }, ...rules },
      config: withMode(modeConfig, {
        timeouts: { drain: '1s' },
        listeners: [{ name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', starttls: false, plaintextAuthNetworks: [`${OFFICE}/32`] }],
        ...config,
      }),
    });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
    return g;
  }

  /** Connect, expect the greeting, EHLO. */
  async function greet(from: string): Promise<Dialog> {
    const d = await Dialog.connect(g!.port, { localAddress: from });
    const hello = await d.reply();
    expect(hello.code, hello.text).toBe(220);
    expect((await d.cmd('EHLO client.test')).code).toBe(250);
    return d;
  }

  /** Connect and return the first reply (greeting or refusal) and whether the guard then closed. */
  async function connectReply(from: string): Promise<{ code: number; text: string; d: Dialog }> {
    const d = await Dialog.connect(g!.port, { localAddress: from });
    const r = await d.reply();
    return { code: r.code, text: r.text, d };
  }

  /** A whole message; returns the reply to MAIL (and sends the rest only on 250). */
  async function sendMessage(d: Dialog, from: string, tag: string): Promise<number> {
    const mail = await d.cmd(`MAIL FROM:<${from}>`);
    if (mail.code !== 250) return mail.code;
    expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    expect((await d.cmd(`Subject: ${tag}\r\n\r\nbody ${tag}\r\n.`)).code).toBe(250);
    return 250;
  }

  const countLines = (re: RegExp) => backend.lines().filter((l) => re.test(l)).length;

  /**
   * The client is banned: the next connection gets 554 5.7.1 and is closed; per-client mode: the
   * backend sees no new connection (a pool opens its own connections whenever it likes).
   */
  async function expectBannedAtConnect(from: string): Promise<void> {
    const before = backend.connections.length;
    const { code, text, d } = await connectReply(from);
    expect(code, text).toBe(554);
    expect(text).toContain('5.7.1');
    await d.waitClosed();
    if (mode === 'per-client') expect(backend.connections.length).toBe(before);
  }

  /**
   * A next client's message is delivered with exactly its own envelope (pooled mode: the pool is
   * still healthy and nothing of an earlier client is left on the session it gets).
   */
  async function messageGoesThrough(from: string, tag: string, to = 'carol@example.com'): Promise<void> {
    const before = backend.messages.length;
    const d = await greet(from);
    expect((await d.cmd(`MAIL FROM:<next-${from}@sender.test>`)).code).toBe(250);
    expect((await d.cmd(`RCPT TO:<${to}>`)).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    const end = await d.cmd(`Subject: ${tag}\r\n\r\n${tag}\r\n.`);
    expect(end.code, end.text).toBe(250);
    expect((await d.cmd('QUIT')).code).toBe(221);
    await withTimeout(backend.waitForMessages(before + 1), 5_000, 'message');
    expect(backend.messages.slice(before).map((m) => [m.mailFrom, m.rcptTo, m.body.toString('latin1')])).toEqual([
      [`next-${from}@sender.test`, [to], `Subject: ${tag}\r\n\r\n${tag}\r\n`],
    ]);
  }

  describe('connection storms', () => {
    test('concurrent connections per ip: one over the limit gets 421 4.7.0 at connect; a closed slot is free again', async () => {
      await guardWith([{ id: 'concurrent-per-ip', event: 'concurrent', key: 'ip', limit: 2, action: 'close' }]);
      const a = await greet(STRANGER);
      const b = await greet(STRANGER);
      const before = backend.connections.length;
      const third = await connectReply(STRANGER);
      expect(third.code, third.text).toBe(421);
      expect(third.text).toContain('4.7.0');
      await third.d.waitClosed();
      if (mode === 'per-client') expect(backend.connections.length).toBe(before);
      // Another address is not affected.
      await messageGoesThrough(ATTACKER, 'concurrent, other address');
      expect((await g!.guard.metrics.connections.get()).values.find((v) => v.labels.outcome === 'limited')?.value).toBe(1);
      // Freeing one slot admits the next connection.
      await a.cmd('QUIT');
      await a.waitClosed();
      const again = await connectReply(STRANGER);
      expect(again.code, again.text).toBe(220);
      again.d.close();
      b.close();
      // Both slots free once the guard has seen both closes.
      await until(() => g!.guard.services.registry.size === 0, 5_000, 'sessions closed');
      await messageGoesThrough(STRANGER, 'concurrent, slot freed');
    });

    test('concurrent connections per /24 prefix: a second address of the same network is refused too', async () => {
      await guardWith([{ id: 'concurrent-per-prefix', event: 'concurrent', key: 'prefix', limit: 2, action: 'close' }]);
      const a = await greet(STRANGER);
      const b = await greet(ATTACKER);
      const third = await connectReply('127.0.0.11');
      expect(third.code, third.text).toBe(421);
      await third.d.waitClosed();
      await messageGoesThrough(OTHER_PREFIX, 'concurrent, other prefix');
      a.close();
      b.close();
    });

    test('new connections per ip (rate): the connection over the limit gets 421 4.7.0 before the backend', async () => {
      await guardWith([{ id: 'connections-per-ip', event: 'connection', key: 'ip', limit: 3, window: '1m', action: 'close' }]);
      for (let i = 0; i < 3; i++) {
        const d = await greet(STRANGER);
        await d.cmd('QUIT');
        d.close();
      }
      const before = backend.connections.length;
      const over = await connectReply(STRANGER);
      expect(over.code, over.text).toBe(421);
      expect(over.text).toContain('4.7.0');
      await over.d.waitClosed();
      if (mode === 'per-client') expect(backend.connections.length).toBe(before);
      await messageGoesThrough(ATTACKER, 'connection rate, other address');
    });
  });

  describe('volume', () => {
    test('messages per ip: MAIL over the limit gets 450 4.7.1 and never reaches the backend', async () => {
      await guardWith([{ id: 'messages-per-ip', event: 'message', key: 'ip', limit: 2, window: '1m', action: 'tempfail' }]);
      const d = await greet(STRANGER);
      const mailsBefore = countLines(/^MAIL FROM:<m-ip@/i);
      expect(await sendMessage(d, 'm-ip@sender.test', 'm-ip-1')).toBe(250);
      expect(await sendMessage(d, 'm-ip@sender.test', 'm-ip-2')).toBe(250);
      const third = await d.cmd('MAIL FROM:<m-ip@sender.test>');
      expect(third.code, third.text).toBe(450);
      expect(third.text).toContain('4.7.1');
      // tempfail is per command: the session stays open, with no transaction
      expect((await d.cmd('NOOP')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<m-ip-orphan@example.com>')).code).toBe(503);
      // Pipelined: the refused MAIL leaves no transaction for what follows it.
      d.send('MAIL FROM:<m-ip@sender.test>\r\nRCPT TO:<m-ip-orphan@example.com>\r\nDATA\r\n');
      expect((await d.replyN(3)).map((r) => r.code)).toEqual([450, 503, 503]);
      expect(countLines(/^MAIL FROM:<m-ip@/i) - mailsBefore).toBe(2);
      expect(countLines(/m-ip-orphan/i)).toBe(0);
      d.close();
      await messageGoesThrough(ATTACKER, 'messages per ip, other address');
    });

    test('recipients per sender, null sender <> (backscatter): counted across clients, 450 4.7.1 over the limit', async () => {
      await guardWith([{ id: 'recipients-per-sender', event: 'recipient', key: 'sender', limit: 3, window: '1m', action: 'tempfail' }]);
      const rcptsBefore = countLines(/^RCPT TO:<bounce-/i);
      const a = await greet(STRANGER);
      expect((await a.cmd('MAIL FROM:<>')).code).toBe(250);
      for (let i = 0; i < 2; i++) expect((await a.cmd(`RCPT TO:<bounce-${i}@example.com>`)).code).toBe(250);
      // The same null sender from another client shares the key.
      const b = await greet(ATTACKER);
      expect((await b.cmd('MAIL FROM:<>')).code).toBe(250);
      expect((await b.cmd('RCPT TO:<bounce-2@example.com>')).code).toBe(250);
      const over = await b.cmd('RCPT TO:<bounce-3@example.com>');
      expect(over.code, over.text).toBe(450);
      expect(over.text).toContain('4.7.1');
      expect((await a.cmd('RCPT TO:<bounce-4@example.com>')).code).toBe(450);
      expect(countLines(/^RCPT TO:<bounce-/i) - rcptsBefore).toBe(3);
      // A real sender is another key.
      expect((await a.cmd('RSET')).code).toBe(250);
      expect((await a.cmd('MAIL FROM:<real@sender.test>')).code).toBe(250);
      expect((await a.cmd('RCPT TO:<bounce-5@example.com>')).code).toBe(250);
      // b's transaction goes on with the recipient it got.
      const before = backend.messages.length;
      expect((await b.cmd('DATA')).code).toBe(354);
      expect((await b.cmd('Subject: bounce\r\n\r\nbounce\r\n.')).code).toBe(250);
      await withTimeout(backend.waitForMessages(before + 1), 5_000, 'message');
      expect(backend.messages.slice(before).map((m) => [m.mailFrom, m.rcptTo])).toEqual([['', ['bounce-2@example.com']]]);
      a.close();
      b.close();
      await messageGoesThrough('127.0.0.12', 'recipients per sender, after');
    });
  });

  describe('volume, pipelined', () => {
    test('recipients per ip in one batch: the one over the limit gets 450 4.7.1, the message goes to the others', async () => {
      await guardWith([{ id: 'recipients-per-ip', event: 'recipient', key: 'ip', limit: 2, window: '1m', action: 'tempfail' }]);
      const seen = since(backend);
      const d = await greet(STRANGER);
      const messages = backend.messages.length;
      d.send(
        'MAIL FROM:<batch@sender.test>\r\n' +
          'RCPT TO:<r-1@example.com>\r\n' +
          'RCPT TO:<r-2@example.com>\r\n' +
          'RCPT TO:<r-3@example.com>\r\n' +
          'DATA\r\n',
      );
      const r = await d.replyN(5);
      expect(r.map((x) => x.code)).toEqual([250, 250, 250, 450, 354]);
      expect(r[3]!.text).toContain('4.7.1');
      d.send('Subject: batch\r\n\r\nbatch\r\n.\r\n');
      expect((await d.reply()).code).toBe(250);
      await withTimeout(backend.waitForMessages(messages + 1), 5_000, 'message');
      expect(backend.messages.slice(messages).map((m) => m.rcptTo)).toEqual([['r-1@example.com', 'r-2@example.com']]);
      expect(seen().filter((l) => /^RCPT/i.test(l))).toEqual(['RCPT TO:<r-1@example.com>', 'RCPT TO:<r-2@example.com>']);
      expect((await d.cmd('QUIT')).code).toBe(221);
      await messageGoesThrough(ATTACKER, 'recipients per ip, other address');
      expect(seen().filter((l) => /r-3@/i.test(l))).toEqual([]);
    });
  });

  describe('abuse → ban', () => {
    test('relay denials per ip: banned (421 4.7.0), then 554 5.7.1 at connect before the backend is contacted', async () => {
      await guardWith([{ id: 'relay-denied-per-ip', event: 'relay-denied', key: 'ip', limit: 2, window: '10m', action: 'ban', ban: '1h' }]);
      const d = await greet(STRANGER);
      expect((await d.cmd('MAIL FROM:<probe@sender.test>')).code).toBe(250);
      for (let i = 0; i < 2; i++) expect((await d.cmd(`RCPT TO:<victim${i}@elsewhere.test>`)).code).toBe(550);
      const banned = await d.cmd('RCPT TO:<victim9@elsewhere.test>');
      expect(banned.code, banned.text).toBe(421);
      expect(banned.text).toContain('4.7.0');
      await d.waitClosed();
      expect(countLines(/elsewhere\.test/i)).toBe(0);
      const bans = g!.guard.services.bans!.list();
      expect(bans).toEqual([expect.objectContaining({ target: STRANGER, source: 'automatic', reason: 'limit relay-denied-per-ip' })]);
      const m = g!.guard.metrics;
      expect((await m.bansActive.get()).values.find((v) => v.labels.source === 'automatic')?.value).toBe(1);
      expect((await m.limitHits.get()).values.find((v) => v.labels.limit === 'relay-denied-per-ip' && v.labels.action === 'ban')?.value).toBe(1);
      expect(g!.logs.filter((l) => l.msg === 'limit hit' && l.limit === 'relay-denied-per-ip')).toHaveLength(1);
      const linesBefore = backend.lines().length;
      await expectBannedAtConnect(STRANGER);
      // Per-client mode: the banned session's backend connection is gone, nothing more arrives
      // (a pool RSETs the session the banned client held and may check its sessions meanwhile).
      if (mode === 'per-client') expect(backend.lines().length).toBe(linesBefore);
      expect((await m.connections.get()).values.find((v) => v.labels.outcome === 'banned')?.value).toBe(1);
      // Another address is still served.
      await messageGoesThrough(ATTACKER, 'relay ban, other address');
      expect(countLines(/elsewhere\.test/i)).toBe(0);
    });

    test('a ban in the middle of a pipelined batch: nothing after it reaches the backend', async () => {
      await guardWith([{ id: 'relay-denied-per-ip', event: 'relay-denied', key: 'ip', limit: 1, window: '10m', action: 'ban', ban: '1h' }]);
      const d = await greet(STRANGER);
      const seen = since(backend);
      const messages = backend.messages.length;
      d.send(
        [
          'MAIL FROM:<pipe@sender.test>',
          'RCPT TO:<bob@example.com>',
          'RCPT TO:<v1@elsewhere.test>',
          'RCPT TO:<v2@elsewhere.test>',
          'RCPT TO:<after-ban@example.com>',
          'DATA',
          'Subject: after ban',
          '',
          'must never be forwarded',
          '.',
          '',
        ].join('\r\n'),
      );
      const replies = await d.replyN(4);
      expect(replies.map((r) => r.code)).toEqual([250, 250, 550, 421]);
      await d.waitClosed();
      expect(seen().filter((l) => /bob@example\.com/i.test(l))).toHaveLength(1); // before the ban: forwarded
      expect(seen().filter((l) => /after-ban|^DATA$|must never/i.test(l))).toEqual([]);
      await expectBannedAtConnect(STRANGER);
      // The next client's message carries only its own envelope (pooled: the banned client's
      // transaction, with bob already accepted, was reset on the session first).
      await messageGoesThrough(ATTACKER, 'pipelined ban, other address');
      expect(seen().filter((l) => /after-ban|^DATA$|must never/i.test(l))).toEqual(['DATA']);
      expect(backend.messages.slice(messages).map((m) => m.rcptTo)).toEqual([['carol@example.com']]);
    });

    test('unknown recipients per ip (directory harvest): 550 5.1.1, then ban, then 554 at connect', async () => {
      await guardWith(
        [{ id: 'unknown-recipient-per-ip', event: 'unknown-recipient', key: 'ip', limit: 3, window: '10m', action: 'ban', ban: '1h' }],
        { recipientValidation: { default: 'list', domains: {} }, recipients: 'bob@example.com\n' },
      );
      const d = await greet(STRANGER);
      expect((await d.cmd('MAIL FROM:<harvester@sender.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
      for (const name of ['aaron', 'abby', 'adam']) {
        const r = await d.cmd(`RCPT TO:<${name}@example.com>`);
        expect(r.code, r.text).toBe(550);
        expect(r.text).toContain('5.1.1');
      }
      const banned = await d.cmd('RCPT TO:<adele@example.com>');
      expect(banned.code, banned.text).toBe(421);
      await d.waitClosed();
      expect(countLines(/^RCPT TO:<(aaron|abby|adam|adele)@/i)).toBe(0);
      await expectBannedAtConnect(STRANGER);
      await messageGoesThrough(ATTACKER, 'harvest ban, other address', 'bob@example.com');
      expect(countLines(/^RCPT TO:<(aaron|abby|adam|adele)@/i)).toBe(0);
    });

    test('auth failures per ip: 535 from the backend, then ban, then 554 at connect', async () => {
      await guardWith([{ id: 'auth-failures-per-ip', event: 'auth-failure', key: 'ip', limit: 2, window: '15m', action: 'ban', ban: '1h' }]);
      const d = await greet(OFFICE);
      for (let i = 0; i < 2; i++) {
        const r = await d.cmd(`AUTH PLAIN ${plain(USER, `guess-${i}`)}`);
        expect(r.code, r.text).toBe(535);
      }
      d.send(`AUTH PLAIN ${plain(USER, 'guess-2')}\r\n`);
      const [fail, banned] = await d.replyN(2);
      expect(fail!.code).toBe(535);
      expect(banned!.code, banned!.text).toBe(421);
      expect(banned!.text).toContain('4.7.0');
      await d.waitClosed();
      await expectBannedAtConnect(OFFICE);
      await messageGoesThrough(ATTACKER, 'auth ban, other address');
    });

    test('protocol errors per ip: syntax errors, then ban, then 554 at connect', async () => {
      await guardWith([{ id: 'protocol-errors-per-ip', event: 'protocol-error', key: 'ip', limit: 3, window: '10m', action: 'ban', ban: '30m' }]);
      const d = await greet(STRANGER);
      // an unknown verb, a broken path, a bare-LF line: each is a protocol error
      for (const line of ['GARBAGE verb', 'MAIL FROM:<unbalanced@sender.test', 'HELO\nworld']) {
        const r = await d.cmd(line);
        expect(r.code, r.text).toBeGreaterThanOrEqual(500);
      }
      d.send('MAIL FROM:<unbalanced@sender.test\r\n');
      const [err, banned] = await d.replyN(2);
      expect(err!.code).toBeGreaterThanOrEqual(500);
      expect(banned!.code, banned!.text).toBe(421);
      await d.waitClosed();
      await expectBannedAtConnect(STRANGER);
      await messageGoesThrough(ATTACKER, 'protocol ban, other address');
      expect(countLines(/unbalanced/i)).toBe(0);
    });

    test('escalation: a repeat offender is banned twice as long, up to maxBan', async () => {
      await guardWith([{ id: 'relay-denied-per-ip', event: 'relay-denied', key: 'ip', limit: 1, window: '10m', action: 'ban', ban: '1m', maxBan: '3m' }]);
      const durations: number[] = [];
      for (let round = 0; round < 3; round++) {
        const d = await greet(STRANGER);
        expect((await d.cmd('MAIL FROM:<probe@sender.test>')).code).toBe(250);
        // Round 1: one denial is allowed, the second bans. Round 2: the rate is still spent, so the
        // first denial bans again.
        if (round === 0) expect((await d.cmd('RCPT TO:<v1@elsewhere.test>')).code).toBe(550);
        expect((await d.cmd('RCPT TO:<v2@elsewhere.test>')).code).toBe(421);
        await d.waitClosed();
        const bans = g!.guard.services.bans!;
        const ban = bans.list().find((b) => b.target === STRANGER);
        expect(ban?.expiresAt).toBeDefined();
        durations.push(Date.parse(ban!.expiresAt!) - Date.parse(ban!.createdAt));
        await expectBannedAtConnect(STRANGER);
        // An admin lifts the ban; the offence is remembered.
        expect(bans.remove(STRANGER)).toBe(true);
      }
      expect(durations[0]).toBeGreaterThanOrEqual(59_000);
      expect(durations[0]).toBeLessThanOrEqual(61_000);
      expect(durations[1]).toBeGreaterThanOrEqual(119_000);
      expect(durations[1]).toBeLessThanOrEqual(121_000);
      expect(durations[2]).toBeGreaterThanOrEqual(179_000); // 4m, capped at maxBan 3m
      expect(durations[2]).toBeLessThanOrEqual(181_000);
      expect(countLines(/elsewhere\.test/i)).toBe(0);
      await messageGoesThrough(ATTACKER, 'after three bans');
    });
  });

  describe('bans as data', () => {
    test('manual bans (address and CIDR) are refused at connect and survive a restart; removal too', async () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'rg-bans-'));
      const bansFile = path.join(dir, 'bans.yaml');
      try {
        await guardWith([], {}, { limits: { store: 'memory', maxEntries: 1000, bansFile } });
        g!.guard.services.bans!.add({ target: '127.0.0.41', reason: 'spam run', source: 'manual', durationMs: 3_600_000 });
        g!.guard.services.bans!.add({ target: '127.0.0.44/30', reason: 'botnet', source: 'manual' });
        await expectBannedAtConnect('127.0.0.41');
        await g!.stop();

        await guardWith([], {}, { limits: { store: 'memory', maxEntries: 1000, bansFile } });
        expect(g!.guard.services.bans!.list().map((b) => b.target)).toEqual(['127.0.0.41', '127.0.0.44/30']);
        await expectBannedAtConnect('127.0.0.41');
        await expectBannedAtConnect('127.0.0.46');
        (await greet('127.0.0.40')).close(); // outside both
        expect(g!.guard.services.bans!.remove('127.0.0.44/30')).toBe(true);
        await g!.stop();

        await guardWith([], {}, { limits: { store: 'memory', maxEntries: 1000, bansFile } });
        (await greet('127.0.0.46')).close();
        await expectBannedAtConnect('127.0.0.41');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('compromised-account brake', () => {
    test('messages per authenticated user: 450 4.7.1 over the limit, while per-ip limits exempt the session', async () => {
      await guardWith([
        { id: 'messages-per-ip', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tempfail', exemptTrusted: true },
        { id: 'messages-per-user', event: 'message', key: 'user', limit: 2, window: '1m', action: 'tempfail', exemptTrusted: false },
      ]);
      const d = await greet(OFFICE);
      expect((await d.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code).toBe(235);
      expect(await sendMessage(d, 'alice@example.com', 'user-1')).toBe(250);
      expect(await sendMessage(d, 'alice@example.com', 'user-2')).toBe(250);
      const over = await d.cmd('MAIL FROM:<alice@example.com>');
      expect(over.code, over.text).toBe(450);
      expect(over.text).toContain('4.7.1');
      d.close();
      // The same user from a second connection is the same key.
      const again = await greet(OFFICE);
      expect((await again.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code).toBe(235);
      expect((await again.cmd('MAIL FROM:<alice@example.com>')).code).toBe(450);
      again.close();
      expect(backend.messages.filter((m) => m.mailFrom === 'alice@example.com')).toHaveLength(2);
      await messageGoesThrough(ATTACKER, 'user brake, other client');
    });
  });

  describe('compromised-account brake, recipients', () => {
    test('recipients per authenticated user: relaying stops with 450 4.7.1 at the limit', async () => {
      await guardWith([{ id: 'recipients-per-user', event: 'recipient', key: 'user', limit: 3, window: '1h', action: 'tempfail', exemptTrusted: false }]);
      const d = await greet(OFFICE);
      expect((await d.cmd(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code).toBe(235);
      expect((await d.cmd('MAIL FROM:<alice@example.com>')).code).toBe(250);
      const before = countLines(/^RCPT TO:<spam-/i);
      for (let i = 0; i < 3; i++) expect((await d.cmd(`RCPT TO:<spam-${i}@far-away.test>`)).code).toBe(250);
      const over = await d.cmd('RCPT TO:<spam-3@far-away.test>');
      expect(over.code, over.text).toBe(450);
      expect(over.text).toContain('4.7.1');
      expect(countLines(/^RCPT TO:<spam-/i) - before).toBe(3);
      // The message goes to the recipients accepted before the limit, not to the refused one.
      const messages = backend.messages.length;
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd('Subject: brake\r\n\r\nbrake\r\n.')).code).toBe(250);
      await withTimeout(backend.waitForMessages(messages + 1), 5_000, 'message');
      expect(backend.messages.slice(messages).map((m) => m.rcptTo)).toEqual([[0, 1, 2].map((i) => `spam-${i}@far-away.test`)]);
      d.close();
      await messageGoesThrough(ATTACKER, 'recipient brake, other client');
    });
  });

  describe('actions and switches', () => {
    test('tarpit delays the reply, then carries on', async () => {
      const TARPIT_MS = 400;
      await guardWith([{ id: 'messages-tarpit', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tarpit', tarpit: `${TARPIT_MS}ms` }]);
      const d = await greet(STRANGER);
      expect(await sendMessage(d, 'slow@sender.test', 'tarpit-1')).toBe(250);
      const started = Date.now();
      const r = await d.cmd('MAIL FROM:<slow@sender.test>', 5_000);
      const elapsed = Date.now() - started;
      expect(r.code).toBe(250);
      expect(elapsed).toBeGreaterThanOrEqual(TARPIT_MS - 10);
      expect(elapsed).toBeLessThan(5_000);
      // ... and the delayed transaction is delivered.
      const messages = backend.messages.length;
      expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd('Subject: tarpit-2\r\n\r\nbody tarpit-2\r\n.')).code).toBe(250);
      await withTimeout(backend.waitForMessages(messages + 1), 5_000, 'message');
      expect(backend.messages.slice(messages).map((m) => m.mailFrom)).toEqual(['slow@sender.test']);
      d.close();
    });

    test('a client that leaves during a tarpit: the session ends cleanly, no internal error, no message', async () => {
      await guardWith([{ id: 'messages-tarpit', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tarpit', tarpit: '300ms' }]);
      const d = await greet(STRANGER);
      expect(await sendMessage(d, 'gone@sender.test', 'gone-0')).toBe(250);
      const messages = backend.messages.length;
      const ended = Promise.all(g!.guard.services.registry.all().map((s) => s.ended));
      d.send('MAIL FROM:<gone@sender.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n');
      d.close();
      await withTimeout(ended, 5_000, 'session end');
      expect(g!.guard.services.registry.all()).toEqual([]);
      expect(g!.logs.filter((l) => l.msg === 'internal error')).toEqual([]);
      expect(backend.messages.length).toBe(messages);
      await messageGoesThrough(ATTACKER, 'after a client left in a tarpit');
      expect(g!.logs.filter((l) => l.msg === 'internal error')).toEqual([]);
    });

    // A FIN after a cut message (half-close: the guard answers what it got, a message cut short is
    // never delivered), or a reset (the session ends at once, in the tarpit).
    test.each([
      ['half-closes after part of a message', 'fin'],
      ['resets the connection', 'rst'],
    ] as const)('a client holding a transaction that %s during a recipient tarpit: no message, the next client is served', async (_name, how) => {
      await guardWith([{ id: 'recipients-tarpit', event: 'recipient', key: 'ip', limit: 1, window: '1m', action: 'tarpit', tarpit: '300ms' }]);
      const seen = since(backend);
      const d = await greet(STRANGER);
      expect((await d.cmd('MAIL FROM:<left@sender.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<left-1@example.com>')).code).toBe(250);
      const messages = backend.messages.length;
      const ended = Promise.all(g!.guard.services.registry.all().map((s) => s.ended));
      d.send('RCPT TO:<left-2@example.com>\r\nDATA\r\nSubject: left\r\n\r\ncut here\r\n');
      if (how === 'fin') d.socket.end();
      else {
        // Reset once the guard is in the tarpit (data and a reset arriving together read as data, then EOF).
        await until(() => g!.logs.some((l) => l.msg === 'limit hit' && l.limit === 'recipients-tarpit'), 5_000, 'tarpit');
        d.socket.resetAndDestroy();
      }
      await withTimeout(ended, 5_000, 'session end');
      expect(g!.guard.services.registry.all()).toEqual([]);
      await messageGoesThrough(ATTACKER, `after a client left in a recipient tarpit (${how})`);
      expect(backend.messages.slice(messages).map((m) => m.mailFrom)).toEqual([`next-${ATTACKER}@sender.test`]);
      // A reset ends the session in the tarpit: nothing after it was forwarded (the DATA is the next client's).
      if (how === 'rst') expect(seen().filter((l) => /left-2|^DATA$|cut here/i.test(l))).toEqual(['DATA']);
      expect(g!.logs.filter((l) => l.msg === 'internal error')).toEqual([]);
    });

    test('exemptTrusted: a client in the relay networks is not limited; a stranger is', async () => {
      await guardWith([{ id: 'messages-per-ip', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tempfail', exemptTrusted: true }], {
        relayNetworks: [`${TRUSTED}/32`],
      });
      const t = await greet(TRUSTED);
      for (let i = 0; i < 3; i++) expect(await sendMessage(t, 'app@example.com', `trusted-${i}`)).toBe(250);
      t.close();
      const s = await greet(STRANGER);
      expect(await sendMessage(s, 'someone@sender.test', 'stranger-0')).toBe(250);
      expect((await s.cmd('MAIL FROM:<someone@sender.test>')).code).toBe(450);
      s.close();
    });

    test('enabled: false switches one limit off (and the top-level switch all of them)', async () => {
      const messages: LimitRule = { id: 'messages-per-ip', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tempfail', enabled: false };
      await guardWith([messages]);
      const d = await greet(STRANGER);
      for (let i = 0; i < 3; i++) expect(await sendMessage(d, 'off@sender.test', `off-${i}`)).toBe(250);
      d.close();
      await g!.stop();
      g = await startGuard({
        backendPort: backend.port,
        rules: { limits: { enabled: false, prefixV4: 24, prefixV6: 64, limits: [{ ...messages, enabled: true }] } },
        config: modeConfig,
      });
      expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
      const e = await greet(STRANGER);
      for (let i = 0; i < 3; i++) expect(await sendMessage(e, 'off@sender.test', `all-off-${i}`)).toBe(250);
      e.close();
    });

    test('a limit switched off by editing rules/limits.yaml applies to the next command of a live session', async () => {
      const messages: LimitRule = { id: 'messages-per-ip', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tempfail' };
      const s = await guardWith([messages]);
      const d = await greet(STRANGER);
      expect(await sendMessage(d, 'live@sender.test', 'live-0')).toBe(250);
      expect((await d.cmd('MAIL FROM:<live@sender.test>')).code).toBe(450);
      const changed = withTimeout(once(s.guard.rules, 'change'), 5_000, 'rules change');
      writeRules(s.rulesDir, { limits: { enabled: true, prefixV4: 24, prefixV6: 64, limits: [{ ...messages, enabled: false }] } });
      await changed;
      expect(await sendMessage(d, 'live@sender.test', 'live-1')).toBe(250);
      d.close();
    });
  });

  describe('a ban decided after the backend said 354', () => {
    test('the open message is never ended nor followed by anything on that backend session; the next client is served at once', async () => {
      // The backend refuses all but alice with 5.1.1; the harvest ban (limit 1) is decided from the
      // second refusal, after the DATA pipelined behind it has already been answered 354.
      const picky = await startRecordingBackend({
        server: {
          onRcptTo(a, _s, cb) {
            if (a.address === 'alice@example.com' || a.address === 'next@example.com') return cb();
            cb(Object.assign(new Error('5.1.1 User unknown'), { responseCode: 550 }));
          },
        },
      });
      const banGuard = await startGuard({
        backendPort: picky.port,
        rules: { limits: { enabled: true, prefixV4: 24, prefixV6: 64, limits: [{ id: 'harvest', event: 'unknown-recipient', key: 'ip', limit: 1, window: '10m', action: 'ban', ban: '1h' } as LimitRule] } },
        // Pooled: one backend session only, so a session left in the message would stop the next client.
        config: withMode(mode === 'pooled' ? { backend: { maxConnections: 20, pool: { enabled: true, minIdle: 1, max: 1, acquireTimeout: '3s', healthInterval: '30s' } } } : {}, { timeouts: { drain: '1s' } }),
      });
      try {
        const d = await Dialog.connect(banGuard.port, { localAddress: '127.0.0.35' });
        expect((await d.reply()).code).toBe(220);
        expect((await d.cmd('EHLO x.test')).code).toBe(250);
        const seen = since(picky);
        d.send('MAIL FROM:<h@outside.test>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<ghost1@example.com>\r\nRCPT TO:<ghost2@example.com>\r\nDATA\r\n');
        const codes = (await d.repliesUntilClose(10)).map((r) => r.code);
        expect(codes.slice(0, 4)).toEqual([250, 250, 550, 550]);
        expect(codes.at(-1)).toBe(421);
        const n = await Dialog.connect(banGuard.port, { localAddress: '127.0.1.36' });
        expect((await n.reply()).code).toBe(220);
        expect((await n.cmd('EHLO y.test')).code).toBe(250);
        expect((await n.cmd('MAIL FROM:<next@outside.test>', 2500)).code).toBe(250);
        expect((await n.cmd('RCPT TO:<next@example.com>')).code).toBe(250);
        expect((await n.cmd('DATA')).code).toBe(354);
        expect((await n.cmd('Subject: next\r\n\r\nafter the ban\r\n.')).code).toBe(250);
        n.close();
        // Nothing reached the backend after the banned client's DATA on that session: no RSET, no
        // end-of-data; the one message delivered is the next client's.
        await withTimeout(picky.waitForMessages(1), 3000, "the next client's message");
        expect(picky.messages.map((m) => m.rcptTo)).toEqual([['next@example.com']]);
        const lines = seen();
        const data = lines.indexOf('DATA');
        expect(data).toBeGreaterThanOrEqual(0);
        expect(lines.slice(data + 1)).not.toContain('RSET');
        expect(lines.filter((l) => l === '.')).toHaveLength(1); // the next client's end-of-data
      } finally {
        await banGuard.stop();
        await picky.close();
      }
    });
  });
});
