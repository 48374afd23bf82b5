/**
 * Issue 3 acceptance, graceful shutdown (guard.close(), what SIGTERM calls): listeners stop
 * accepting; an idle session gets 421 4.3.2 at once; a session in a transaction finishes its
 * message within the drain timeout and is then closed; one still in DATA past the drain timeout is
 * closed without its message being delivered. Afterwards no client session is counted and no
 * backend connection is left open (in pooled mode the pool's warm sessions included).
 * All of it twice: one backend connection per client, and pooled mode (the guard greets and
 * answers EHLO itself and lends a pre-opened backend session from MAIL to end-of-data), where what
 * the backend saw is searched across all its connections since the test began.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { POOLED, MODES } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { until, withTimeout } from '../helpers/with-timeout.js';

const STRANGER = '127.0.0.9';

let backend: RecordingBackend;

beforeAll(async () => {
  backend = await startRecordingBackend();
});
afterAll(async () => {
  await backend?.close();
});

async function greeted(port: number): Promise<Dialog> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}

async function inTransaction(port: number, rcpt: string): Promise<Dialog> {
  const d = await greeted(port);
  expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
  expect((await d.cmd(`RCPT TO:<${rcpt}>`)).code).toBe(250);
  return d;
}

async function inData(port: number, rcpt: string): Promise<Dialog> {
  const d = await inTransaction(port, rcpt);
  expect((await d.cmd('DATA')).code).toBe(354);
  return d;
}

function refused(port: number): Promise<boolean> {
  return withTimeout(
    new Promise((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' });
      s.once('connect', () => {
        s.destroy();
        resolve(false);
      });
      s.once('error', () => resolve(true));
    }),
    3000,
    'connect attempt',
  );
}

/** After guard.close(): no client session counted, and every backend connection closed (the pool's too). */
async function nothingLeft(g: StartedGuard): Promise<void> {
  expect(g.guard.services.registry.size).toBe(0);
  expect(await g.guard.metrics.register.metrics()).toMatch(/relay_guard_sessions_active\{listener="mx"\} 0\n/);
  await until(() => backend.openConnections() === 0, 3000, 'every backend connection closed');
}

