/**
 * In-memory limit state for one guard: a GCRA TAT per key in an lru-cache bounded by `max`
 * entries, each entry expiring when its TAT is in the past (then it means "no state" anyway).
 * A flood of distinct client addresses evicts the least recently used keys; memory stays O(max).
 */
import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';
import { gcraStep, gcraTtlMs, type Rate } from './gcra.js';
import type { LimitStore, Take } from './store.js';

export interface MemoryLimitStoreOptions {
  /** Most keys kept (default 100 000). */
  max?: number;
  /** Clock for entry expiry; pass the same clock that produces `nowMs` (tests pass a fake one). */
  clock?: Clock;
}

export class MemoryLimitStore implements LimitStore {
  readonly name = 'memory';
  private readonly cache: LRUCache<string, number>;

  constructor(opts: MemoryLimitStoreOptions = {}) {
    const clock = opts.clock;
    this.cache = new LRUCache<string, number>({
      max: opts.max ?? 100_000,
      // Expire lazily (no timers); a fallback TTL keeps the type happy, every set() passes its own.
      ttl: 86_400_000,
      ttlAutopurge: false,
      updateAgeOnGet: false,
      // Read the clock on every access (cheaper here than lru-cache's cached-now timer).
      ttlResolution: 0,
      ...(clock ? { perf: { now: () => clock.now() } } : {}),
    });
  }

  get size(): number {
    return this.cache.size;
  }

  async take(key: string, rate: Rate, nowMs: number, cost = 1): Promise<Take> {
    return this.takeSync(key, rate, nowMs, cost);
  }

  /** The synchronous form of take(), for callers that cannot wait (and for the fallback store). */
  takeSync(key: string, rate: Rate, nowMs: number, cost = 1): Take {
    const r = gcraStep(this.cache.get(key), rate, nowMs, cost);
    if (r.allowed) this.cache.set(key, r.tatMs, { ttl: gcraTtlMs(r.tatMs, nowMs) });
    return { allowed: r.allowed, retryAfterMs: r.retryAfterMs };
  }

  async peek(key: string, rate: Rate, nowMs: number, cost = 1): Promise<Take> {
    const r = gcraStep(this.cache.peek(key), rate, nowMs, cost);
    return { allowed: r.allowed, retryAfterMs: r.retryAfterMs };
  }

  async increment(key: string, ttlMs: number, _nowMs: number): Promise<number> {
    return this.incrementSync(key, ttlMs);
  }

  incrementSync(key: string, ttlMs: number): number {
    const n = (this.cache.get(key) ?? 0) + 1;
    this.cache.set(key, n, { ttl: Math.max(1, ttlMs) });
    return n;
  }

  async close(): Promise<void> {
    this.cache.clear();
  }
}
