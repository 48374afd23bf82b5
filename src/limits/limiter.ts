/**
 * RateLimiter: turns "this client did X" into a decision (allow, tempfail, close, tarpit, ban)
 * from the current limits snapshot. Counting is delegated to a LimitStore (GCRA, gcra.ts);
 * concurrent connections are counted locally (they are a property of this guard's sockets).
 * Decisions are values; this module never writes to a socket and never sleeps (the session
 * applies tarpit delays and closes).
 */
import type { Clock } from '../clock.js';
import type { Metrics } from '../observability/metrics.js';
import type { Reply } from '../smtp/reply.js';
import type { BanList } from './bans.js';
import type { LimitsLogger } from './fallback-store.js';
import { limiterKey } from './keys.js';
import {
  DEFAULT_BAN,
  DEFAULT_MAX_BAN,
  DEFAULT_TARPIT,
  DEFAULT_WINDOW,
  type LimitAction,
  type LimitRule,
  type LimitsRules,
} from './schema.js';
import type { LimitStore } from './store.js';
import { parseDuration } from '../util/duration.js';
import { MemoryLimitStore } from './memory-store.js';

export type LimitEvent = 'connection' | 'message' | 'recipient' | 'relay-denied' | 'unknown-recipient' | 'auth-failure' | 'protocol-error';

export interface LimitSubject {
  clientIp: string;
  authUser?: string;
  /** Envelope sender without angle brackets; "" or "<>" is the null sender. */
  sender?: string;
  /** The client is in a trusted network. */
  trusted: boolean;
}

export type LimitDecision =
  | { action: 'allow' }
  | {
      action: 'tempfail' | 'close' | 'tarpit' | 'ban';
      limitId: string;
      reply: Reply;
      /** tarpit: wait this long, then carry on. tempfail/close: the store's retry-after hint. */
      delayMs?: number;
      /** ban: how long the client address (or prefix) is now banned. */
      banMs?: number;
    };

export type ConnectionSlot = { allowed: true; release(): void } | { allowed: false; decision: LimitDecision };

export interface RateLimiterOptions {
  store: LimitStore;
  /** Read on every call, so rule reloads apply to the next decision. */
  rules: () => LimitsRules;
  bans: BanList;
  clock: Clock;
  metrics?: Pick<Metrics, 'limitHits' | 'internalErrors'>;
  log?: LimitsLogger;
  /** Most keys tracked for concurrent connections (default 100 000); beyond it connections are not counted. */
  maxConcurrentKeys?: number;
}

/** Default replies (DESIGN.md "Reply codes"); each limit may override code, enhanced code and text. */
const TEMPFAIL_REPLY: Reply = { code: 450, enhanced: '4.7.1', lines: ['Rate limit exceeded, try again later'] };
const CLOSE_REPLY: Reply = { code: 421, enhanced: '4.7.0', lines: ['Too many connections or requests, closing connection'], close: true };
const BAN_REPLY: Reply = { code: 421, enhanced: '4.7.0', lines: ['Too many errors, closing connection'], close: true };
const TARPIT_REPLY: Reply = { code: 450, enhanced: '4.7.1', lines: ['Slow down'] };

/** How long repeat offences are remembered for ban escalation, at least. */
const OFFENCE_MEMORY_MIN_MS = 86_400_000;
const SEVERITY: Record<LimitAction, number> = { tarpit: 0, tempfail: 1, close: 2, ban: 3 };

interface CompiledLimit {
  rule: LimitRule;
  windowMs: number;
  tarpitMs: number;
  banMs: number;
  maxBanMs: number;
}

export class RateLimiter {
  private readonly compiled = new WeakMap<LimitRule, CompiledLimit>();
  private readonly concurrent = new Map<string, number>();
  private readonly localOffences = new MemoryLimitStore({ max: 10_000 });
  private readonly maxConcurrentKeys: number;

  constructor(private readonly opts: RateLimiterOptions) {
    this.maxConcurrentKeys = opts.maxConcurrentKeys ?? 100_000;
  }

  /**
   * Does any enabled limit count `event`? When none does, check() would allow without counting
   * anything, so a caller may skip building the subject and asking (the per-command fast path).
   */
  counts(event: LimitEvent | 'concurrent'): boolean {
    const rules = this.opts.rules();
    if (!rules.enabled) return false;
    for (const rule of rules.limits) if (rule.event === event && rule.enabled !== false) return true;
    return false;
  }

