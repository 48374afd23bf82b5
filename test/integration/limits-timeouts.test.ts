/**
 * Issue 3 acceptance, limits and timeouts (short values in test config): line length,
 * recipients per message, SIZE at MAIL and bytes in DATA, errors per session (soft delay, hard
 * close), transactions per session, early talkers, greeting delay; idle command, DATA
 * inactivity, whole-session and backend reply timeouts.
 * All of it twice: one backend connection per client, and pooled mode (the guard greets and
 * answers EHLO itself and lends a pre-opened backend session from MAIL to end-of-data), where what
 * the backend saw is searched across all its connections since the test began. After each
 * scenario the next client's message goes through (a pooled backend session was not left stuck or
 * poisoned) and no client session is left counted; a cut or timed-out message never ends at the
 * backend, and the connection that carried it is closed.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend, type RecordingMark } from '../helpers/recording-backend.js';
import { MODES, withMode, since } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { until, withTimeout } from '../helpers/with-timeout.js';
import { startScriptedBackend } from '../helpers/scripted-backend.js';

const STRANGER = '127.0.0.9';

type Cfg = Record<string, unknown>;

/**
 * A message cut short (too large, timed out): the backend connection that carried `marker` since
 * `mark` never got an end-of-data after it, is closed (pooled: discarded, never lent again), and no
 * message with it was delivered.
 */
function carrying(b: RecordingBackend, mark: RecordingMark, marker: string) {
  return b.receivedSince(mark).filter((c) => c.text.includes(marker));
}
async function neverEnded(b: RecordingBackend, mark: RecordingMark, marker: string): Promise<void> {
  expect(carrying(b, mark, marker).length, `one backend connection carried ${marker}`).toBe(1);
  await until(() => carrying(b, mark, marker).every((c) => !c.open), 3000, 'the connection with the cut message closed');
  for (const c of carrying(b, mark, marker)) expect(c.text.slice(c.text.indexOf(marker))).not.toContain('\r\n.\r\n');
  expect(b.messages.some((m) => m.body.toString('latin1').includes(marker))).toBe(false);
}

async function greeted(port: number): Promise<Dialog> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}


/** A new client sends one message, its end-of-data answered 250, and quits. */
async function nextClientSends(g: StartedGuard, subject: string): Promise<void> {
  const d = await greeted(g.port);
  await d.sendMessage('next@example.com', subject);
  expect((await d.cmd('QUIT')).code).toBe(221);
  await d.waitClosed();
}

/** Every client session is gone: the registry is empty and the gauge back to 0 (nothing counted twice or left). */
async function noSessionLeft(g: StartedGuard): Promise<void> {
  await until(() => g.guard.services.registry.size === 0, 3000, 'no client session left');
  expect(await g.guard.metrics.register.metrics()).toMatch(/relay_guard_sessions_active\{listener="mx"\} 0\n/);
}

let backend: RecordingBackend;
const guards: StartedGuard[] = [];

beforeAll(async () => {
  backend = await startRecordingBackend();
});
afterEach(async () => {
  for (const g of guards.splice(0)) await g.stop();
});
afterAll(async () => {
  await backend?.close();
});

/** After a scenario: the next client's message is delivered, alone and intact, and no session is left counted. */
async function healthy(g: StartedGuard, subject: string): Promise<void> {
  const before = backend.messages.length;
  await nextClientSends(g, subject);
  await withTimeout(backend.waitForMessages(before + 1), 5000, 'the next client\'s message');
  expect(backend.messages.slice(before).map((m) => m.body.toString('latin1'))).toEqual([`Subject: ${subject}\r\n\r\nok\r\n`]);
  expect(backend.messages[before]!.rcptTo).toEqual(['next@example.com']);
  await noSessionLeft(g);
}

