/**
 * GCRA (generic cell rate algorithm), the rate-limit step every store runs.
 *
 * Why GCRA and not a fixed window, a sliding log or a token bucket with two fields:
 * - O(1) state: one number per key, the "theoretical arrival time" (TAT). A million hostile
 *   clients cost a million numbers, and the LRU bound in the memory store caps even that.
 * - Exact smoothing: a burst of at most `limit`, then one event per window/limit; in any span of
 *   t ms at most limit + t·limit/window events pass. No counter reset at window edges, so no
 *   double burst there as a fixed window allows, and no per-event log as a sliding log needs.
 * - The same few lines run as a Redis Lua script (redis-store.ts), so several guards share one
 *   limit atomically with one round trip, and the key can expire when TAT is in the past.
 *
 * Model: each event costs an emission interval T = window / limit. TAT advances by T per event;
 * an event is allowed while TAT - window <= now, i.e. while at most `limit` events fit in the window.
 * Pure: time is passed in.
 */

export interface Rate {
  /** Events allowed per window (also the largest burst). */
  readonly limit: number;
  readonly windowMs: number;
}

export interface GcraResult {
  /** The TAT to store (unchanged when the event was refused). */
  readonly tatMs: number;
  readonly allowed: boolean;
  /** When refused: how long until the same cost would be allowed. 0 when allowed. */
  readonly retryAfterMs: number;
}

export function gcraStep(tatMs: number | undefined, rate: Rate, nowMs: number, cost = 1): GcraResult {
  const limit = Math.max(1, rate.limit);
  const windowMs = Math.max(1, rate.windowMs);
  const intervalMs = windowMs / limit;
  const tat = tatMs === undefined || tatMs < nowMs ? nowMs : tatMs;
  const newTat = tat + intervalMs * cost;
  const allowAt = newTat - windowMs;
  // A cost larger than the limit can never pass; refusing it keeps the state unchanged.
  if (allowAt > nowMs) {
    return { tatMs: tat, allowed: false, retryAfterMs: Math.ceil(allowAt - nowMs) };
  }
  return { tatMs: newTat, allowed: true, retryAfterMs: 0 };
}

/** How long a stored TAT stays meaningful: after that it is in the past and equals "no state". */
export function gcraTtlMs(tatMs: number, nowMs: number): number {
  return Math.max(1, Math.ceil(tatMs - nowMs));
}
