/**
 * Shared limits that never stop the mail: Redis first; on an error or a timeout, local counters
 * (a MemoryLimitStore) until Redis answers a PING again. take() never throws from here.
 *
 * While in fallback each guard counts alone, so a global limit is at most N times looser with N
 * guards; the local counts are not merged back when Redis returns (they simply expire).
 */
import type { Clock } from '../clock.js';
import { systemClock } from '../clock.js';
import type { Metrics } from '../observability/metrics.js';
import type { Rate } from './gcra.js';
import { MemoryLimitStore } from './memory-store.js';
import type { LimitStore, Take } from './store.js';

/** The few logger methods the limits use (pino's Logger fits). */
export interface LimitsLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/** A shared store that can be probed for health (RedisLimitStore is one). */
export interface ProbedLimitStore extends LimitStore {
  ping(): Promise<void>;
}

export interface FallbackLimitStoreOptions {
  primary: ProbedLimitStore;
  local?: MemoryLimitStore;
  clock?: Clock;
  metrics?: Pick<Metrics, 'limitStoreErrors' | 'limitStoreFallback'>;
  log?: LimitsLogger;
  /** Longest wait for the primary per call (default 200 ms). */
  timeoutMs?: number;
  /** Least time between PING probes while in fallback (default 1 s). */
  probeIntervalMs?: number;
  /** Least time between two fault warnings in the log (default 60 s). */
  warnIntervalMs?: number;
}

class StoreTimeoutError extends Error {
  readonly code = 'RG_ERR_LIMITS_STORE_TIMEOUT';
}

export class FallbackLimitStore implements LimitStore {
  readonly name = 'fallback';
  readonly local: MemoryLimitStore;
  private readonly primary: ProbedLimitStore;
  private readonly clock: Clock;
  private readonly timeoutMs: number;
  private readonly probeIntervalMs: number;
  private readonly warnIntervalMs: number;
  private fallback = false;
  private lastProbeMs = -Infinity;
  private lastWarnMs = -Infinity;
  private suppressedWarnings = 0;
  private probing: Promise<boolean> | undefined;

  constructor(private readonly opts: FallbackLimitStoreOptions) {
    this.primary = opts.primary;
    this.local = opts.local ?? new MemoryLimitStore(opts.clock ? { clock: opts.clock } : {});
    this.clock = opts.clock ?? systemClock;
    this.timeoutMs = opts.timeoutMs ?? 200;
    this.probeIntervalMs = opts.probeIntervalMs ?? 1_000;
    this.warnIntervalMs = opts.warnIntervalMs ?? 60_000;
    opts.metrics?.limitStoreFallback.set(0);
  }

  /** True while limits run on local counters. */
  get inFallback(): boolean {
    return this.fallback;
  }

  async take(key: string, rate: Rate, nowMs: number, cost = 1): Promise<Take> {
    if (this.usePrimary()) {
      try {
        return await this.withTimeout(this.primary.take(key, rate, nowMs, cost));
      } catch (err) {
        this.fault(err);
      }
    }
    return this.local.takeSync(key, rate, nowMs, cost);
  }

  async peek(key: string, rate: Rate, nowMs: number, cost = 1): Promise<Take> {
    if (this.usePrimary() && this.primary.peek) {
      try {
        return await this.withTimeout(this.primary.peek(key, rate, nowMs, cost));
      } catch (err) {
        this.fault(err);
      }
    }
    return this.local.peek(key, rate, nowMs, cost);
  }

  async increment(key: string, ttlMs: number, nowMs: number): Promise<number> {
    if (this.usePrimary() && this.primary.increment) {
      try {
        return await this.withTimeout(this.primary.increment(key, ttlMs, nowMs));
      } catch (err) {
        this.fault(err);
      }
    }
    return this.local.incrementSync(key, ttlMs);
  }

  /**
   * PING the primary now; on success leave fallback. Concurrent calls share one probe.
   * Called by take() at most every probeIntervalMs while in fallback; tests may call it directly.
   */
  probe(): Promise<boolean> {
    this.lastProbeMs = this.clock.now();
    this.probing ??= this.withTimeout(this.primary.ping()).then(
      () => {
        this.probing = undefined;
        if (this.fallback) {
          this.fallback = false;
          this.opts.metrics?.limitStoreFallback.set(0);
          this.opts.log?.info({ store: this.primary.name }, 'limit store recovered');
        }
        return true;
      },
      () => {
        this.probing = undefined;
        return false;
      },
    );
    return this.probing;
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.primary.close(), this.local.close()]);
  }

  private usePrimary(): boolean {
    if (!this.fallback) return true;
    // Probe in the background; this call still answers from local counters.
    if (this.clock.now() - this.lastProbeMs >= this.probeIntervalMs) void this.probe();
    return false;
  }

  private fault(err: unknown): void {
    this.opts.metrics?.limitStoreErrors.inc({ store: this.primary.name });
    const now = this.clock.now();
    if (!this.fallback) {
      this.fallback = true;
      this.lastProbeMs = now;
      this.opts.metrics?.limitStoreFallback.set(1);
    }
    if (now - this.lastWarnMs >= this.warnIntervalMs) {
      this.lastWarnMs = now;
      this.opts.log?.warn(
        { err, store: this.primary.name, suppressed: this.suppressedWarnings },
        'limit store unreachable, using local counters',
      );
      this.suppressedWarnings = 0;
    } else {
      this.suppressedWarnings++;
    }
  }

  private withTimeout<T>(p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new StoreTimeoutError(`limit store did not answer in ${this.timeoutMs} ms`)), this.timeoutMs);
      timer.unref();
      p.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(e instanceof Error ? e : new Error(String(e)));
        },
      );
    });
  }
}
