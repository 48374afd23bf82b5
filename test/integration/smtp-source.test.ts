/**
 * Issue 3 acceptance: Postfix's smtp-source (a real, lock-step SMTP client) sends 50 messages
 * over 5 parallel sessions through the guard; all 50 reach the recording backend.
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { withTimeout } from '../helpers/with-timeout.js';

let backend: RecordingBackend;
let g: StartedGuard;

beforeAll(async () => {
  backend = await startRecordingBackend();
  g = await startGuard({ backendPort: backend.port });
});

afterAll(async () => {
  await g?.stop();
  await backend?.close();
});

function run(cmd: string, args: string[], ms: number): Promise<{ code: number | null; out: string }> {
  return withTimeout(
    new Promise((resolve, reject) => {
      const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', (c: Buffer) => (out += c.toString()));
      p.stderr.on('data', (c: Buffer) => (out += c.toString()));
      p.on('error', reject);
      p.on('close', (code) => resolve({ code, out }));
    }),
    ms,
    `${cmd} to exit`,
  );
}

test('smtp-source -s 5 -m 50: every message arrives', async () => {
  const { code, out } = await run(
    '/usr/sbin/smtp-source',
    ['-s', '5', '-m', '50', '-l', '2000', '-M', 'source.test', '-f', 'load@source.test', '-t', 'user@example.com', `127.0.0.1:${g.port}`],
    30_000,
  );
  expect(code, out).toBe(0);
  await withTimeout(backend.waitForMessages(50), 10_000, '50 messages');
  expect(backend.messages).toHaveLength(50);
  for (const m of backend.messages) {
    expect(m.mailFrom).toBe('load@source.test');
    expect(m.rcptTo).toEqual(['user@example.com']);
    expect(m.body.length).toBeGreaterThanOrEqual(2000);
  }
});

test('smtp-source -d (many messages per session, 3 recipients each): every message arrives', async () => {
  const before = backend.messages.length;
  const { code, out } = await run(
    '/usr/sbin/smtp-source',
    ['-d', '-s', '2', '-m', '20', '-r', '3', '-f', 'load@source.test', '-t', 'user@example.com', `127.0.0.1:${g.port}`],
    30_000,
  );
  expect(code, out).toBe(0);
  await withTimeout(backend.waitForMessages(before + 20), 10_000, '20 more messages');
  expect(backend.messages.length - before).toBe(20);
});