  /**
   * Count `cost` events (default 1) of `event` for `subject` against every matching limit and
   * decide. Every matching limit counts; the refusal of the first limit (in file order) with the
   * strongest action wins; tarpits add up to the longest delay. Never throws: a fault allows.
   */
  async check(event: LimitEvent, subject: LimitSubject, cost = 1): Promise<LimitDecision> {
    try {
      const rules = this.opts.rules();
      if (!rules.enabled) return { action: 'allow' };
      const now = this.opts.clock.now();
      const matching: Array<{ c: CompiledLimit; key: string }> = [];
      for (const rule of rules.limits) {
        if (rule.event !== event || rule.enabled === false || this.exempt(rule, subject)) continue;
        const key = this.keyFor(rule, subject, rules);
        if (key !== undefined) matching.push({ c: this.compile(rule), key });
      }
      if (matching.length === 0) return { action: 'allow' };
      const takes = await Promise.all(
        matching.map(({ c, key }) => this.opts.store.take(`${c.rule.id}:${key}`, { limit: c.rule.limit, windowMs: c.windowMs }, now, cost)),
      );
      let worst: { c: CompiledLimit; retryAfterMs: number; key: string } | undefined;
      let tarpitMs = 0;
      let tarpitLimit: CompiledLimit | undefined;
      for (const [i, t] of takes.entries()) {
        const m = matching[i];
        if (t.allowed || !m) continue;
        if (m.c.rule.action === 'tarpit') {
          if (m.c.tarpitMs > tarpitMs || !tarpitLimit) [tarpitMs, tarpitLimit] = [m.c.tarpitMs, m.c];
        } else if (!worst || SEVERITY[m.c.rule.action] > SEVERITY[worst.c.rule.action]) {
          worst = { c: m.c, retryAfterMs: t.retryAfterMs, key: m.key };
        }
      }
      if (worst) return await this.act(worst.c, subject, rules, worst.retryAfterMs, now);
      if (tarpitLimit) {
        this.hit(tarpitLimit.rule.id, 'tarpit');
        return { action: 'tarpit', limitId: tarpitLimit.rule.id, reply: this.replyFor(tarpitLimit.rule, TARPIT_REPLY), delayMs: tarpitMs };
      }
      return { action: 'allow' };
    } catch (err) {
      // Limits protect the backend; they must never stop legitimate mail. Count, log, allow.
      this.opts.metrics?.internalErrors.inc({ where: 'limits' });
      this.opts.log?.warn({ err, event }, 'limit check failed, allowing');
      return { action: 'allow' };
    }
  }

  /**
   * Take a concurrent-connection slot for this client (limits with event `concurrent`, counted
   * locally by this guard). Call release() when the connection closes; it is idempotent.
   */
  acquireConnection(subject: LimitSubject): ConnectionSlot {
    const rules = this.opts.rules();
    if (!rules.enabled) return { allowed: true, release: () => {} };
    const keys: string[] = [];
    for (const rule of rules.limits) {
      if (rule.event !== 'concurrent' || rule.enabled === false || this.exempt(rule, subject)) continue;
      const k = this.keyFor(rule, subject, rules);
      if (k === undefined) continue;
      const key = `${rule.id}:${k}`;
      if ((this.concurrent.get(key) ?? 0) >= rule.limit) {
        return { allowed: false, decision: this.actLocally(this.compile(rule), subject, rules) };
      }
      keys.push(key);
    }
    const counted: string[] = [];
    for (const key of keys) {
      const n = this.concurrent.get(key);
      if (n === undefined && this.concurrent.size >= this.maxConcurrentKeys) continue; // bounded: stop counting, keep serving
      this.concurrent.set(key, (n ?? 0) + 1);
      counted.push(key);
    }
    let released = false;
    return {
      allowed: true,
      release: () => {
        if (released) return;
        released = true;
        for (const key of counted) {
          const n = (this.concurrent.get(key) ?? 1) - 1;
          if (n <= 0) this.concurrent.delete(key);
          else this.concurrent.set(key, n);
        }
      },
    };
  }

  /** Keys currently holding concurrent-connection counts (for tests and the admin API). */
  get concurrentKeys(): number {
    return this.concurrent.size;
  }

  /**
   * Trusted networks, and authenticated sessions, skip limits with exemptTrusted (default true).
   * Per-user limits still apply to authenticated sessions: they exist to brake a compromised account.
   */
  private exempt(rule: LimitRule, s: LimitSubject): boolean {
    if (rule.exemptTrusted === false) return false;
    if (s.trusted) return true;
    return s.authUser !== undefined && s.authUser !== '' && rule.key !== 'user';
  }

  private keyFor(rule: LimitRule, s: LimitSubject, rules: LimitsRules): string | undefined {
    switch (rule.key) {
      case 'ip':
      case 'prefix':
        return limiterKey(rule.key, s.clientIp, rules.prefixV4, rules.prefixV6);
      case 'user':
        return s.authUser ? limiterKey('user', s.authUser, rules.prefixV4, rules.prefixV6) : undefined;
      case 'sender':
        return s.sender === undefined ? undefined : limiterKey('sender', s.sender, rules.prefixV4, rules.prefixV6);
    }
  }

