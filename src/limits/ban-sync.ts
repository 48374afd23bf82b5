/**
 * Bans shared by every guard on one Redis (config `limits.store: redis`), as fail2ban or Haraka do
 * with a shared Redis. The local BanList stays the one the SMTP path reads (check() is synchronous
 * and never waits for Redis); this module only copies changes both ways:
 *
 * - a local add or remove (admin API or rate limiter) is written to Redis and published, in one
 *   MULTI: `<prefix>ban:<target>` holds the ban as JSON with PX = time left (no expiry when
 *   permanent); a lift deletes it and leaves a tombstone `<prefix>ban-lifted:<target>` (PX = time
 *   the ban had left, 30 days when it was permanent) so that a guard that was down while the ban
 *   was lifted does not bring it back from its bans file;
 * - events on the channel `<prefix>bans` from other guards are applied to the local list without
 *   being published again (each event carries its guard's origin id; a guard ignores its own);
 * - at start and after every reconnect, a resync: pending local changes are written, the bans in
 *   Redis are loaded (SCAN, bounded), and local bans missing from Redis are pushed unless a newer
 *   tombstone says they were lifted.
 *
 * Redis down: one warning per outage, each fault counted in relay_guard_limit_store_errors_total
 * {store="redis"}, bans keep working locally, resync every second until Redis answers.
 * Everything read from Redis is untrusted: BanList.applyRemoteBan validates it, refuses networks
 * wider than SHARED_MIN_PREFIX, and a malformed entry is skipped, never thrown.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Clock } from '../clock.js';
import { systemClock } from '../clock.js';
import type { Metrics } from '../observability/metrics.js';
import { isShareableTarget, normalizeBanTarget, type Ban, type BanChange, type BanList } from './bans.js';
import type { LimitsLogger } from './fallback-store.js';

export interface BanSyncOptions {
  bans: BanList;
  /** Command connection (the limit store's; not closed here). The subscriber is a duplicate of it. */
  redis: Redis;
  /** Prefix of keys and channel (default "relay-guard:", as RedisLimitStore). */
  keyPrefix?: string;
  clock?: Clock;
  metrics?: Pick<Metrics, 'limitStoreErrors'>;
  log?: LimitsLogger;
  /** This guard's id in published events (default a random UUID). */
  origin?: string;
  /** Time between resync attempts while Redis is unreachable (default 1 s). */
  retryIntervalMs?: number;
  /** Longest wait of start() for the first sync (default 2 s); after it the guard starts with local bans. */
  startTimeoutMs?: number;
  /** Most keys read by one resync (default: the ban list's capacity). */
  maxLoad?: number;
}

/** What goes over the channel. `v` lets a later format coexist with this one. */
export type BanEvent = { v: 1; origin: string; op: 'add'; ban: Ban } | { v: 1; origin: string; op: 'remove'; target: string };

const MAX_EVENT_BYTES = 4_096;
const MAX_VALUE_BYTES = 4_096;
const SCAN_COUNT = 500;
const MGET_CHUNK = 500;
const MAX_PENDING = 10_000;
const PERMANENT_TOMBSTONE_MS = 30 * 86_400_000;
const MALFORMED_WARN_INTERVAL_MS = 60_000;

