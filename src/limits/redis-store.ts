/**
 * Limit state in Redis, shared by several guards. Each take() is one EVALSHA of a Lua script that
 * runs the GCRA step (gcra.ts, same math) and stores the new TAT with an expiry (SET PX), atomically:
 * two guards racing on one key can never both spend the last slot.
 *
 * Time: by default (`serverTime: true`) the script reads the Redis server's TIME, so guards whose
 * clocks drift still agree on one timeline. With `serverTime: false` the caller's nowMs is used
 * (deterministic, for tests or when the guards' clocks are trusted). Redis 5+ replicates scripts
 * by effects, so calling TIME before a write is allowed.
 */
import { Redis, type RedisOptions } from 'ioredis';
import type { Rate } from './gcra.js';
import type { LimitStore, Take } from './store.js';

// KEYS[1] = key; ARGV = limit, windowMs, nowMs, cost, serverTime ("1"/"0"), write ("1"/"0").
// Returns {allowed (1/0), retryAfterMs}.
const GCRA_LUA = `
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
if ARGV[5] == '1' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
if limit < 1 then limit = 1 end
if window < 1 then window = 1 end
local interval = window / limit
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local newTat = tat + interval * cost
local allowAt = newTat - window
if allowAt > now then
  return {0, math.ceil(allowAt - now)}
end
if ARGV[6] == '1' then
  local ttl = math.ceil(newTat - now)
  if ttl < 1 then ttl = 1 end
  redis.call('SET', KEYS[1], string.format('%.3f', newTat), 'PX', ttl)
end
return {1, 0}
`;

// KEYS[1] = key; ARGV[1] = ttlMs. INCR and re-arm the expiry in one step.
const INCREMENT_LUA = `
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
`;

type ScriptedRedis = Redis & {
  relayGuardGcra(key: string, ...args: string[]): Promise<[number, number]>;
  relayGuardIncrement(key: string, ttlMs: string): Promise<number>;
};

export interface RedisLimitStoreOptions {
  /** An ioredis client to use (the caller owns its options), or… */
  redis?: Redis;
  /** …a redis:// URL; the store creates and owns a client with short timeouts and no offline queue. */
  url?: string;
  /** Prefix of every key (default "relay-guard:"). */
  keyPrefix?: string;
  /** Use the Redis server's clock (default true). */
  serverTime?: boolean;
  /** Per-command timeout of the client the store creates (default 200 ms). */
  commandTimeoutMs?: number;
  /** Extra ioredis options for the client the store creates. */
  redisOptions?: RedisOptions;
}

export class RedisLimitStore implements LimitStore {
  readonly name = 'redis';
  readonly redis: Redis;
  private readonly scripted: ScriptedRedis;
  /** Prefix of every key of this store (ban-sync.ts puts its keys and channel under it too). */
  readonly keyPrefix: string;
  private readonly serverTime: boolean;
  private readonly ownsClient: boolean;

  constructor(opts: RedisLimitStoreOptions) {
    if (opts.redis) {
      this.redis = opts.redis;
      this.ownsClient = false;
    } else {
      if (!opts.url) throw new TypeError('RedisLimitStore needs a redis client or a url');
      this.redis = new Redis(opts.url, {
        commandTimeout: opts.commandTimeoutMs ?? 200,
        connectTimeout: 1_000,
        // Fail fast while disconnected: the fallback store answers from local counters instead.
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        // Keep reconnecting forever, backing off to 1 s.
        retryStrategy: (times) => Math.min(times * 50, 1_000),
        ...opts.redisOptions,
      });
      this.ownsClient = true;
    }
    // An 'error' event without a listener would crash the process; the fallback store counts faults.
    if (this.redis.listenerCount('error') === 0) this.redis.on('error', () => {});
    this.redis.defineCommand('relayGuardGcra', { numberOfKeys: 1, lua: GCRA_LUA });
    this.redis.defineCommand('relayGuardIncrement', { numberOfKeys: 1, lua: INCREMENT_LUA });
    this.scripted = this.redis as ScriptedRedis;
    this.keyPrefix = opts.keyPrefix ?? 'relay-guard:';
    this.serverTime = opts.serverTime ?? true;
  }

  async take(key: string, rate: Rate, nowMs: number, cost = 1): Promise<Take> {
    return this.run(key, rate, nowMs, cost, true);
  }

  async peek(key: string, rate: Rate, nowMs: number, cost = 1): Promise<Take> {
    return this.run(key, rate, nowMs, cost, false);
  }

  async increment(key: string, ttlMs: number, _nowMs: number): Promise<number> {
    const n = await this.scripted.relayGuardIncrement(this.keyPrefix + key, String(Math.max(1, Math.ceil(ttlMs))));
    return Number(n);
  }

  /** Resolves when Redis answers PING. */
  async ping(): Promise<void> {
    await this.redis.ping();
  }

  async close(): Promise<void> {
    if (!this.ownsClient) return;
    try {
      await this.redis.quit();
    } catch {
      this.redis.disconnect();
    }
  }

  private async run(key: string, rate: Rate, nowMs: number, cost: number, write: boolean): Promise<Take> {
    const [allowed, retryAfterMs] = await this.scripted.relayGuardGcra(
      this.keyPrefix + key,
      String(rate.limit),
      String(rate.windowMs),
      String(nowMs),
      String(cost),
      this.serverTime ? '1' : '0',
      write ? '1' : '0',
    );
    return { allowed: Number(allowed) === 1, retryAfterMs: Number(retryAfterMs) };
  }
}