  private compile(rule: LimitRule): CompiledLimit {
    let c = this.compiled.get(rule);
    if (!c) {
      c = {
        rule,
        windowMs: parseDuration(rule.window ?? DEFAULT_WINDOW),
        tarpitMs: parseDuration(rule.tarpit ?? DEFAULT_TARPIT),
        banMs: parseDuration(rule.ban ?? DEFAULT_BAN),
        maxBanMs: parseDuration(rule.maxBan ?? DEFAULT_MAX_BAN),
      };
      c.maxBanMs = Math.max(c.maxBanMs, c.banMs);
      this.compiled.set(rule, c);
    }
    return c;
  }

  private async act(c: CompiledLimit, s: LimitSubject, rules: LimitsRules, retryAfterMs: number, now: number): Promise<LimitDecision> {
    const { rule } = c;
    if (rule.action !== 'ban') return this.simpleDecision(c, retryAfterMs);
    const target = this.banTarget(rule, s, rules);
    const offenceKey = `ban-offences:${target}`;
    const ttl = Math.max(OFFENCE_MEMORY_MIN_MS, c.maxBanMs * 2);
    const store = this.opts.store;
    const offences = store.increment ? await store.increment(offenceKey, ttl, now) : this.localOffences.incrementSync(offenceKey, ttl);
    return this.ban(c, target, offences);
  }

  /** Synchronous variant for acquireConnection: escalation counted in this guard only. */
  private actLocally(c: CompiledLimit, s: LimitSubject, rules: LimitsRules): LimitDecision {
    if (c.rule.action !== 'ban') return this.simpleDecision(c, 0);
    const target = this.banTarget(c.rule, s, rules);
    const ttl = Math.max(OFFENCE_MEMORY_MIN_MS, c.maxBanMs * 2);
    return this.ban(c, target, this.localOffences.incrementSync(`ban-offences:${target}`, ttl));
  }

  private simpleDecision(c: CompiledLimit, retryAfterMs: number): LimitDecision {
    const { rule } = c;
    switch (rule.action) {
      case 'tarpit':
        this.hit(rule.id, 'tarpit');
        return { action: 'tarpit', limitId: rule.id, reply: this.replyFor(rule, TARPIT_REPLY), delayMs: c.tarpitMs };
      case 'close':
        this.hit(rule.id, 'close');
        return { action: 'close', limitId: rule.id, reply: { ...this.replyFor(rule, CLOSE_REPLY), close: true }, delayMs: retryAfterMs };
      case 'tempfail':
      default:
        this.hit(rule.id, 'tempfail');
        return { action: 'tempfail', limitId: rule.id, reply: this.replyFor(rule, TEMPFAIL_REPLY), delayMs: retryAfterMs };
    }
  }

  /** Ban for base × 2^(offences−1), capped at maxBan: 1h, 2h, 4h… for a client that keeps coming back. */
  private ban(c: CompiledLimit, target: string, offences: number): LimitDecision {
    const banMs = Math.min(c.maxBanMs, c.banMs * 2 ** Math.min(30, Math.max(0, offences - 1)));
    try {
      this.opts.bans.add({ target, durationMs: banMs, reason: `limit ${c.rule.id}`, source: 'automatic' });
    } catch (err) {
      // Unparsable client address or a list full of manual bans: still close this connection.
      this.opts.log?.warn({ err, limitId: c.rule.id }, 'automatic ban not recorded');
    }
    this.hit(c.rule.id, 'ban');
    return { action: 'ban', limitId: c.rule.id, reply: { ...this.replyFor(c.rule, BAN_REPLY), close: true }, banMs };
  }

  /** A `prefix` limit bans the whole prefix; every other key bans the client address. */
  private banTarget(rule: LimitRule, s: LimitSubject, rules: LimitsRules): string {
    if (rule.key === 'prefix') {
      const k = limiterKey('prefix', s.clientIp, rules.prefixV4, rules.prefixV6).slice('prefix:'.length);
      if (k.includes('/')) return k;
    }
    return limiterKey('ip', s.clientIp, rules.prefixV4, rules.prefixV6).slice('ip:'.length);
  }

  private replyFor(rule: LimitRule, fallback: Reply): Reply {
    if (!rule.reply) return fallback;
    const r: Reply = { code: rule.reply.code, lines: [rule.reply.text] };
    const withEnhanced = rule.reply.enhanced ? { ...r, enhanced: rule.reply.enhanced } : r;
    return fallback.close ? { ...withEnhanced, close: true } : withEnhanced;
  }

  private hit(limit: string, action: LimitAction): void {
    this.opts.metrics?.limitHits.inc({ limit, action });
  }
}
