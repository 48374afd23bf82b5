/**
 * Issue 3 acceptance, limits and timeouts (short values in test config): line length,
 * recipients per message, SIZE at MAIL and bytes in DATA, errors per session (soft delay, hard
 * close), transactions per session, early talkers, greeting delay; idle command, DATA
 * inactivity, whole-session and backend reply timeouts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { withTimeout } from '../helpers/with-timeout.js';
import { startScriptedBackend } from '../helpers/scripted-backend.js';

const STRANGER = '127.0.0.9';

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

async function guard(config: Record<string, unknown>, backendPort = backend.port): Promise<StartedGuard> {
  const timeouts = { drain: '500ms', ...(config.timeouts as Record<string, string> | undefined) };
  const g = await startGuard({ backendPort, config: { ...config, timeouts } });
  guards.push(g);
  return g;
}

async function greeted(port: number): Promise<Dialog> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}

describe('limits', () => {
  test('a line over maxLineBytes gets 500 5.5.2 and the session stays in sync', async () => {
    const g = await guard({ smtp: { maxLineBytes: 512 } });
    const d = await greeted(g.port);
    d.send(`NOOP ${'x'.repeat(600)}\r\nNOOP\r\nMAIL FROM:<${'a'.repeat(700)}@elsewhere.test>\r\nMAIL FROM:<s@elsewhere.test>\r\n`);
    const r = await d.replyN(4);
    expect(r.map((x) => x.code)).toEqual([500, 250, 500, 250]);
    expect(r[0]!.text).toContain('5.5.2');
    expect(backend.lines().some((l) => l.includes('aaaaaaaaaa'))).toBe(false);
    expect((await d.cmd('QUIT')).code).toBe(221);
  });

  test('a line far over the limit (64 KiB, no CRLF yet) is answered 500 and memory stays bounded', async () => {
    const g = await guard({ smtp: { maxLineBytes: 512 } });
    const d = await greeted(g.port);
    d.send(`NOOP ${'y'.repeat(65536)}`);
    d.send('\r\nNOOP\r\n');
    const r = await d.replyN(2);
    expect(r.map((x) => x.code)).toEqual([500, 250]);
    expect((await d.cmd('QUIT')).code).toBe(221);
  });

  test('recipients past maxRecipients get 452 4.5.3; the message goes to the first ones only', async () => {
    const g = await guard({ smtp: { maxRecipients: 3 } });
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
  });

  test('SIZE= at MAIL over the maximum gets 552 5.3.4; EHLO advertises the guard\'s maximum', async () => {
    const g = await guard({ smtp: { maxMessageBytes: 10000 } });
    const d = await Dialog.connect(g.port, { localAddress: STRANGER });
    await d.reply();
    const ehlo = await d.cmd('EHLO client.test');
    expect(ehlo.lines).toContain('SIZE 10000');
    const r = await d.cmd('MAIL FROM:<s@elsewhere.test> SIZE=10001');
    expect(r.code).toBe(552);
    expect(r.text).toContain('5.3.4');
    expect((await d.cmd('MAIL FROM:<s@elsewhere.test> SIZE=10000')).code).toBe(250);
    expect(backend.lines()).not.toContain('MAIL FROM:<s@elsewhere.test> SIZE=10001');
  });

  test('message bytes over the maximum in DATA: 552 5.3.4 and nothing is delivered', async () => {
    const g = await guard({ smtp: { maxMessageBytes: 10000 } });
    const before = backend.messages.length;
    const d = await greeted(g.port);
    expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<big@example.com>')).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    const line = `${'z'.repeat(98)}\r\n`;
    d.send(`Subject: too big\r\n\r\n${line.repeat(150)}.\r\n`);
    const r = await d.reply();
    expect(r.code).toBe(552);
    expect(r.text).toContain('5.3.4');
    await d.waitClosed();
    // Give the backend a chance to (wrongly) finish: the session's backend connection is gone.
    const dataConn = Buffer.concat(backend.connections.at(-1)!).toString('latin1');
    expect(dataConn).not.toContain('\r\n.\r\n');
    expect(backend.messages.length).toBe(before);
  });

  test('a message of exactly maxMessageBytes is delivered; one byte more is refused', async () => {
    const g = await guard({ smtp: { maxMessageBytes: 1000 } });
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
    d.send(`x${exact}.\r\n`);
    expect((await d.reply()).code).toBe(552);
    await d.waitClosed();
    expect(backend.messages.length).toBe(before + 1);
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
  });

  test('transactions per session: the one past maxTransactions gets 421 and the session closes', async () => {
    const g = await guard({ smtp: { maxTransactions: 2 } });
    const d = await greeted(g.port);
    for (let i = 0; i < 2; i++) {
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RSET')).code).toBe(250);
    }
    const r = await d.cmd('MAIL FROM:<s@elsewhere.test>');
    expect(r.code).toBe(421);
    await d.waitClosed();
  });

  test('an early talker gets 554 and is closed', async () => {
    const g = await guard({ smtp: { greetingDelay: '400ms' } });
    const d = await Dialog.connect(g.port, { localAddress: STRANGER });
    d.send('EHLO impatient.test\r\n');
    const r = await d.reply();
    expect(r.code).toBe(554);
    await d.waitClosed();
  });

  test('earlyTalker: allow lets it through (the early command is answered after the greeting)', async () => {
    const g = await guard({ smtp: { greetingDelay: '300ms', earlyTalker: 'allow' } });
    const d = await Dialog.connect(g.port, { localAddress: STRANGER });
    d.send('EHLO impatient.test\r\n');
    const r = await d.replyN(2);
    expect(r.map((x) => x.code)).toEqual([220, 250]);
    expect((await d.cmd('QUIT')).code).toBe(221);
  });

  test('greeting delay: the greeting comes no sooner than greetingDelay', async () => {
    const g = await guard({ smtp: { greetingDelay: '300ms' } });
    const t = Date.now();
    const d = await Dialog.connect(g.port, { localAddress: STRANGER });
    expect((await d.reply()).code).toBe(220);
    expect(Date.now() - t).toBeGreaterThanOrEqual(290);
    d.close();
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
  });

  test('DATA inactivity timeout (shorter than the command timeout): 421, nothing delivered', async () => {
    const g = await guard({ timeouts: { command: '10s', data: '300ms', session: '30s', drain: '1s' } });
    const before = backend.messages.length;
    const d = await greeted(g.port);
    expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<slow@example.com>')).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    d.send('Subject: stalled\r\n\r\nhalf a message');
    const r = await d.reply(3000);
    expect(r.code).toBe(421);
    await d.waitClosed();
    expect(backend.messages.length).toBe(before);
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
  });

  test('whole-session timeout (longer idle timeout): 421 and close', async () => {
    const g = await guard({ timeouts: { command: '10s', data: '10s', session: '400ms', drain: '1s' } });
    const d = await greeted(g.port);
    const r = await d.reply(3000);
    expect(r.code).toBe(421);
    await d.waitClosed();
  });

  test('a backend that never answers RCPT: the client gets 4xx after the backend reply timeout, never 2xx', async () => {
    const mute = await startScriptedBackend({ onLine: (line) => (line.startsWith('RCPT') ? null : undefined) });
    try {
      const g = await guard({ backend: { replyTimeout: '300ms' } }, mute.port);
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      const r = await d.cmd('RCPT TO:<user@example.com>', 3000);
      expect(r.code).toBeGreaterThanOrEqual(400);
      expect(r.code).toBeLessThan(500);
      expect(mute.lines).toContain('RCPT TO:<user@example.com>');
    } finally {
      await mute.close();
    }
  });

  test('a backend that never answers end-of-data: 4xx, never 250', async () => {
    const mute = await startScriptedBackend({ onLine: (line) => (line === '.' ? null : undefined) });
    try {
      const g = await guard({ backend: { replyTimeout: '300ms', dataReplyTimeout: '300ms' } }, mute.port);
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      const r = await d.cmd('Subject: x\r\n\r\ny\r\n.', 3000);
      expect(r.code).toBeGreaterThanOrEqual(400);
      expect(r.code).toBeLessThan(500);
    } finally {
      await mute.close();
    }
  });
});
