import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { gcraStep, gcraTtlMs } from '../../src/limits/gcra.js';

/** Run `n` steps of cost 1 at `nowMs`; return how many were allowed and the final TAT. */
function burst(tat: number | undefined, rate: { limit: number; windowMs: number }, nowMs: number, n: number) {
  let allowed = 0;
  let last = { tatMs: tat ?? nowMs, allowed: true, retryAfterMs: 0 };
  for (let i = 0; i < n; i++) {
    last = gcraStep(last.tatMs, rate, nowMs);
    if (last.allowed) allowed++;
  }
  return { allowed, last };
}

describe('gcraStep', () => {
  const rate = { limit: 60, windowMs: 60_000 }; // one per second, burst 60

  test('a fresh key allows exactly `limit` events in a burst, then refuses', () => {
    const { allowed, last } = burst(undefined, rate, 0, 100);
    expect(allowed).toBe(60);
    expect(last.allowed).toBe(false);
    expect(last.retryAfterMs).toBe(1_000);
  });

  test('a refused event leaves the state unchanged', () => {
    const full = burst(undefined, rate, 0, 60).last.tatMs;
    const r = gcraStep(full, rate, 0);
    expect(r.allowed).toBe(false);
    expect(r.tatMs).toBe(full);
  });

  test('one event per emission interval is refilled, no more', () => {
    const full = burst(undefined, rate, 0, 60).last.tatMs;
    expect(gcraStep(full, rate, 999).allowed).toBe(false);
    const ok = gcraStep(full, rate, 1_000);
    expect(ok.allowed).toBe(true);
    expect(gcraStep(ok.tatMs, rate, 1_000).allowed).toBe(false);
  });

  test('a stale TAT (in the past) is the same as no state', () => {
    expect(gcraStep(5, rate, 1_000_000)).toEqual(gcraStep(undefined, rate, 1_000_000));
  });

  test('cost counts several events at once; a cost above the limit never passes', () => {
    expect(gcraStep(undefined, rate, 0, 60).allowed).toBe(true);
    const r = gcraStep(undefined, rate, 0, 61);
    expect(r.allowed).toBe(false);
    expect(r.retryAfterMs).toBe(1_000);
  });

  test('ttl covers the time until the TAT is in the past', () => {
    const r = gcraStep(undefined, rate, 10, 5);
    expect(gcraTtlMs(r.tatMs, 10)).toBe(5_000);
    expect(gcraTtlMs(0, 10)).toBe(1);
  });

  test('property: in any span of t ms, at most limit + floor(t / interval) events are allowed', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 50 }),
        fc.integer({ min: 100, max: 100_000 }),
        fc.array(fc.integer({ min: 0, max: 5_000 }), { minLength: 1, maxLength: 300 }),
        (limit, windowMs, gaps) => {
          const rate = { limit, windowMs };
          const intervalMs = windowMs / limit;
          let now = 0;
          let tat: number | undefined;
          const times: number[] = [];
          for (const g of gaps) {
            now += g;
            const r = gcraStep(tat, rate, now);
            tat = r.tatMs;
            if (r.allowed) times.push(now);
            else expect(r.retryAfterMs).toBeGreaterThan(0);
          }
          // A burst of `limit`, then the steady rate: the GCRA conformance bound.
          for (let i = 0; i < times.length; i++) {
            for (let j = i; j < times.length; j++) {
              const span = (times[j] ?? 0) - (times[i] ?? 0);
              expect(j - i + 1).toBeLessThanOrEqual(limit + Math.floor(span / intervalMs + 1e-9));
            }
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});
