/**
 * SharedRulesStore: the rules of a fleet of guards, held in the Redis that limits and bans already
 * use (`--rules-store redis://HOST:PORT[/DB]`). Any guard's admin API or `relay-guard ctl` changes
 * them; every guard applies the change.
 *
 * In Redis (prefix `relay-guard:`):
 *   rules:rev      the store's revision, an integer that only grows
 *   rules:doc      the rule set: { v, rev, version (content hash of raw), raw, time, actor, guard, operation }
 *   rules:history  the last versions, newest first (JSON, with raw: rollback from any guard)
 *   rules:audit    who changed which section from which guard, newest first (JSON)
 *   rules:changed  pub/sub channel: the new revision after each change
 *   fleet          hash guardName → heartbeat { name, rev, version, startedAt, seenAt, storeUp }
 *
 * A change is a compare-and-set: the guard reads doc and rev, decides with planChange (the same
 * decision as the rules directory: If-Match → 412, schema, open-relay check), and one Lua script
 * writes doc, rev, history and audit and publishes only if rev is still the one read. A lost race
 * reads again (an If-Match on a section someone else just changed then answers 412); nothing is lost.
 *
 * Outages never change policy: every applied rule set is also written to a last-known-good file on
 * local disk; a guard that cannot reach Redis at start starts from it (or from the rules directory
 * the first time). While Redis is down mail flows under the last rules, rule changes answer 503, and
 * relay_guard_rules_store_up is 0. On reconnect (and every few seconds) the guard re-reads the store
 * and converges. An empty store (first start, or Redis restarted without its data) is seeded once —
 * by whichever guard's compare-and-set wins — from that guard's rules in force (its last-known-good
 * copy), else from the rules directory: an empty store never empties a guard.
 *
 * Everything read from Redis is untrusted: a doc that is not JSON, fails the schema or the
 * open-relay check, or whose content hash does not match its version is refused like a bad file:
 * the rules in force are kept, the refusal is logged and counted (rules_reloads_total{result=error}).
 */
import { EventEmitter } from 'node:events';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Redis } from 'ioredis';
import type { Metrics } from '../observability/metrics.js';
import type { RuleError } from '../policy/compile.js';
import type { RawRules, RulesSnapshot } from './schemas.js';
import { contentHash } from '../policy/content-hash.js';
import { writeFileAtomic } from './atomic-write.js';
import type { AuditEntry } from './audit-log.js';
import type { Version } from './history.js';
import { changedSections, readSection, okResult, planChange, type ChangeOptions, type ChangeRequest, type ChangeResult, type RulesOverlay } from './rules-change.js';
import { readRulesDir, type MinimalLogger } from './rules-store.js';
import { SECTIONS, SECTION_NAMES } from './schemas.js';
import { checkStored, type Checked, type StoredRules } from './stored-rules.js';

export interface SharedRulesStoreOptions {
  /** redis://[user:password@]HOST:PORT[/DB] */
  url: string;
  /** This guard's name in the fleet, the audit log and the history (default: the host name). */
  guardName: string;
  /** Seed of an empty store when this guard has no last-known-good copy. */
  rulesDir: string;
  /** Last-known-good copy on local disk. */
  cacheFile: string;
  log: MinimalLogger;
  metrics?: Metrics;
  overlay?: RulesOverlay;
  keyPrefix?: string;
  historyLimit?: number;
  auditLimit?: number;
  /** Longest wait at start for Redis before starting from the local copy (default 2 s). */
  startTimeoutMs?: number;
  /** Heartbeat and safety re-read interval (default 2 s); a guard is live for 5 intervals. */
  heartbeatMs?: number;
  /** The admin API address this guard answers on, shown in the fleet view. */
  admin?: () => string | undefined;
}

interface HistoryEntry extends StoredRules {
  sections: string[];
}

export interface FleetGuard {
  name: string;
  /** Store revision and content hash of the rules it enforces. */
  rev: number;
  version: string;
  behind: boolean;
  /** Seconds since its last heartbeat. */
  lastSeenSeconds: number;
  startedAt: string;
  storeUp: boolean;
  admin?: string;
  self: boolean;
}

