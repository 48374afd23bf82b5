/**
 * Issue 3 acceptance, graceful shutdown (guard.close(), what SIGTERM calls): listeners stop
 * accepting; an idle session gets 421 4.3.2 at once; a session in DATA finishes its message
 * within the drain timeout and is then closed; one still in DATA past the drain timeout is
 * closed without its message being delivered.
 */
import net from 'node:net';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { withTimeout } from '../helpers/with-timeout.js';

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

async function inData(port: number, rcpt: string): Promise<Dialog> {
  const d = await greeted(port);
  expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
  expect((await d.cmd(`RCPT TO:<${rcpt}>`)).code).toBe(250);
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

test('idle session: 421 4.3.2 at once; session in DATA: finishes (250) within the drain timeout, then closed', async () => {
  const g = await startGuard({ backendPort: backend.port, config: { timeouts: { command: '5m', data: '3m', session: '30m', drain: '5s' } } });
  const before = backend.messages.length;
  const idle = await greeted(g.port);
  const busy = await inData(g.port, 'drained@example.com');
  busy.send('Subject: drain\r\n\r\nfirst half\r\n');
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
  expect(backend.messages[before]!.rcptTo).toEqual(['drained@example.com']);
  expect(backend.messages[before]!.body.toString('latin1')).toBe('Subject: drain\r\n\r\nfirst half\r\nsecond half\r\n');
});

test('a session still in DATA past a short drain timeout is closed, its message never delivered', async () => {
  const g = await startGuard({ backendPort: backend.port, config: { timeouts: { command: '5m', data: '3m', session: '30m', drain: '300ms' } } });
  const before = backend.messages.length;
  const connBefore = backend.connections.length;
  const slow = await inData(g.port, 'too-slow@example.com');
  slow.send('Subject: never finished\r\n\r\npartial\r\n');
  const started = Date.now();
  await withTimeout(g.stop(), 4000, 'guard.close()');
  const r = await slow.repliesUntilClose(5);
  expect(r.map((x) => x.code)).toEqual([421]);
  await slow.waitClosed();
  expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  // Whatever the client sends now goes nowhere; the backend never got an end-of-data.
  expect(backend.messages.length).toBe(before);
  const wire = backend.connections.slice(connBefore).map((c) => Buffer.concat(c).toString('latin1')).join('');
  expect(wire).toContain('partial\r\n');
  expect(wire).not.toContain('\r\n.\r\n');
});
