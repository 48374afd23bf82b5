import { describe, expect, test } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { MemoryLimitStore } from '../../src/limits/memory-store.js';

describe('MemoryLimitStore', () => {
  test('counts per key with GCRA and refills with time', async () => {
    const clock = new ManualClock(0);
    const store = new MemoryLimitStore({ clock });
    const rate = { limit: 3, windowMs: 3_000 };
    const results = [];
    for (let i = 0; i < 4; i++) results.push((await store.take('a', rate, clock.now())).allowed);
    expect(results).toEqual([true, true, true, false]);
    expect((await store.take('b', rate, clock.now())).allowed).toBe(true);
    clock.advance(1_000);
    expect((await store.take('a', rate, clock.now())).allowed).toBe(true);
    expect((await store.take('a', rate, clock.now())).allowed).toBe(false);
  });

  test('peek does not count', async () => {
    const store = new MemoryLimitStore();
    const rate = { limit: 1, windowMs: 60_000 };
    expect((await store.peek('k', rate, 0)).allowed).toBe(true);
    expect((await store.peek('k', rate, 0)).allowed).toBe(true);
    expect((await store.take('k', rate, 0)).allowed).toBe(true);
    expect(await store.peek('k', rate, 0)).toEqual({ allowed: false, retryAfterMs: 60_000 });
  });

  test('entries expire with the injected clock once their TAT is past', async () => {
    const clock = new ManualClock(0);
    const store = new MemoryLimitStore({ clock });
    await store.take('k', { limit: 10, windowMs: 10_000 }, clock.now());
    expect(store.size).toBe(1);
    clock.advance(1_001);
    expect((await store.peek('k', { limit: 10, windowMs: 10_000 }, clock.now())).allowed).toBe(true);
    await store.take('other', { limit: 10, windowMs: 10_000 }, clock.now());
    // The stale entry is gone on access.
    expect(await store.increment('n', 5_000, clock.now())).toBe(1);
    expect(await store.increment('n', 5_000, clock.now())).toBe(2);
    clock.advance(5_001);
    expect(await store.increment('n', 5_000, clock.now())).toBe(1);
  });

  test('memory bound: a million distinct client addresses never exceed the entry cap', () => {
    const max = 50_000;
    const store = new MemoryLimitStore({ max });
    const rate = { limit: 120, windowMs: 60_000 };
    let peak = 0;
    for (let i = 0; i < 1_000_000; i++) {
      const ip = `${10 + (i >>> 24)}.${(i >>> 16) & 255}.${(i >>> 8) & 255}.${i & 255}`;
      const r = store.takeSync(`ip:${ip}`, rate, 1_000);
      if (!r.allowed) throw new Error(`first event of ${ip} refused`);
      if ((i & 1023) === 0 && store.size > peak) peak = store.size;
    }
    peak = Math.max(peak, store.size);
    expect(store.size).toBe(max);
    expect(peak).toBeLessThanOrEqual(max);
  }, 60_000);
});