export interface FleetView {
  shared: boolean;
  store?: { url: string; up: boolean; rev?: number; version?: string; valid?: boolean };
  guards: FleetGuard[];
}

const MAX_DOC_BYTES = 16 * 1024 * 1024;
const MAX_FLEET = 1000;
const CAS_ATTEMPTS = 10;
const FORGET_DEAD_MS = 3_600_000;

// KEYS: rev, doc, history, audit. ARGV: expectedRev ("" = rev must not exist), newRev, doc,
// historyEntry, historyLimit, auditLimit, channel, auditEntries…  → 1 written, 0 lost the race.
const CAS_LUA = `
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if cur then return 0 end
elseif cur ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
for i = 8, #ARGV do redis.call('LPUSH', KEYS[4], ARGV[i]) end
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
redis.call('PUBLISH', ARGV[7], ARGV[2])
return 1
`;

type ScriptedRedis = Redis & { relayGuardRulesCas(...args: (string | number)[]): Promise<number> };

/** The URL without its password, for logs, errors and the fleet view. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString().replace(/\/$/, '');
  } catch {
    return 'redis://(invalid url)';
  }
}

export class SharedRulesStore extends EventEmitter {
  readonly #opts: SharedRulesStoreOptions;
  readonly #log: MinimalLogger;
  readonly #metrics: Metrics | undefined;
  readonly #redis: ScriptedRedis;
  readonly #sub: Redis;
  readonly #keys: { rev: string; doc: string; history: string; audit: string; channel: string; fleet: string };
  readonly #safeUrl: string;
  readonly #startedAt = new Date().toISOString();
  #raw: RawRules;
  #snapshot: RulesSnapshot;
  /** Revision and content hash of what this guard enforces (rev 0: not from the store yet). */
  #applied: { rev: number; version: string };
  /** The store's current revision and hash as last read (undefined: not read yet / empty). */
  #storeHead: { rev: number; version: string; valid: boolean } | undefined;
  #refusedRev: string | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #up = false;

  private constructor(opts: SharedRulesStoreOptions, raw: RawRules, snapshot: RulesSnapshot, applied: { rev: number; version: string }) {
    super();
    this.#opts = opts;
    this.#log = opts.log;
    this.#metrics = opts.metrics;
    this.#raw = raw;
    this.#snapshot = snapshot;
    this.#applied = applied;
    this.#safeUrl = redactUrl(opts.url);
    const p = opts.keyPrefix ?? 'relay-guard:';
    this.#keys = { rev: `${p}rules:rev`, doc: `${p}rules:doc`, history: `${p}rules:history`, audit: `${p}rules:audit`, channel: `${p}rules:changed`, fleet: `${p}fleet` };
    this.#redis = new Redis(opts.url, {
      lazyConnect: true,
      commandTimeout: 2_000,
      connectTimeout: 1_000,
      // Fail fast while disconnected: a write answers 503 at once instead of waiting in a queue.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: (times) => Math.min(times * 100, 1_000),
    }) as ScriptedRedis;
    this.#redis.defineCommand('relayGuardRulesCas', { numberOfKeys: 4, lua: CAS_LUA });
    // The subscriber connects by itself and keeps retrying; ioredis subscribes again after each reconnect.
    this.#sub = new Redis(opts.url, { connectTimeout: 1_000, maxRetriesPerRequest: null, retryStrategy: (times) => Math.min(times * 100, 1_000) });
    this.#redis.on('error', () => undefined);
    this.#sub.on('error', () => undefined);
    this.#redis.on('ready', () => {
      this.#setUp(true);
      void this.#syncSafely('reconnect');
    });
    this.#redis.on('close', () => this.#setUp(false));
    this.#sub.on('message', (channel: string) => {
      if (channel === this.#keys.channel) void this.#syncSafely('published');
    });
  }

  /**
   * Open: wait up to startTimeoutMs for Redis and take the store's rules (seeding an empty store);
   * else start from the last-known-good copy, else from the rules directory.
   */
  static async open(opts: SharedRulesStoreOptions): Promise<SharedRulesStore> {
    const local = await loadLocal(opts);
    const store = new SharedRulesStore(opts, local.raw, local.snapshot, local.applied);
    store.#metrics?.rulesStoreUp.set({ store: 'redis' }, 0);
    store.#metrics?.rulesStoreBehind.set({ store: 'redis' }, 1);
    const connected = await Promise.race([
      store.#redis.connect().then(() => true, () => false),
      new Promise<boolean>((r) => setTimeout(() => r(false), opts.startTimeoutMs ?? 2_000).unref()),
    ]);
    store.#sub.subscribe(store.#keys.channel).catch((err: unknown) => opts.log.warn({ err }, 'rules store subscribe failed'));
    if (connected) {
      await store.#syncSafely('start');
    } else {
      opts.log.warn({ store: store.#safeUrl, source: local.source, rev: local.applied.rev }, 'rules store unreachable at start: enforcing the last-known-good rules; changes answer 503 until it returns');
    }
    opts.log.info({ version: store.#snapshot.version, rev: store.#applied.rev, guard: opts.guardName, store: store.#safeUrl }, 'rules loaded');
    opts.metrics?.rulesLastReload.set(Date.now() / 1000);
    const every = opts.heartbeatMs ?? 2_000;
    store.#timer = setInterval(() => {
      void store.#syncSafely('poll').then(() => store.#heartbeat());
    }, every);
    store.#timer.unref();
    void store.#heartbeat();
    return store;
  }

  get guardName(): string {
    return this.#opts.guardName;
  }

  current(): RulesSnapshot {
    return this.#snapshot;
  }

  getSection(name: string): { value: unknown; etag: string } {
    return readSection(this.#raw, name);
  }

  replaceSection(name: string, value: unknown, opts: ChangeOptions): Promise<ChangeResult> {
    return this.#change({ op: 'replace', section: name, value }, opts);
  }

  addItem(name: string, item: unknown, opts: ChangeOptions): Promise<ChangeResult> {
    return this.#change({ op: 'add', section: name, item }, opts);
  }

  removeItem(name: string, item: unknown, opts: ChangeOptions): Promise<ChangeResult> {
    return this.#change({ op: 'remove', section: name, item }, opts);
  }

  importSections(sections: Record<string, unknown>, opts: ChangeOptions): Promise<ChangeResult> {
    return this.#change({ op: 'import', sections }, opts);
  }

  async rollback(versionId: string, opts: { actor: string; force?: boolean }): Promise<ChangeResult> {
    if (!this.#isUp()) return this.#unavailable();
    let entries: HistoryEntry[];
    try {
      entries = await this.#historyEntries();
    } catch (err) {
      return this.#unavailable(err);
    }
    const found = entries.find((e) => e.version === versionId);
    if (!found) return { ok: false, status: 404, code: 'RG_ERR_RULES_VERSION_NOT_FOUND', message: `no rules version ${JSON.stringify(versionId)} in the store's history` };
    const checked = this.#check(JSON.stringify({ ...found, v: 1 }));
    if (!checked.ok) return { ok: false, status: 400, code: checked.code, message: `history entry ${versionId} refused: ${checked.message}` };
    return this.#change({ op: 'rollback', raw: checked.stored.raw }, opts);
  }

  /** SIGHUP / POST /rules/reload: read the store again now. */
  async reload(reason: string): Promise<{ ok: boolean; errors?: RuleError[] }> {
    if (!this.#isUp()) return { ok: false, errors: [{ code: 'RG_ERR_RULES_STORE_UNAVAILABLE', section: 'store', message: `the shared rules store ${this.#safeUrl} is unreachable; the rules in force are kept` }] };
    const r = await this.#syncSafely(reason);
    return r;
  }

  /** Fleet-wide versions, newest first. */
  async history(): Promise<Version[]> {
    this.#requireUp();
    return (await this.#historyEntries()).map((e) => ({ id: e.version, time: e.time, actor: e.actor, operation: e.operation, sections: e.sections, guard: e.guard, rev: e.rev }));
  }

  /** Fleet-wide audit log, newest first. */
  async audit(limit = 100): Promise<AuditEntry[]> {
    this.#requireUp();
    const n = Math.max(1, Math.min(1000, limit));
    const lines = await this.#redis.lrange(this.#keys.audit, 0, n - 1);
    return lines.flatMap((l) => {
      try {
        const e = JSON.parse(l) as AuditEntry;
        return e !== null && typeof e === 'object' && typeof e.time === 'string' ? [e] : [];
      } catch {
        return [];
      }
    });
  }

  /** Live guards (heartbeat within 5 intervals) and whether each enforces the store's version. */
  async fleet(): Promise<FleetView> {
    const self = this.#selfBeat();
    const store: FleetView['store'] = { url: this.#safeUrl, up: this.#isUp(), ...(this.#storeHead ? { rev: this.#storeHead.rev, version: this.#storeHead.version, valid: this.#storeHead.valid } : {}) };
    if (!this.#isUp()) {
      return { shared: true, store, guards: [{ ...self, behind: this.#behind(self.rev, self.version), lastSeenSeconds: 0, self: true }] };
    }
    const all = await this.#redis.hgetall(this.#keys.fleet);
    const now = Date.now();
    const liveMs = 5 * (this.#opts.heartbeatMs ?? 2_000);
    const guards: FleetGuard[] = [];
    const dead: string[] = [];
    for (const [name, text] of Object.entries(all).slice(0, MAX_FLEET)) {
      let b: Partial<Heartbeat>;
      try {
        b = JSON.parse(text) as Partial<Heartbeat>;
      } catch {
        continue;
      }
      if (typeof b.seenAt !== 'number' || typeof b.rev !== 'number' || typeof b.version !== 'string') continue;
      const age = now - b.seenAt;
      if (age > FORGET_DEAD_MS) dead.push(name);
      if (age > liveMs && name !== this.#opts.guardName) continue;
      guards.push({
        name, rev: b.rev, version: b.version, behind: this.#behind(b.rev, b.version), lastSeenSeconds: Math.max(0, Math.round(age / 1000)),
        startedAt: String(b.startedAt ?? ''), storeUp: b.storeUp === true, ...(typeof b.admin === 'string' ? { admin: b.admin } : {}), self: name === this.#opts.guardName,
      });
    }
    if (dead.length > 0) await this.#redis.hdel(this.#keys.fleet, ...dead).catch(() => undefined);
    guards.sort((a, b) => a.name.localeCompare(b.name));
    return { shared: true, store, guards };
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#queue.catch(() => undefined);
    this.#sub.disconnect();
    try {
      await this.#redis.quit();
    } catch {
      this.#redis.disconnect();
    }
  }

  // ── internals ──

  #serialise<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #isUp(): boolean {
    return this.#up && this.#redis.status === 'ready';
  }

  #setUp(up: boolean): void {
    if (this.#up === up) return;
    this.#up = up;
    this.#metrics?.rulesStoreUp.set({ store: 'redis' }, up ? 1 : 0);
    if (up) this.#log.info({ store: this.#safeUrl }, 'rules store reachable');
    else {
      this.#metrics?.rulesStoreBehind.set({ store: 'redis' }, 1);
      if (!this.#closed) this.#log.warn({ store: this.#safeUrl }, 'rules store unreachable: enforcing the rules in force; changes answer 503 until it returns');
    }
  }

  #unavailable(err?: unknown): ChangeResult {
    if (err !== undefined) this.#log.warn({ err, store: this.#safeUrl }, 'rules store request failed');
    return {
      ok: false, status: 503, code: 'RG_ERR_RULES_STORE_UNAVAILABLE',
      message: `the shared rules store ${this.#safeUrl} is unreachable: rules cannot be changed now (a change made on one guard only would split the fleet); the rules in force are kept and mail flows; retry when it is back`,
    };
  }

  #requireUp(): void {
    if (this.#isUp()) return;
    const r = this.#unavailable() as { code: string; message: string };
    throw Object.assign(new Error(r.message), { code: r.code, statusCode: 503 });
  }

  #behind(rev: number, version: string): boolean {
    const head = this.#storeHead;
    if (!head) return false;
    return head.rev !== rev || head.version !== version;
  }

  #selfBeat(): Heartbeat {
    const admin = this.#opts.admin?.();
    return { name: this.#opts.guardName, rev: this.#applied.rev, version: this.#applied.version, startedAt: this.#startedAt, seenAt: Date.now(), storeUp: this.#isUp(), ...(admin ? { admin } : {}) };
  }

  async #heartbeat(): Promise<void> {
    if (this.#closed || !this.#isUp()) return;
    try {
      await this.#redis.hset(this.#keys.fleet, this.#opts.guardName, JSON.stringify(this.#selfBeat()));
      const view = await this.fleet();
      const behind = view.guards.filter((g) => g.behind).length;
      this.#metrics?.fleetGuards.set({ state: 'behind' }, behind);
      this.#metrics?.fleetGuards.set({ state: 'current' }, view.guards.length - behind);
    } catch {
      // The next beat tries again; the outage itself is visible in rules_store_up.
    }
  }

  async #historyEntries(): Promise<HistoryEntry[]> {
    const lines = await this.#redis.lrange(this.#keys.history, 0, (this.#opts.historyLimit ?? 50) - 1);
    return lines.flatMap((l) => {
      try {
        const e = JSON.parse(l) as HistoryEntry;
        return e !== null && typeof e === 'object' && typeof e.version === 'string' && typeof e.rev === 'number' ? [e] : [];
      } catch {
        return [];
      }
    });
  }

  /** Validate a stored rule set read from Redis (or the local copy): untrusted input. */
  #check(text: string): Checked {
    return checkStored(text, this.#opts.overlay);
  }

  #syncSafely(reason: string): Promise<{ ok: boolean; errors?: RuleError[] }> {
    return this.#serialise(() => this.#sync(reason)).catch((err: unknown) => {
      this.#log.warn({ err, store: this.#safeUrl, reason }, 'rules store sync failed');
      return { ok: false, errors: [{ code: 'RG_ERR_RULES_STORE_UNAVAILABLE', section: 'store', message: 'rules store sync failed; the rules in force are kept' }] };
    });
  }

  /** Read the store; apply its rule set when it differs; seed it when it is empty. */
  async #sync(reason: string): Promise<{ ok: boolean; errors?: RuleError[] }> {
    if (this.#closed || this.#redis.status !== 'ready') return { ok: false };
    const [revText = null, docText = null] = await this.#redis.mget(this.#keys.rev, this.#keys.doc);
    if (docText === null) return this.#seed(revText, reason);
    const checked = docText.length > MAX_DOC_BYTES ? { ok: false as const, code: 'RG_ERR_RULES_STORE_INVALID', message: `entry larger than ${MAX_DOC_BYTES} bytes` } : this.#check(docText);
    if (!checked.ok || String(checked.stored.rev) !== revText) {
      const why = checked.ok ? { code: 'RG_ERR_RULES_STORE_TAMPERED', message: `rules:doc says revision ${checked.stored.rev} but rules:rev is ${String(revText)}` } : checked;
      this.#storeHead = { rev: Number(revText) || 0, version: checked.ok ? checked.stored.version : '', valid: false };
      this.#metrics?.rulesStoreBehind.set({ store: 'redis' }, 1);
      const errors: RuleError[] = checked.ok || !checked.errors ? [{ code: why.code, section: 'store', message: why.message }] : checked.errors;
      if (this.#refusedRev !== revText) {
        this.#refusedRev = revText ?? '';
        this.#metrics?.rulesReloads.inc({ result: 'error' });
        for (const e of errors.slice(0, 5)) {
          this.#log.error({ reason, store: this.#safeUrl, rev: revText, code: e.code, section: e.section, key: e.path, err: { message: e.message } }, 'rules store entry refused: the rules in force are kept');
        }
        this.emit('reloadError', errors);
      }
      return { ok: false, errors };
    }
    this.#refusedRev = undefined;
    this.#storeHead = { rev: checked.stored.rev, version: checked.stored.version, valid: true };
    if (checked.stored.rev !== this.#applied.rev || checked.stored.version !== this.#applied.version) {
      await this.#apply(checked.stored, checked.snapshot, reason);
    }
    this.#metrics?.rulesStoreBehind.set({ store: 'redis' }, 0);
    return { ok: true };
  }

  /**
   * The store has no rule set (first start, or Redis restarted empty): write ours — the rules this
   * guard enforces, which came from the store before or from the rules directory — as a new
   * revision. The compare-and-set lets exactly one guard seed; the others then apply its seed.
   */
  async #seed(revText: string | null, reason: string): Promise<{ ok: boolean; errors?: RuleError[] }> {
    const rev = Math.max(Number(revText) || 0, this.#applied.rev) + 1;
    const source = this.#applied.rev > 0 ? 'last-known-good' : 'rules-dir';
    const stored: StoredRules = { v: 1, rev, version: contentHash(this.#raw), raw: structuredClone(this.#raw), time: new Date().toISOString(), actor: `guard:${this.#opts.guardName}`, guard: this.#opts.guardName, operation: 'seed' };
    const audit: AuditEntry[] = [{ time: stored.time, actor: stored.actor, guard: stored.guard, section: '*', operation: 'seed', before: null, after: { source, rev: this.#applied.rev }, version: stored.version }];
    const won = await this.#cas(revText ?? '', stored, [...SECTION_NAMES], audit);
    if (!won) return this.#sync(reason); // another guard seeded (or wrote) first
    this.#log.warn({ store: this.#safeUrl, rev, source, version: stored.version, reason }, 'rules store was empty: seeded it with the rules in force');
    this.#storeHead = { rev, version: stored.version, valid: true };
    await this.#apply(stored, this.#snapshot, reason);
    this.#metrics?.rulesStoreBehind.set({ store: 'redis' }, 0);
    return { ok: true };
  }

  async #cas(expectedRev: string, stored: StoredRules, sections: string[], audit: AuditEntry[]): Promise<boolean> {
    const entry: HistoryEntry = { ...stored, sections };
    const r = await this.#redis.relayGuardRulesCas(
      this.#keys.rev, this.#keys.doc, this.#keys.history, this.#keys.audit,
      expectedRev, String(stored.rev), JSON.stringify(stored), JSON.stringify(entry),
      this.#opts.historyLimit ?? 50, this.#opts.auditLimit ?? 1000, this.#keys.channel,
      ...audit.map((a) => JSON.stringify(a)),
    );
    return Number(r) === 1;
  }

  /** Make a checked rule set the one in force; keep it as the last-known-good copy. */
  async #apply(stored: StoredRules, snapshot: RulesSnapshot, reason: string): Promise<void> {
    const changed = changedSections(this.#raw, stored.raw);
    this.#raw = structuredClone(stored.raw);
    this.#applied = { rev: stored.rev, version: stored.version };
    const swapped = this.#snapshot !== snapshot;
    this.#snapshot = snapshot;
    this.#metrics?.rulesReloads.inc({ result: 'success' });
    this.#metrics?.rulesLastReload.set(Date.now() / 1000);
    this.#log.info({ reason, rev: stored.rev, version: snapshot.version, sections: changed, actor: stored.actor, guard: stored.guard }, 'rules applied from the store');
    if (swapped || changed.length > 0) this.emit('change', snapshot);
    try {
      await mkdir(dirname(this.#opts.cacheFile), { recursive: true });
      await writeFileAtomic(this.#opts.cacheFile, `${JSON.stringify(stored)}\n`);
    } catch (err) {
      this.#metrics?.internalErrors.inc({ where: 'rules' });
      this.#log.error({ err, file: this.#opts.cacheFile }, 'last-known-good rules copy not written');
    }
    void this.#heartbeat();
  }

  #change(req: ChangeRequest, opts: ChangeOptions): Promise<ChangeResult> {
    return this.#serialise(async () => {
      if (!this.#isUp()) return this.#unavailable();
      try {
        for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
          const [revText = null, docText = null] = await this.#redis.mget(this.#keys.rev, this.#keys.doc);
          // The base is the store's rule set; an empty or refused entry is replaced by a change
          // made on top of the rules this guard enforces (the last good ones).
          const checked = docText === null ? undefined : this.#check(docText);
          const base = checked?.ok && String(checked.stored.rev) === revText ? checked : undefined;
          const baseRaw = base ? base.stored.raw : this.#raw;
          const baseSnapshot = base ? base.snapshot : this.#snapshot;
          const plan = planChange(baseRaw, baseSnapshot.version, req, opts, this.#opts.overlay);
          if (plan.kind === 'refused') return plan.result;
          if (plan.kind === 'noop') {
            if (base && (base.stored.rev !== this.#applied.rev || base.stored.version !== this.#applied.version)) await this.#apply(base.stored, base.snapshot, 'write');
            return okResult(this.#snapshot, plan.section);
          }
          const rev = Math.max(Number(revText) || 0, this.#applied.rev) + 1;
          const time = new Date().toISOString();
          const stored: StoredRules = { v: 1, rev, version: contentHash(plan.raw), raw: plan.raw, time, actor: opts.actor, guard: this.#opts.guardName, operation: plan.operation };
          const audit: AuditEntry[] = plan.changed.map((name) => ({
            time, actor: opts.actor, guard: this.#opts.guardName, section: name, operation: plan.operation,
            before: baseRaw[SECTIONS[name].rawKey], after: plan.raw[SECTIONS[name].rawKey], version: plan.snapshot.version,
          }));
          if (!(await this.#cas(revText ?? '', stored, plan.changed, audit))) continue; // lost the race: read again
          this.#storeHead = { rev, version: stored.version, valid: true };
          await this.#apply(stored, plan.snapshot, 'write');
          for (const name of plan.changed) this.#metrics?.rulesChanges.inc({ section: name, operation: plan.operation });
          this.#log.info({ actor: opts.actor, guard: this.#opts.guardName, operation: plan.operation, sections: plan.changed, rev, version: plan.snapshot.version }, 'rules changed');
          return okResult(this.#snapshot, plan.section);
        }
        return { ok: false, status: 409, code: 'RG_ERR_RULES_CONFLICT', message: 'too many concurrent rule changes; retry' };
      } catch (err) {
        return this.#unavailable(err);
      }
    });
  }
}

interface Heartbeat {
  name: string;
  rev: number;
  version: string;
  startedAt: string;
  seenAt: number;
  storeUp: boolean;
  admin?: string;
}

/** The rules to start from before the store answers: the last-known-good copy, else the rules directory. */
async function loadLocal(opts: SharedRulesStoreOptions): Promise<{ raw: RawRules; snapshot: RulesSnapshot; applied: { rev: number; version: string }; source: string }> {
  let text: string | undefined;
  try {
    text = await readFile(opts.cacheFile, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') opts.log.warn({ err, file: opts.cacheFile }, 'last-known-good rules copy unreadable');
  }
  if (text !== undefined) {
    const checked = checkStored(text, opts.overlay);
    if (checked.ok) return { raw: checked.stored.raw, snapshot: checked.snapshot, applied: { rev: checked.stored.rev, version: checked.stored.version }, source: 'last-known-good' };
    opts.log.error({ file: opts.cacheFile, code: checked.code, err: { message: checked.message } }, 'last-known-good rules copy refused; using the rules directory');
  }
  // The rules directory, read and validated as a single guard would (an invalid one fails the start).
  const snapshot = await readRulesDir(opts.rulesDir, opts.overlay);
  return { raw: structuredClone(snapshot.raw) as RawRules, snapshot, applied: { rev: 0, version: contentHash(snapshot.raw) }, source: 'rules-dir' };
}