/** Escape the glob characters of a SCAN MATCH pattern. */
function globEscape(s: string): string {
  return s.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

/** JSON.parse that never throws and refuses over-long input. */
function parseJson(text: unknown, maxBytes: number): unknown {
  if (typeof text !== 'string' || text.length > maxBytes) return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** The stored value, when it is an object whose target is the one its key names (else undefined). */
function storedBan(keyTarget: string | undefined, value: unknown): object | undefined {
  if (keyTarget === undefined || value === null || typeof value !== 'object') return undefined;
  const target = (value as { target?: unknown }).target;
  if (typeof target !== 'string') return undefined;
  try {
    return normalizeBanTarget(target).target === keyTarget ? value : undefined;
  } catch {
    return undefined;
  }
}

export class BanSync {
  readonly origin: string;
  private readonly bans: BanList;
  private readonly redis: Redis;
  private readonly clock: Clock;
  private readonly keyPrefix: string;
  private readonly channel: string;
  private readonly retryIntervalMs: number;
  private sub: Redis | undefined;
  private unlisten: (() => void) | undefined;
  /** Local changes not yet written to Redis, last change per target wins (insertion order = age). */
  private readonly pending = new Map<string, BanChange>();
  private dirty = true;
  private down = false;
  private closed = false;
  private syncing: Promise<boolean> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private lastMalformedWarnMs = -Infinity;
  private firstSync: (ok: boolean) => void = () => {};

  constructor(private readonly opts: BanSyncOptions) {
    this.bans = opts.bans;
    this.redis = opts.redis;
    this.clock = opts.clock ?? systemClock;
    this.keyPrefix = opts.keyPrefix ?? 'relay-guard:';
    this.channel = `${this.keyPrefix}bans`;
    this.origin = opts.origin ?? randomUUID();
    this.retryIntervalMs = opts.retryIntervalMs ?? 1_000;
  }

  /** True when the last resync succeeded and nothing is waiting to be written. */
  get inSync(): boolean {
    return !this.dirty && this.pending.size === 0 && !this.down;
  }

  /**
   * Listen to local changes, subscribe, and load the bans in Redis. Resolves true after the first
   * sync, false when Redis did not answer in startTimeoutMs (or refused the connection); the sync
   * goes on in the background. Never rejects.
   */
  async start(): Promise<boolean> {
    this.unlisten = this.bans.addChangeListener((c) => this.onLocalChange(c));
    const first = new Promise<boolean>((resolve) => (this.firstSync = resolve));
    const sub = this.redis.duplicate({ enableOfflineQueue: false, autoResubscribe: false, lazyConnect: true });
    this.sub = sub;
    // An 'error' event without a listener would crash the process; faults are counted where commands fail.
    sub.on('error', () => this.firstSync(false));
    sub.on('message', (channel: string, message: string) => {
      if (channel === this.channel) this.onMessage(message);
    });
    sub.on('ready', () => {
      sub.subscribe(this.channel).then(
        () => void this.resync(),
        (err: unknown) => this.fault(err),
      );
    });
    // Events are missed while the subscriber is away: resync when it is back ('ready' above).
    let wasReady = false;
    sub.on('ready', () => (wasReady = true));
    sub.on('close', () => {
      this.dirty = true;
      if (wasReady) this.fault(new Error('redis subscriber connection lost'));
      wasReady = false;
    });
    sub.connect().catch(() => undefined);
    const timeoutMs = this.opts.startTimeoutMs ?? 2_000;
    let timer: NodeJS.Timeout | undefined;
    const ok = await Promise.race([first, new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs)))]);
    clearTimeout(timer);
    this.firstSync = () => {};
    if (!ok) {
      this.fault(new Error('redis not reachable at start'));
      this.scheduleRetry();
    }
    return ok;
  }

  /**
   * Write pending local changes, load the bans in Redis, push local bans Redis lacks. Concurrent
   * calls share one run. Resolves false on a Redis fault (a retry is scheduled), never rejects.
   */
  resync(): Promise<boolean> {
    this.syncing ??= this.runResync().then(
      () => {
        this.syncing = undefined;
        this.dirty = false;
        if (this.down) {
          this.down = false;
          this.opts.log?.info({ store: 'redis' }, 'ban sync recovered, bans resynchronised');
        }
        this.firstSync(true);
        return true;
      },
      (err: unknown) => {
        this.syncing = undefined;
        this.fault(err);
        this.scheduleRetry();
        return false;
      },
    );
    return this.syncing;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.unlisten?.();
    const sub = this.sub;
    this.sub = undefined;
    if (!sub) return;
    try {
      await sub.quit();
    } catch {
      sub.disconnect();
    }
  }

  // ─────────────────────────── local → Redis ───────────────────────────

  private onLocalChange(change: BanChange): void {
    if (this.closed) return;
    let shareable = true;
    try {
      shareable = isShareableTarget(normalizeBanTarget(change.ban.target));
    } catch {
      shareable = false;
    }
    if (!shareable) {
      this.opts.log?.warn({ target: change.ban.target }, 'ban not shared with other guards: network wider than they accept');
      return;
    }
    this.pending.delete(change.ban.target);
    this.pending.set(change.ban.target, change);
    if (this.pending.size > MAX_PENDING) {
      // Oldest first; the resync still pushes every local ban Redis lacks.
      const oldest = this.pending.keys().next().value;
      if (oldest !== undefined) this.pending.delete(oldest);
    }
    if (this.down) return this.scheduleRetry(); // the next resync writes it
    this.write(change).then(
      () => {
        if (this.pending.get(change.ban.target) === change) this.pending.delete(change.ban.target);
      },
      (err: unknown) => {
        this.fault(err);
        this.scheduleRetry();
      },
    );
  }

  /** One MULTI: the key, the tombstone and the event change together. */
  private async write(change: BanChange): Promise<void> {
    const now = this.clock.now();
    const key = this.banKey(change.ban.target);
    const lifted = this.liftedKey(change.ban.target);
    const left = change.ban.expiresAt === undefined ? Infinity : Date.parse(change.ban.expiresAt) - now;
    if (change.op === 'add' && !(left > 0)) return;
    const m = this.redis.multi();
    if (change.op === 'add') {
      const value = JSON.stringify(change.ban);
      if (left === Infinity) m.set(key, value);
      else m.set(key, value, 'PX', Math.ceil(left));
      m.del(lifted);
      m.publish(this.channel, JSON.stringify({ v: 1, origin: this.origin, op: 'add', ban: change.ban } satisfies BanEvent));
    } else {
      m.del(key);
      const tombstoneMs = left === Infinity ? PERMANENT_TOMBSTONE_MS : Math.ceil(left);
      if (tombstoneMs > 0) m.set(lifted, JSON.stringify({ target: change.target, liftedAt: new Date(now).toISOString() }), 'PX', tombstoneMs);
      m.publish(this.channel, JSON.stringify({ v: 1, origin: this.origin, op: 'remove', target: change.target } satisfies BanEvent));
    }
    const results = await m.exec();
    const failed = results?.find(([err]) => err);
    if (!results) throw new Error('redis MULTI aborted');
    if (failed) throw failed[0] instanceof Error ? failed[0] : new Error(String(failed[0]));
  }

  // ─────────────────────────── Redis → local ───────────────────────────

  private onMessage(message: string): void {
    const ev = parseJson(message, MAX_EVENT_BYTES) as Partial<Record<string, unknown>> | undefined;
    if (!ev || typeof ev !== 'object' || ev.v !== 1 || typeof ev.origin !== 'string') return this.malformed('event');
    if (ev.origin === this.origin) return; // our own, already applied
    if (ev.op === 'add') {
      if (!this.bans.applyRemoteBan(ev.ban)) this.malformed('event');
    } else if (ev.op === 'remove') {
      this.bans.applyRemoteRemoval(ev.target);
    } else this.malformed('event');
  }

  private async runResync(): Promise<void> {
    await this.whenReady();
    for (const change of [...this.pending.values()]) {
      await this.write(change);
      if (this.pending.get(change.ban.target) === change) this.pending.delete(change.ban.target);
    }

    // Load what Redis holds; remember which targets it has.
    const inRedis = new Set<string>();
    const maxLoad = this.opts.maxLoad ?? this.bans.capacity;
    const prefix = `${this.keyPrefix}ban:`;
    const match = `${globEscape(prefix)}*`;
    let cursor = '0';
    let seen = 0;
    // Bounded: a SCAN cursor ends at 0; at most maxLoad keys are read whatever the server says.
    for (let round = 0; round < 1 + Math.ceil(maxLoad / 10); round++) {
      const [next, keys] = await this.redis.scan(cursor, 'MATCH', match, 'COUNT', SCAN_COUNT);
      const take = keys.slice(0, Math.max(0, maxLoad - seen));
      seen += take.length;
      for (let i = 0; i < take.length; i += MGET_CHUNK) {
        const chunk = take.slice(i, i + MGET_CHUNK);
        const values = await this.redis.mget(...chunk);
        for (const [j, value] of values.entries()) {
          if (value === null) continue; // expired between SCAN and MGET
          const stored = storedBan(chunk[j]?.slice(prefix.length), parseJson(value, MAX_VALUE_BYTES));
          const ban = stored && this.bans.applyRemoteBan(stored);
          if (ban) inRedis.add(ban.target);
          else this.malformed('key');
        }
      }
      cursor = next;
      if (cursor === '0' || seen >= maxLoad) break;
    }

    // Local bans Redis lacks: lifted elsewhere (a newer tombstone) or never written (push them).
    const missing = this.bans.list().filter((b) => !inRedis.has(b.target) && !this.pending.has(b.target));
    for (let i = 0; i < missing.length; i += MGET_CHUNK) {
      const chunk = missing.slice(i, i + MGET_CHUNK);
      const tombstones = await this.redis.mget(...chunk.map((b) => this.liftedKey(b.target)));
      for (const [j, ban] of chunk.entries()) {
        const t = parseJson(tombstones[j], MAX_VALUE_BYTES) as { liftedAt?: unknown } | undefined;
        const liftedAtMs = t && typeof t.liftedAt === 'string' ? Date.parse(t.liftedAt) : NaN;
        if (!Number.isNaN(liftedAtMs) && liftedAtMs >= Date.parse(ban.createdAt)) {
          this.bans.applyRemoteRemoval(ban.target);
          continue;
        }
        let shareable = false;
        try {
          shareable = isShareableTarget(normalizeBanTarget(ban.target));
        } catch {
          // not shareable
        }
        if (shareable) await this.write({ op: 'add', ban });
      }
    }
  }

  // ─────────────────────────── faults ───────────────────────────

  /** Resolve when the command connection is ready (bounded by its connect timeout + 1 s). */
  private whenReady(): Promise<void> {
    if (this.redis.status === 'ready') return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(timer);
        this.redis.off('ready', onReady);
        if (err) reject(err);
        else resolve();
      };
      const onReady = () => done();
      const timer = setTimeout(() => done(new Error(`redis connection ${this.redis.status}`)), Math.max(this.retryIntervalMs, 1_000));
      timer.unref();
      this.redis.once('ready', onReady);
    });
  }

  private fault(err: unknown): void {
    if (this.closed) return;
    this.dirty = true;
    this.opts.metrics?.limitStoreErrors.inc({ store: 'redis' });
    if (this.down) return;
    this.down = true;
    this.opts.log?.warn({ err, store: 'redis' }, 'ban sync: redis unreachable, bans enforced locally until it answers');
  }

  private scheduleRetry(): void {
    if (this.closed || this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.closed && (this.dirty || this.pending.size > 0)) void this.resync();
    }, this.retryIntervalMs);
    this.retryTimer.unref();
  }

  private malformed(what: 'event' | 'key'): void {
    const now = this.clock.now();
    if (now - this.lastMalformedWarnMs < MALFORMED_WARN_INTERVAL_MS) return;
    this.lastMalformedWarnMs = now;
    this.opts.log?.warn({ store: 'redis', what }, 'ban sync: ignored a malformed or refused ban from redis');
  }

  private banKey(target: string): string {
    return `${this.keyPrefix}ban:${target}`;
  }

  private liftedKey(target: string): string {
    return `${this.keyPrefix}ban-lifted:${target}`;
  }
}
