import { Registry } from 'prom-client';
import { describe, expect, test } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { FallbackLimitStore, type ProbedLimitStore } from '../../src/limits/fallback-store.js';
import { MemoryLimitStore } from '../../src/limits/memory-store.js';
import { createMetrics } from '../../src/observability/metrics.js';

/** A primary that can be switched between healthy, failing and hanging. */
class FlakyStore implements ProbedLimitStore {
  readonly name = 'redis';
  mode: 'up' | 'error' | 'hang' = 'up';
  readonly inner = new MemoryLimitStore();
  pings = 0;
  private gate<T>(f: () => Promise<T>): Promise<T> {
    if (this.mode === 'error') return Promise.reject(new Error('ECONNREFUSED'));
    if (this.mode === 'hang') return new Promise<T>(() => {});
    return f();
  }
  take(...a: Parameters<MemoryLimitStore['take']>) {
    return this.gate(() => this.inner.take(...a));
  }
  increment(...a: Parameters<MemoryLimitStore['increment']>) {
    return this.gate(() => this.inner.increment(...a));
  }
  ping() {
    this.pings++;
    return this.gate(async () => {});
  }
  async close() {}
}

function setup() {
  const clock = new ManualClock(0);
  const metrics = createMetrics(new Registry(), { defaultMetrics: false });
  const warnings: string[] = [];
  const infos: string[] = [];
  const primary = new FlakyStore();
  const store = new FallbackLimitStore({
    primary,
    clock,
    metrics,
    timeoutMs: 50,
    log: { warn: (_o, m) => warnings.push(m), info: (_o, m) => infos.push(m) },
  });
  const errors = async () => (await metrics.limitStoreErrors.get()).values.find((v) => v.labels.store === 'redis')?.value ?? 0;
  const fallback = async () => (await metrics.limitStoreFallback.get()).values[0]?.value;
  return { clock, primary, store, warnings, infos, errors, fallback };
}

const rate = { limit: 2, windowMs: 60_000 };

describe('FallbackLimitStore', () => {
  test('uses the primary while it answers', async () => {
    const { primary, store, fallback } = setup();
    await store.take('k', rate, 0);
    expect(primary.inner.size).toBe(1);
    expect(store.local.size).toBe(0);
    expect(await fallback()).toBe(0);
  });

  test('on an error: local counters, error counted, gauge 1, one warning; never throws', async () => {
    const { primary, store, warnings, errors, fallback } = setup();
    primary.mode = 'error';
    const r = [];
    for (let i = 0; i < 3; i++) r.push((await store.take('k', rate, 0)).allowed);
    expect(r).toEqual([true, true, false]); // the limit still holds, locally
    expect(store.inFallback).toBe(true);
    expect(await errors()).toBe(1); // later calls go straight to local counters
    expect(await fallback()).toBe(1);
    expect(warnings).toEqual(['limit store unreachable, using local counters']);
    expect(await store.increment('n', 1_000, 0)).toBe(1);
  });

  test('on a timeout: falls back within timeoutMs', async () => {
    const { primary, store, errors } = setup();
    primary.mode = 'hang';
    expect((await store.take('k', rate, 0)).allowed).toBe(true);
    expect(store.inFallback).toBe(true);
    expect(await errors()).toBe(1);
  });

  test('recovers by itself: probes at most once per second, then uses the primary again', async () => {
    const { clock, primary, store, infos, fallback } = setup();
    primary.mode = 'error';
    await store.take('k', rate, clock.now());
    primary.mode = 'up';
    await store.take('k', rate, clock.now());
    expect(primary.pings).toBe(0); // less than a second since the fault
    clock.advance(1_000);
    await store.take('k', rate, clock.now()); // triggers a background probe, still answered locally
    expect(primary.pings).toBe(1);
    expect(await store.probe()).toBe(true);
    expect(store.inFallback).toBe(false);
    expect(await fallback()).toBe(0);
    expect(infos).toEqual(['limit store recovered']);
    await store.take('k2', rate, clock.now());
    expect(primary.inner.size).toBe(1);
  });

  test('warnings are rate-limited', async () => {
    const { clock, primary, store, warnings } = setup();
    primary.mode = 'error';
    for (let i = 0; i < 10; i++) {
      clock.advance(1_000);
      await store.probe(); // fails
      await store.take('k', rate, clock.now());
    }
    // Only the first fault moved us into fallback and warned; the next warning needs 60 s.
    expect(warnings.length).toBe(1);
  });
});
