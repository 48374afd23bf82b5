/**
 * Issue 5 acceptance, several guards: two complete guards (createGuard, each with its own rules
 * directory, metrics registry and listener) share ONE private redis-server through config
 * `limits.store: redis`. Real clients send mail through either guard; one global limit holds.
 * Redis stopped mid-test: mail keeps flowing on local counters (relay_guard_limit_store_fallback 1);
 * Redis back on the same port: shared counting resumes.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { FallbackLimitStore } from '../../src/limits/fallback-store.js';
import type { RateLimiter } from '../../src/limits/limiter.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';
import { Dialog } from '../helpers/dialog.js';

const LIMIT = 5;
const limits = {
  enabled: true,
  prefixV4: 24,
  prefixV6: 64,
  limits: [{ id: 'messages-per-ip', event: 'message', key: 'ip', limit: LIMIT, window: '1m', action: 'tempfail' }],
};

let redis: RedisServer;
let backend: RecordingBackend;
let a: StartedGuard;
let b: StartedGuard;

/** The guard's limit store (not part of the Guard API: reached through the limiter for the test). */
function storeOf(g: StartedGuard): FallbackLimitStore {
  const limiter = g.guard.services.limiter as RateLimiter | undefined as unknown as { opts: { store: FallbackLimitStore } };
  return limiter.opts.store;
}

/** Until Redis answers this guard's PING (bounded): the guard left fallback, or never entered it. */
async function redisReady(g: StartedGuard, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  const store = storeOf(g);
  for (let i = 0; ; i++) {
    if (await store.probe()) return;
    if (Date.now() > deadline) throw new Error(`redis not ready for the guard within ${ms} ms (${i} probes)`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Send MAIL/RSET from a throw-away client until the guard's fallback gauge is back to 0 (bounded). */
async function recoversWithTraffic(g: StartedGuard, ms = 10_000): Promise<void> {
  const d = await open(g, '127.0.0.29');
  const deadline = Date.now() + ms;
  try {
    while ((await fallbackGauge(g)) !== 0) {
      if (Date.now() > deadline) throw new Error(`guard still in fallback after ${ms} ms`);
      await d.cmd('MAIL FROM:<probe@sender.test>');
      expect((await d.cmd('RSET')).code).toBe(250);
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    d.close();
  }
}

async function fallbackGauge(g: StartedGuard): Promise<number | undefined> {
  return (await g.guard.metrics.limitStoreFallback.get()).values[0]?.value;
}

async function startOne(): Promise<StartedGuard> {
  return startGuard({
    backendPort: backend.port,
    rules: { limits },
    config: { timeouts: { drain: '1s' }, limits: { store: 'redis', redisUrl: redis.url, maxEntries: 1000 } },
  });
}

beforeAll(async () => {
  redis = await startRedisServer();
  backend = await startRecordingBackend();
  a = await startOne();
  b = await startOne();
  await Promise.all([redisReady(a), redisReady(b)]);
});

afterAll(async () => {
  await a?.stop();
  await b?.stop();
  await backend?.close();
  await redis?.stop();
});

async function open(g: StartedGuard, from: string): Promise<Dialog> {
  const d = await Dialog.connect(g.port, { localAddress: from });
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}

/** One message attempt per entry, alternating sessions; returns the MAIL reply codes. */
async function attempts(sessions: Dialog[], n: number, tag: string): Promise<number[]> {
  const codes: number[] = [];
  for (let i = 0; i < n; i++) {
    const d = sessions[i % sessions.length]!;
    const mail = await d.cmd(`MAIL FROM:<${tag}@sender.test>`);
    codes.push(mail.code);
    if (mail.code !== 250) continue;
    expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    expect((await d.cmd(`Subject: ${tag}-${i}\r\n\r\n${tag} ${i}\r\n.`)).code).toBe(250);
  }
  return codes;
}

const delivered = (tag: string) => backend.messages.filter((m) => m.mailFrom === `${tag}@sender.test`).length;

describe('two guards, one Redis', () => {
  test(`one global limit: ${LIMIT} messages per ip per minute across both guards; the 6th through either gets 450 4.7.1`, async () => {
    const sa = await open(a, '127.0.0.21');
    const sb = await open(b, '127.0.0.21');
    const codes = await attempts([sa, sb], 8, 'shared');
    expect(codes).toEqual([250, 250, 250, 250, 250, 450, 450, 450]);
    const over = await sb.cmd('MAIL FROM:<shared@sender.test>');
    expect(over.text).toContain('4.7.1');
    expect(delivered('shared')).toBe(LIMIT);
    expect(await fallbackGauge(a)).toBe(0);
    expect(await fallbackGauge(b)).toBe(0);
    // Another client has its own budget.
    const other = await open(a, '127.0.0.22');
    expect(await attempts([other], 1, 'other')).toEqual([250]);
    for (const d of [sa, sb, other]) d.close();
  });

  test('Redis stopped: mail keeps flowing on local counters; Redis back: shared counting resumes', async () => {
    await redis.stop({ abrupt: true });
    try {
      // Each guard now counts alone: the limit holds per guard, and nothing stalls.
      const sa = await open(a, '127.0.0.23');
      const sb = await open(b, '127.0.0.23');
      const started = Date.now();
      const onA = await attempts([sa], LIMIT + 1, 'down-a');
      const onB = await attempts([sb], LIMIT + 1, 'down-b');
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(onA).toEqual([250, 250, 250, 250, 250, 450]);
      expect(onB).toEqual([250, 250, 250, 250, 250, 450]);
      expect(delivered('down-a') + delivered('down-b')).toBe(2 * LIMIT);
      expect(await fallbackGauge(a)).toBe(1);
      expect(await fallbackGauge(b)).toBe(1);
      const errors = (await a.guard.metrics.limitStoreErrors.get()).values.find((v) => v.labels.store === 'redis')?.value ?? 0;
      expect(errors).toBeGreaterThanOrEqual(1);
      sa.close();
      sb.close();
    } finally {
      await redis.start();
    }
    // Recovery by itself: traffic makes each guard probe Redis (at most once a second) and leave fallback.
    await Promise.all([recoversWithTraffic(a), recoversWithTraffic(b)]);
    expect(await fallbackGauge(a)).toBe(0);
    expect(await fallbackGauge(b)).toBe(0);
    expect(a.logs.some((l) => l.msg === 'limit store unreachable, using local counters')).toBe(true);
    expect(a.logs.some((l) => l.msg === 'limit store recovered')).toBe(true);

    const sa = await open(a, '127.0.0.24');
    const sb = await open(b, '127.0.0.24');
    expect(await attempts([sa, sb], 7, 'back')).toEqual([250, 250, 250, 250, 250, 450, 450]);
    expect(delivered('back')).toBe(LIMIT);
    sa.close();
    sb.close();
  });
});
