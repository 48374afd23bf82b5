/**
 * Issue 3 acceptance: Postfix's smtp-source (a real, lock-step SMTP client) sends 50 messages
 * over 5 parallel sessions through the guard; all 50 reach the recording backend, each once.
 * Twice: one backend connection per client (smtp-source opens a session per message, so one
 * backend connection each), and pooled mode (the guard greets and answers EHLO itself and lends
 * one of at most 4 pre-opened backend sessions per transaction: 5 parallel clients never open a
 * fifth backend connection).
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { MODES, POOLED } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { until, withTimeout } from '../helpers/with-timeout.js';

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

for (const { mode, config } of MODES) describe(`${mode} mode`, () => {
  const pooled = mode === 'pooled';
  /** The pool's cap on backend connections (pooled mode). */
  const poolMax = POOLED.backend.pool.max;
  let backend: RecordingBackend;
  let g: StartedGuard;

  beforeAll(async () => {
    backend = await startRecordingBackend();
    g = await startGuard({ backendPort: backend.port, config });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(pooled);
  });

  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  /** Every client session is gone: the registry is empty and the gauge back to 0. */
  async function noSessionLeft(): Promise<void> {
    await until(() => g.guard.services.registry.size === 0, 3000, 'no client session left');
    expect(await g.guard.metrics.register.metrics()).toMatch(/relay_guard_sessions_active\{listener="mx"\} 0\n/);
  }

  test('smtp-source -s 5 -m 50: every message arrives, once', async () => {
    const connsBefore = backend.connections.length;
    const { code, out } = await run(
      '/usr/sbin/smtp-source',
      ['-s', '5', '-m', '50', '-l', '2000', '-M', 'source.test', '-f', `load-${mode}@source.test`, '-t', 'user@example.com', `127.0.0.1:${g.port}`],
      30_000,
    );
    expect(code, out).toBe(0);
    await withTimeout(backend.waitForMessages(50), 10_000, '50 messages');
    expect(backend.messages).toHaveLength(50);
    for (const m of backend.messages) {
      expect(m.mailFrom).toBe(`load-${mode}@source.test`);
      expect(m.rcptTo).toEqual(['user@example.com']);
      expect(m.body.length).toBeGreaterThanOrEqual(2000);
    }
    if (pooled) {
      // 50 client sessions, 5 at a time, carried by the pool's few backend sessions.
      expect(backend.maxConcurrent()).toBeLessThanOrEqual(poolMax);
      expect(backend.connections.length - connsBefore).toBeLessThanOrEqual(poolMax);
    } else {
      // One backend connection per client session (smtp-source without -d: a session per message).
      expect(backend.connections.length - connsBefore).toBe(50);
    }
    await noSessionLeft();
    expect(backend.messages).toHaveLength(50);
  });

  test('smtp-source -d (many messages per session, 3 recipients each): every message arrives, once', async () => {
    const before = backend.messages.length;
    const connsBefore = backend.connections.length;
    const { code, out } = await run(
      '/usr/sbin/smtp-source',
      ['-d', '-s', '2', '-m', '20', '-r', '3', '-f', `many-${mode}@source.test`, '-t', 'user@example.com', `127.0.0.1:${g.port}`],
      30_000,
    );
    expect(code, out).toBe(0);
    await withTimeout(backend.waitForMessages(before + 20), 10_000, '20 more messages');
    const mine = backend.messages.slice(before);
    expect(mine).toHaveLength(20);
    for (const m of mine) {
      expect(m.mailFrom).toBe(`many-${mode}@source.test`);
      // -r 3: three recipients per message, numbered from the -t address.
      expect(m.rcptTo).toHaveLength(3);
    }
    if (pooled) expect(backend.maxConcurrent()).toBeLessThanOrEqual(poolMax);
    else expect(backend.connections.length - connsBefore).toBe(2);
    await noSessionLeft();
    expect(backend.messages.length - before).toBe(20);
  });
});
