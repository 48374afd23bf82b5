/**
 * Several guards, one Redis: two RateLimiters, each with its own FallbackLimitStore, share one
 * global limit through a private redis-server; killing Redis keeps them answering from local
 * counters; restarting it brings the shared counts back.
 */
import { once } from 'node:events';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { systemClock } from '../../src/clock.js';
import { BanList } from '../../src/limits/bans.js';
import { FallbackLimitStore } from '../../src/limits/fallback-store.js';
import { gcraStep } from '../../src/limits/gcra.js';
import { RateLimiter, type LimitSubject } from '../../src/limits/limiter.js';
import { RedisLimitStore } from '../../src/limits/redis-store.js';
import type { LimitsRules } from '../../src/limits/schema.js';
import { createMetrics, type Metrics } from '../../src/observability/metrics.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';

let server: RedisServer;
const prefix = `relay-guard-test:${process.pid}:`;
const rules: LimitsRules = {
  enabled: true,
  prefixV4: 24,
  prefixV6: 64,
  limits: [
    { id: 'messages-per-ip', event: 'message', key: 'ip', limit: 5, window: '1h', action: 'tempfail' },
    { id: 'relay-denied-per-ip', event: 'relay-denied', key: 'ip', limit: 1, window: '1h', action: 'ban', ban: '1m', maxBan: '1h' },
  ],
};

interface Guard {
  redis: RedisLimitStore;
  store: FallbackLimitStore;
  limiter: RateLimiter;
  metrics: Metrics;
  bans: BanList;
}

function guard(): Guard {
  const metrics = createMetrics(new Registry(), { defaultMetrics: false });
  const redis = new RedisLimitStore({ url: server.url, keyPrefix: prefix });
  const store = new FallbackLimitStore({ primary: redis, metrics, timeoutMs: 500 });
  const bans = new BanList({ clock: systemClock, metrics });
  const limiter = new RateLimiter({ store, rules: () => rules, bans, clock: systemClock, metrics });
  return { redis, store, limiter, metrics, bans };
}

async function ready(g: Guard, timeoutMs = 10_000): Promise<void> {
  if (g.redis.redis.status === 'ready') return;
  await once(g.redis.redis, 'ready', { signal: AbortSignal.timeout(timeoutMs) });
}

async function gauge(g: Guard): Promise<number | undefined> {
  return (await g.metrics.limitStoreFallback.get()).values[0]?.value;
}
async function storeErrors(g: Guard): Promise<number> {
  return (await g.metrics.limitStoreErrors.get()).values.find((v) => v.labels.store === 'redis')?.value ?? 0;
}

/** Alternate `n` checks between the guards; return the actions. */
async function alternate(guards: Guard[], n: number, subject: LimitSubject): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push((await guards[i % guards.length]!.limiter.check('message', subject)).action);
  return out;
}

let a: Guard;
let b: Guard;

beforeAll(async () => {
  server = await startRedisServer();
  a = guard();
  b = guard();
  await Promise.all([ready(a), ready(b)]);
});

afterAll(async () => {
  await a?.store.close();
  await b?.store.close();
  await server?.stop();
});

describe('RedisLimitStore', () => {
  test('the Lua script runs the same GCRA math as gcraStep (caller time)', async () => {
    const store = new RedisLimitStore({ url: server.url, keyPrefix: `${prefix}math:`, serverTime: false, commandTimeoutMs: 10_000 });
    try {
      await once(store.redis, 'ready', { signal: AbortSignal.timeout(10_000) });
      const rate = { limit: 7, windowMs: 10_000 };
      let tat: number | undefined;
      let now = 1_700_000_000_000;
      for (const [i, gap] of [0, 0, 0, 100, 0, 0, 0, 0, 0, 1_500, 0, 0, 3_000, 0, 0, 0, 20_000, 0].entries()) {
        now += gap;
        const want = gcraStep(tat, rate, now, 1 + (i % 2));
        tat = want.tatMs;
        expect(await store.take('k', rate, now, 1 + (i % 2)), `step ${i}`).toEqual({ allowed: want.allowed, retryAfterMs: want.retryAfterMs });
      }
      // peek does not count; the key carries an expiry
      const p1 = await store.peek('k', rate, now);
      expect(await store.peek('k', rate, now)).toEqual(p1);
      const ttl = await store.redis.pttl(`${prefix}math:k`);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(10_000);
    } finally {
      await store.close();
    }
  });
});

describe('two guards sharing one Redis', () => {
  test('enforce ONE global limit', async () => {
    const subject = { clientIp: '203.0.113.10', trusted: false };
    expect(await alternate([a, b], 8, subject)).toEqual(['allow', 'allow', 'allow', 'allow', 'allow', 'tempfail', 'tempfail', 'tempfail']);
    expect(a.store.inFallback || b.store.inFallback).toBe(false);
    expect(await gauge(a)).toBe(0);
  });

  test('share ban escalation (offence counts live in Redis)', async () => {
    const subject = { clientIp: '203.0.113.20', trusted: false };
    await a.limiter.check('relay-denied', subject);
    const first = await a.limiter.check('relay-denied', subject);
    const second = await b.limiter.check('relay-denied', subject);
    expect(first).toMatchObject({ action: 'ban', banMs: 60_000 });
    expect(second).toMatchObject({ action: 'ban', banMs: 120_000 }); // b knows a already banned it once
    expect(b.bans.check(subject.clientIp)?.source).toBe('automatic');
  });

  test('Redis down: mail keeps flowing on local counters; Redis back: shared counts again', async () => {
    await server.stop({ abrupt: true });

    // Each guard answers, counting alone: the limit holds per guard.
    const down = { clientIp: '203.0.113.30', trusted: false };
    const started = Date.now();
    const onA = await alternate([a], 6, down);
    const onB = await alternate([b], 6, down);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(onA).toEqual(['allow', 'allow', 'allow', 'allow', 'allow', 'tempfail']);
    expect(onB).toEqual(['allow', 'allow', 'allow', 'allow', 'allow', 'tempfail']);
    expect(a.store.inFallback && b.store.inFallback).toBe(true);
    expect(await gauge(a)).toBe(1);
    expect(await gauge(b)).toBe(1);
    expect(await storeErrors(a)).toBeGreaterThanOrEqual(1);
    expect(await storeErrors(b)).toBeGreaterThanOrEqual(1);

    await server.start();
    await Promise.all([ready(a), ready(b)]);
    expect(await a.store.probe()).toBe(true);
    expect(await b.store.probe()).toBe(true);
    expect(await gauge(a)).toBe(0);
    expect(await gauge(b)).toBe(0);

    const back = { clientIp: '203.0.113.40', trusted: false };
    expect(await alternate([a, b], 7, back)).toEqual(['allow', 'allow', 'allow', 'allow', 'allow', 'tempfail', 'tempfail']);
  });
});
