/**
 * The one interface behind which limit state lives: in memory (the default), in Redis for
 * several guards, or Redis with a local fallback.
 */
import type { Rate } from './gcra.js';

export interface Take {
  readonly allowed: boolean;
  /** When refused: milliseconds until the event would be allowed; 0 when allowed. */
  readonly retryAfterMs: number;
}

export interface LimitStore {
  /** Count `cost` events (default 1) against `key` at `nowMs` (GCRA, gcra.ts) and say whether they fit. */
  take(key: string, rate: Rate, nowMs: number, cost?: number): Promise<Take>;
  /** Whether `cost` events would fit now, without counting them. */
  peek?(key: string, rate: Rate, nowMs: number, cost?: number): Promise<Take>;
  /** A plain counter with an expiry, for ban escalation: add 1, (re)arm the expiry, return the new value. */
  increment?(key: string, ttlMs: number, nowMs: number): Promise<number>;
  close(): Promise<void>;
  /** `memory`, `redis` or `fallback`, for logs. */
  readonly name: string;
}