for (const { mode, config: modeConfig } of MODES) describe(`${mode} mode`, () => {
  const pooled = mode === 'pooled';

  /** `oneSession`: pooled mode with a single backend session, so a second transaction waits for it. */
  async function guard(drain: string, oneSession = false): Promise<StartedGuard> {
    const base = pooled && oneSession ? { backend: { ...POOLED.backend, pool: { ...POOLED.backend.pool, minIdle: 1, max: 1 } } } : modeConfig;
    const g = await startGuard({ backendPort: backend.port, config: { ...base, timeouts: { command: '5m', data: '3m', session: '30m', drain } } });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(pooled);
    return g;
  }

  test('idle session: 421 4.3.2 at once; session in DATA: finishes (250) within the drain timeout, then closed', async () => {
    const g = await guard('5s');
    const before = backend.messages.length;
    const idle = await greeted(g.port);
    const busy = await inData(g.port, `drained-${mode}@example.com`);
    busy.send(`Subject: drain ${mode}\r\n\r\nfirst half\r\n`);
    const started = Date.now();
    const closing = g.stop();
    const bye = await idle.reply(2000);
    expect(bye.code).toBe(421);
    expect(bye.text).toContain('4.3.2');
    expect(Date.now() - started).toBeLessThan(1500);
    await idle.waitClosed();
    // New connections are no longer accepted.
    expect(await refused(g.port)).toBe(true);
    // The transaction in progress completes.
    busy.send('second half\r\n.\r\n');
    const r = await busy.repliesUntilClose(5);
    expect(r[0]?.code, JSON.stringify(r)).toBe(250);
    expect(r.slice(1).every((x) => x.code === 421)).toBe(true);
    await busy.waitClosed();
    await withTimeout(closing, 5000, 'guard.close()');
    expect(Date.now() - started).toBeLessThan(4500);
    await withTimeout(backend.waitForMessages(before + 1), 3000, 'drained message');
    expect(backend.messages.slice(before).map((m) => m.rcptTo)).toEqual([[`drained-${mode}@example.com`]]);
    expect(backend.messages[before]!.body.toString('latin1')).toBe(`Subject: drain ${mode}\r\n\r\nfirst half\r\nsecond half\r\n`);
    await nothingLeft(g);
  });

  test('a session between RCPT and DATA at shutdown may still send its message, then gets 421', async () => {
    const g = await guard('5s');
    const before = backend.messages.length;
    const busy = await inTransaction(g.port, `mid-${mode}@example.com`);
    const closing = g.stop();
    expect(await refused(g.port)).toBe(true);
    expect((await busy.cmd('DATA')).code).toBe(354);
    busy.send(`Subject: mid ${mode}\r\n\r\nbody\r\n.\r\n`);
    const r = await busy.repliesUntilClose(5);
    expect(r.map((x) => x.code)).toEqual([250, 421]);
    expect(r[1]!.text).toContain('4.3.2');
    await busy.waitClosed();
    await withTimeout(closing, 5000, 'guard.close()');
    await withTimeout(backend.waitForMessages(before + 1), 3000, 'drained message');
    expect(backend.messages.slice(before).map((m) => m.body.toString('latin1'))).toEqual([`Subject: mid ${mode}\r\n\r\nbody\r\n`]);
    await nothingLeft(g);
  });

  test('a session still in DATA past a short drain timeout is closed, its message never delivered', async () => {
    const g = await guard('300ms');
    const before = backend.messages.length;
    const mark = backend.mark();
    const slow = await inData(g.port, `too-slow-${mode}@example.com`);
    const marker = `Subject: never finished ${mode}`;
    slow.send(`${marker}\r\n\r\npartial\r\n`);
    await until(() => backend.receivedSince(mark).some((c) => c.text.includes('partial\r\n')), 3000, 'the start of the message at the backend');
    const started = Date.now();
    await withTimeout(g.stop(), 4000, 'guard.close()');
    const r = await slow.repliesUntilClose(5);
    expect(r.map((x) => x.code)).toEqual([421]);
    await slow.waitClosed();
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    // Whatever the client sends now goes nowhere; the backend never got an end-of-data.
    expect(backend.messages.length).toBe(before);
    const carrying = backend.receivedSince(mark).filter((c) => c.text.includes(marker));
    expect(carrying.length).toBe(1);
    expect(carrying[0]!.text.slice(carrying[0]!.text.indexOf(marker))).not.toContain('\r\n.\r\n');
    await nothingLeft(g);
    expect(backend.messages.length).toBe(before);
  });

  test('a client waiting for a backend session at shutdown (pooled: the only one is busy) gets it when the busy one finishes, and delivers too', async () => {
    const g = await guard('5s', true);
    const before = backend.messages.length;
    const busy = await inData(g.port, `busy-${mode}@example.com`);
    busy.send(`Subject: busy ${mode}\r\n\r\nfirst half\r\n`);
    const waiting = await greeted(g.port);
    waiting.send('MAIL FROM:<w@elsewhere.test>\r\n');
    if (pooled) await until(() => g.guard.services.pool!.waiting === 1, 3000, 'the second client waiting for the backend session');
    else expect((await waiting.reply()).code).toBe(250);
    const closing = g.stop();
    expect(await refused(g.port)).toBe(true);
    busy.send('second half\r\n.\r\n');
    expect((await busy.repliesUntilClose(5)).map((x) => x.code)).toEqual([250, 421]);
    if (pooled) expect((await waiting.reply()).code).toBe(250);
    expect((await waiting.cmd(`RCPT TO:<waiting-${mode}@example.com>`)).code).toBe(250);
    expect((await waiting.cmd('DATA')).code).toBe(354);
    waiting.send(`Subject: waited ${mode}\r\n\r\nbody\r\n.\r\n`);
    expect((await waiting.repliesUntilClose(5)).map((x) => x.code)).toEqual([250, 421]);
    await withTimeout(closing, 5000, 'guard.close()');
    await withTimeout(backend.waitForMessages(before + 2), 3000, 'both messages');
    expect(backend.messages.slice(before).map((m) => m.body.toString('latin1'))).toEqual([
      `Subject: busy ${mode}\r\n\r\nfirst half\r\nsecond half\r\n`,
      `Subject: waited ${mode}\r\n\r\nbody\r\n`,
    ]);
    await nothingLeft(g);
  });

  test('past the drain timeout a session in DATA and one waiting for a backend session both get 421; nothing is delivered', async () => {
    const g = await guard('300ms', true);
    const before = backend.messages.length;
    const mark = backend.mark();
    const busy = await inData(g.port, `stuck-${mode}@example.com`);
    const marker = `Subject: stuck ${mode}`;
    busy.send(`${marker}\r\n\r\npartial\r\n`);
    await until(() => backend.receivedSince(mark).some((c) => c.text.includes(marker)), 3000, 'the start of the message at the backend');
    const waiting = await greeted(g.port);
    waiting.send('MAIL FROM:<w@elsewhere.test>\r\n');
    if (pooled) await until(() => g.guard.services.pool!.waiting === 1, 3000, 'the second client waiting for the backend session');
    else expect((await waiting.reply()).code).toBe(250);
    await withTimeout(g.stop(), 4000, 'guard.close()');
    expect((await busy.repliesUntilClose(5)).map((x) => x.code)).toEqual([421]);
    expect((await waiting.repliesUntilClose(5)).map((x) => x.code)).toEqual([421]);
    await nothingLeft(g);
    expect(backend.messages.length).toBe(before);
    const carrying = backend.receivedSince(mark).filter((c) => c.text.includes(marker));
    expect(carrying.length).toBe(1);
    expect(carrying[0]!.text.slice(carrying[0]!.text.indexOf(marker))).not.toContain('\r\n.\r\n');
  });
});