for (const { mode, config: modeConfig } of MODES) describe(`${mode} mode`, () => {
  const pooled = mode === 'pooled';

  async function guard(config: Cfg, backendPort = backend.port): Promise<StartedGuard> {
    const g = await startGuard({ backendPort, config: withMode(withMode(modeConfig, { timeouts: { drain: '500ms' } }), config) });
    guards.push(g);
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(pooled);
    return g;
  }

  describe('limits', () => {
    test('a line over maxLineBytes gets 500 5.5.2 and the session stays in sync', async () => {
      const g = await guard({ smtp: { maxLineBytes: 512 } });
      const seen = since(backend);
      const d = await greeted(g.port);
      d.send(`NOOP ${'x'.repeat(600)}\r\nNOOP\r\nMAIL FROM:<${'a'.repeat(700)}@elsewhere.test>\r\nMAIL FROM:<s@elsewhere.test>\r\n`);
      const r = await d.replyN(4);
      expect(r.map((x) => x.code)).toEqual([500, 250, 500, 250]);
      expect(r[0]!.text).toContain('5.5.2');
      expect((await d.cmd('QUIT')).code).toBe(221);
      const lines = seen();
      expect(lines.some((l) => l.includes('aaaaaaaaaa'))).toBe(false);
      expect(lines.filter((l) => l.startsWith('MAIL'))).toEqual(['MAIL FROM:<s@elsewhere.test>']);
      await healthy(g, `line-limit ${mode}`);
    });

    test('a line far over the limit (64 KiB, no CRLF yet) is answered 500 and memory stays bounded', async () => {
      const g = await guard({ smtp: { maxLineBytes: 512 } });
      const seen = since(backend);
      const d = await greeted(g.port);
      d.send(`NOOP ${'y'.repeat(65536)}`);
      d.send('\r\nNOOP\r\n');
      const r = await d.replyN(2);
      expect(r.map((x) => x.code)).toEqual([500, 250]);
      expect((await d.cmd('QUIT')).code).toBe(221);
      expect(seen().some((l) => l.includes('yyyyyyyyyy'))).toBe(false);
      await healthy(g, `long-line ${mode}`);
    });

    test('recipients past maxRecipients get 452 4.5.3; the message goes to the first ones only', async () => {
      const g = await guard({ smtp: { maxRecipients: 3 } });
      const seen = since(backend);
      const before = backend.messages.length;
      const d = await greeted(g.port);
      d.send('MAIL FROM:<s@elsewhere.test>\r\n' + [1, 2, 3, 4, 5].map((i) => `RCPT TO:<r${i}@example.com>\r\n`).join('') + 'DATA\r\n');
      const r = await d.replyN(7);
      expect(r.map((x) => x.code)).toEqual([250, 250, 250, 250, 452, 452, 354]);
      expect(r[4]!.text).toContain('4.5.3');
      d.send('Subject: rcpt limit\r\n\r\nx\r\n.\r\n');
      expect((await d.reply()).code).toBe(250);
      await withTimeout(backend.waitForMessages(before + 1), 5000, 'message');
      expect(backend.messages[before]!.rcptTo).toEqual(['r1@example.com', 'r2@example.com', 'r3@example.com']);
      expect(seen().filter((l) => l.startsWith('RCPT'))).toEqual(['RCPT TO:<r1@example.com>', 'RCPT TO:<r2@example.com>', 'RCPT TO:<r3@example.com>']);
      expect((await d.cmd('QUIT')).code).toBe(221);
      await healthy(g, `rcpt-limit ${mode}`);
    });

    test('SIZE= at MAIL over the maximum gets 552 5.3.4; EHLO advertises the guard\'s maximum', async () => {
      const g = await guard({ smtp: { maxMessageBytes: 10000 } });
      const seen = since(backend);
      const d = await Dialog.connect(g.port, { localAddress: STRANGER });
      await d.reply();
      const ehlo = await d.cmd('EHLO client.test');
      expect(ehlo.lines).toContain('SIZE 10000');
      const r = await d.cmd('MAIL FROM:<s@elsewhere.test> SIZE=10001');
      expect(r.code).toBe(552);
      expect(r.text).toContain('5.3.4');
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test> SIZE=10000')).code).toBe(250);
      expect((await d.cmd('QUIT')).code).toBe(221);
      expect(seen().filter((l) => l.startsWith('MAIL'))).toEqual(['MAIL FROM:<s@elsewhere.test> SIZE=10000']);
      await healthy(g, `size-param ${mode}`);
    });

    test('message bytes over the maximum in DATA: 552 5.3.4 and nothing is delivered', async () => {
      const g = await guard({ smtp: { maxMessageBytes: 10000 } });
      const mark = backend.mark();
      const before = backend.messages.length;
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<big@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      const line = `${'z'.repeat(98)}\r\n`;
      // The start first, until the backend has it; then past the limit.
      d.send(`Subject: too big ${mode}\r\n\r\n${line.repeat(50)}`);
      await until(() => carrying(backend, mark, line.repeat(50)).length > 0, 3000, 'the start of the message at the backend');
      d.send(`${line.repeat(100)}.\r\n`);
      const r = await d.reply();
      expect(r.code).toBe(552);
      expect(r.text).toContain('5.3.4');
      if (pooled) {
        // Pooled: only the backend session that carried the aborted message is lost; the client goes on.
        await d.sendMessage('after-big@example.com', `after too big ${mode}`);
        await withTimeout(backend.waitForMessages(before + 1), 5000, 'the message after the refused one');
        expect(backend.messages.slice(before).map((m) => m.body.toString('latin1'))).toEqual([`Subject: after too big ${mode}\r\n\r\nok\r\n`]);
        expect((await d.cmd('QUIT')).code).toBe(221);
      } else {
        // Per client: the session's backend connection went with the aborted message; the session closes.
        await d.waitClosed();
        expect(backend.messages.length).toBe(before);
      }
      await neverEnded(backend, mark, `Subject: too big ${mode}`);
      await healthy(g, `too-big ${mode}`);
    });

    test('a message of exactly maxMessageBytes is delivered; one byte more is refused', async () => {
      const g = await guard({ smtp: { maxMessageBytes: 1000 } });
      const mark = backend.mark();
      const before = backend.messages.length;
      const exact = `Subject: edge\r\n\r\n${'e'.repeat(1000 - 17 - 2)}\r\n`;
      expect(exact.length).toBe(1000);
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test> SIZE=1000')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<edge@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      d.send(`${exact}.\r\n`);
      expect((await d.reply()).code).toBe(250);
      await withTimeout(backend.waitForMessages(before + 1), 5000, 'message');
      expect(backend.messages[before]!.body.toString('latin1')).toBe(exact);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<edge@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      const over = `x${exact.replace('edge', 'edgf')}`;
      d.send(over.slice(0, 500));
      await until(() => carrying(backend, mark, over.slice(0, 400)).length > 0, 3000, 'the start of the message at the backend');
      d.send(`${over.slice(500)}.\r\n`);
      expect((await d.reply()).code).toBe(552);
      if (pooled) expect((await d.cmd('QUIT')).code).toBe(221);
      await d.waitClosed();
      expect(backend.messages.length).toBe(before + 1);
      await neverEnded(backend, mark, 'xSubject: edgf');
      await healthy(g, `edge ${mode}`);
    });

    test('errors: a growing delay after the soft limit, 421 at the hard limit', async () => {
      const g = await guard({ smtp: { softErrorLimit: 2, hardErrorLimit: 5, errorDelay: '300ms' } });
      const d = await greeted(g.port);
      const times: number[] = [];
      for (let i = 0; i < 4; i++) {
        const t = Date.now();
        expect((await d.cmd(`BOGUS${i}`)).code).toBe(500);
        times.push(Date.now() - t);
      }
      // Errors 1-3 come at once; after the third (past the soft limit of 2) the guard waits 300 ms.
      expect(times[0]).toBeLessThan(250);
      expect(times[1]).toBeLessThan(250);
      expect(times[2]).toBeLessThan(250);
      expect(times[3]).toBeGreaterThanOrEqual(280);
      // The fifth error reaches the hard limit: 500, then 421 and close.
      d.send('BOGUS5\r\n');
      const r = await d.replyN(2, 5000);
      expect(r.map((x) => x.code)).toEqual([500, 421]);
      await d.waitClosed();
      await healthy(g, `errors ${mode}`);
    });

    test('errors in mid-transaction up to the hard limit: 421, the open transaction never reaches DATA', async () => {
      const g = await guard({ smtp: { softErrorLimit: 2, hardErrorLimit: 3 } });
      const seen = since(backend);
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<errs@example.com>')).code).toBe(250);
      d.send('BOGUS1\r\nBOGUS2\r\nBOGUS3\r\nDATA\r\n');
      const r = await d.repliesUntilClose(6);
      expect(r.map((x) => x.code)).toEqual([500, 500, 500, 421]);
      await d.waitClosed();
      expect(seen()).not.toContain('DATA');
      await healthy(g, `errors-in-transaction ${mode}`);
    });

    test('transactions per session: the one past maxTransactions gets 421 and the session closes', async () => {
      const g = await guard({ smtp: { maxTransactions: 2 } });
      const seen = since(backend);
      const d = await greeted(g.port);
      for (let i = 0; i < 2; i++) {
        expect((await d.cmd(`MAIL FROM:<s${i}@elsewhere.test>`)).code).toBe(250);
        expect((await d.cmd('RSET')).code).toBe(250);
      }
      const r = await d.cmd('MAIL FROM:<s2@elsewhere.test>');
      expect(r.code).toBe(421);
      await d.waitClosed();
      expect(seen().filter((l) => l.startsWith('MAIL'))).toEqual(['MAIL FROM:<s0@elsewhere.test>', 'MAIL FROM:<s1@elsewhere.test>']);
      await healthy(g, `transactions ${mode}`);
    });

    test('an early talker gets 554 and is closed', async () => {
      const g = await guard({ smtp: { greetingDelay: '400ms' } });
      const seen = since(backend);
      const d = await Dialog.connect(g.port, { localAddress: STRANGER });
      d.send('EHLO impatient.test\r\n');
      const r = await d.reply();
      expect(r.code).toBe(554);
      await d.waitClosed();
      expect(seen()).not.toContain('EHLO impatient.test');
      await healthy(g, `early-talker ${mode}`);
    });

    test('earlyTalker: allow lets it through (the early command is answered after the greeting)', async () => {
      const g = await guard({ smtp: { greetingDelay: '300ms', earlyTalker: 'allow' } });
      const d = await Dialog.connect(g.port, { localAddress: STRANGER });
      d.send('EHLO impatient.test\r\n');
      const r = await d.replyN(2);
      expect(r.map((x) => x.code)).toEqual([220, 250]);
      expect((await d.cmd('QUIT')).code).toBe(221);
      await healthy(g, `early-allowed ${mode}`);
    });

    test('greeting delay: the greeting comes no sooner than greetingDelay', async () => {
      const g = await guard({ smtp: { greetingDelay: '300ms' } });
      const t = Date.now();
      const d = await Dialog.connect(g.port, { localAddress: STRANGER });
      expect((await d.reply()).code).toBe(220);
      expect(Date.now() - t).toBeGreaterThanOrEqual(290);
      d.close();
      await healthy(g, `greeting-delay ${mode}`);
    });
  });

  describe('timeouts', () => {
    test('idle command timeout: 421 4.4.2 and close', async () => {
      const g = await guard({ timeouts: { command: '300ms', data: '10s', session: '30s', drain: '1s' } });
      const d = await greeted(g.port);
      const t = Date.now();
      const r = await d.reply(3000);
      expect(r.code).toBe(421);
      expect(r.text).toContain('4.4.2');
      expect(Date.now() - t).toBeGreaterThanOrEqual(250);
      await d.waitClosed();
      await healthy(g, `idle ${mode}`);
    });

    test('idle command timeout in mid-transaction (MAIL and RCPT sent): 421, the transaction never reaches DATA', async () => {
      const g = await guard({ timeouts: { command: '300ms', data: '10s', session: '30s', drain: '1s' } });
      const seen = since(backend);
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<idle-tx@example.com>')).code).toBe(250);
      const r = await d.reply(3000);
      expect(r.code).toBe(421);
      expect(r.text).toContain('4.4.2');
      await d.waitClosed();
      expect(seen()).toContain('RCPT TO:<idle-tx@example.com>');
      expect(seen()).not.toContain('DATA');
      await healthy(g, `idle-in-transaction ${mode}`);
    });

    test('activity restarts the idle clock: commands every 150 ms outlive a 300 ms timeout, then silence gets 421', async () => {
      const g = await guard({ timeouts: { command: '300ms', data: '10s', session: '30s', drain: '1s' } });
      const d = await greeted(g.port);
      const t = Date.now();
      // Time passing is what is under test: a bounded number of fixed pauses, each under the timeout.
      for (let i = 0; i < 5; i++) {
        await new Promise((r) => setTimeout(r, 150));
        expect((await d.cmd('NOOP')).code).toBe(250);
      }
      expect(Date.now() - t).toBeGreaterThan(600);
      const quiet = Date.now();
      const r = await d.reply(3000);
      expect(r.code).toBe(421);
      expect(Date.now() - quiet).toBeGreaterThanOrEqual(250);
      await d.waitClosed();
      await healthy(g, `activity ${mode}`);
    });

    test('DATA inactivity timeout (shorter than the command timeout): 421, nothing delivered', async () => {
      const g = await guard({ timeouts: { command: '10s', data: '300ms', session: '30s', drain: '1s' } });
      const mark = backend.mark();
      const before = backend.messages.length;
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<slow@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      d.send(`Subject: stalled ${mode}\r\n\r\nhalf a message`);
      const r = await d.reply(3000);
      expect(r.code).toBe(421);
      await d.waitClosed();
      expect(backend.messages.length).toBe(before);
      await neverEnded(backend, mark, `Subject: stalled ${mode}`);
      await healthy(g, `data-timeout ${mode}`);
    });

    test('the command timeout applies again after DATA (timer not stuck on the DATA value)', async () => {
      const g = await guard({ timeouts: { command: '300ms', data: '10s', session: '30s', drain: '1s' } });
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<after@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd('Subject: x\r\n\r\ny\r\n.')).code).toBe(250);
      const r = await d.reply(3000);
      expect(r.code).toBe(421);
      await d.waitClosed();
      await healthy(g, `after-data ${mode}`);
    });

    test('whole-session timeout (longer idle timeout): 421 and close', async () => {
      const g = await guard({ timeouts: { command: '10s', data: '10s', session: '400ms', drain: '1s' } });
      const d = await greeted(g.port);
      const r = await d.reply(3000);
      expect(r.code).toBe(421);
      await d.waitClosed();
      await healthy(g, `session-timeout ${mode}`);
    });

    test('whole-session timeout in mid-DATA: 421, the message never delivered', async () => {
      const g = await guard({ timeouts: { command: '10s', data: '10s', session: '600ms', drain: '1s' } });
      const mark = backend.mark();
      const before = backend.messages.length;
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<session-cut@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      d.send(`Subject: session cut ${mode}\r\n\r\nfirst line\r\n`);
      const r = await d.reply(3000);
      expect(r.code).toBe(421);
      await d.waitClosed();
      expect(backend.messages.length).toBe(before);
      await neverEnded(backend, mark, `Subject: session cut ${mode}`);
      await healthy(g, `session-cut ${mode}`);
    });

    test('a backend that never answers RCPT: the client gets 4xx after the backend reply timeout, never 2xx', async () => {
      const mute = await startScriptedBackend({ onLine: (line) => (line === 'RCPT TO:<user@example.com>' ? null : undefined) });
      try {
        const g = await guard({ backend: { replyTimeout: '300ms' } }, mute.port);
        const d = await greeted(g.port);
        expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
        const r = await d.cmd('RCPT TO:<user@example.com>', 3000);
        expect(r.code).toBeGreaterThanOrEqual(400);
        expect(r.code).toBeLessThan(500);
        expect(mute.lines).toContain('RCPT TO:<user@example.com>');
        if (pooled) {
          // Pooled: that transaction is lost, not the session (its RCPTs get 451, never a 5xx a client
          // would bounce on); the client starts again with MAIL on another backend session.
          expect((await d.cmd('RCPT TO:<other@example.com>')).code).toBe(451);
          await d.sendMessage('other@example.com', `after rcpt timeout ${mode}`);
          expect(mute.lines).toContain(`Subject: after rcpt timeout ${mode}`);
          expect((await d.cmd('QUIT')).code).toBe(221);
        }
        await d.waitClosed();
        // The next client's message goes through (the timed-out backend session is not lent again).
        await nextClientSends(g, `next after rcpt timeout ${mode}`);
        expect(mute.lines).toContain(`Subject: next after rcpt timeout ${mode}`);
        await noSessionLeft(g);
      } finally {
        await mute.close();
      }
    });

    test('a backend that never answers DATA: 4xx after the reply timeout, never 354; the session goes on (pooled) or closes', async () => {
      let muted = false;
      const mute = await startScriptedBackend({
        onLine: (line) => {
          if (line !== 'DATA' || muted) return undefined;
          muted = true; // the first DATA only
          return null;
        },
      });
      try {
        const g = await guard({ backend: { replyTimeout: '300ms' } }, mute.port);
        const d = await greeted(g.port);
        d.send('MAIL FROM:<s@elsewhere.test>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n');
        expect((await d.reply()).code).toBe(250);
        expect((await d.reply()).code).toBe(250);
        const r = await d.reply(3000);
        expect(r.code).toBeGreaterThanOrEqual(400);
        expect(r.code).toBeLessThan(500);
        expect(muted).toBe(true);
        if (pooled) {
          // Only that transaction is lost: the next command is read and answered at once.
          expect((await d.cmd('NOOP', 1500)).code).toBe(250);
          await d.sendMessage('user@example.com', `after DATA timeout ${mode}`);
          expect(mute.lines).toContain(`Subject: after DATA timeout ${mode}`);
          expect((await d.cmd('QUIT')).code).toBe(221);
        }
        await d.waitClosed();
        await nextClientSends(g, `next after DATA timeout ${mode}`);
        expect(mute.lines).toContain(`Subject: next after DATA timeout ${mode}`);
        await noSessionLeft(g);
      } finally {
        await mute.close();
      }
    });

    test('a backend that never answers end-of-data: 4xx, never 250', async () => {
      let muted = false;
      const mute = await startScriptedBackend({
        onLine: (line) => {
          if (line !== '.' || muted) return undefined;
          muted = true; // the first end-of-data only: the messages after it are answered
          return null;
        },
      });
      try {
        const g = await guard({ backend: { replyTimeout: '300ms', dataReplyTimeout: '300ms' } }, mute.port);
        const d = await greeted(g.port);
        expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
        expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
        expect((await d.cmd('DATA')).code).toBe(354);
        const r = await d.cmd('Subject: x\r\n\r\ny\r\n.', 3000);
        expect(r.code).toBeGreaterThanOrEqual(400);
        expect(r.code).toBeLessThan(500);
        expect(muted).toBe(true);
        if (pooled) {
          await d.sendMessage('user@example.com', `after data timeout ${mode}`);
          expect((await d.cmd('QUIT')).code).toBe(221);
        }
        await d.waitClosed();
        await nextClientSends(g, `next after data timeout ${mode}`);
        expect(mute.lines).toContain(`Subject: next after data timeout ${mode}`);
        await noSessionLeft(g);
      } finally {
        await mute.close();
      }
    });
  });
});
