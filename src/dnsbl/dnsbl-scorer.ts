/**
 * DnsblScorer: postscreen-style scoring of a client address against DNS block and allow lists,
 * asked before the backend is touched. Every list's zone is queried once (entries sharing a zone
 * share the query) in parallel; each entry whose filter matches an A record adds its weight.
 *
 * - Answers (NXDOMAIN too) are cached with their TTL, clamped to [minTtl, maxTtl], in a bounded LRU;
 *   concurrent lookups of one name share one query.
 * - Every query has a timeout; a list that times out or fails scores nothing (fail open) and is
 *   counted; failures are not cached, so the next client asks again.
 */
import { Resolver } from 'node:dns/promises';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { parseDuration } from '../util/duration.js';
import type { Metrics } from '../observability/metrics.js';
import type { TraceStep } from '../policy/verdict.js';
import { reply, type Reply } from '../smtp/reply.js';
import { DEFAULT_RECORD_FILTER, parseRecordFilter, type RecordFilter } from './record-filter.js';
import { canonicalZone, queryName } from './query-name.js';
import { DEFAULT_DNS, type DnsConfig, type DnsblConfig } from './schema.js';

export type ListResult = 'listed' | 'not_listed' | 'error' | 'timeout';

/** One configured entry's answer for one client. */
export interface ListAnswer {
  zone: string;
  result: ListResult;
  /** The weight added to the score (0 unless listed). */
  weight: number;
  /** A records the list returned (all of them, matched or not). */
  records: string[];
  cached: boolean;
}

export interface DnsblScore {
  score: number;
  threshold: number;
  refused: boolean;
  /** Set when refused: what the client is told (554 5.7.1, then close). */
  reply?: Reply;
  answers: ListAnswer[];
  trace: TraceStep[];
}

interface CompiledList {
  zone: string;
  weight: number;
  match: RecordFilter;
  matchText: string | undefined;
}

type Lookup = { kind: 'records'; records: string[]; ttlSeconds: number } | { kind: 'absent' } | { kind: 'error'; code: string } | { kind: 'timeout' };

const DEFAULT_REPLY = 'Service unavailable; client [{client}] blocked using {zone}';

export class DnsblConfigError extends Error {
  readonly code = 'RG_ERR_CONFIG_DNSBL';
}

/** Compile the `dnsbl` block: zones normalised, filters parsed (throws DnsblConfigError naming the entry). */
export function compileLists(config: DnsblConfig): CompiledList[] {
  return config.lists.map((l, i) => {
    let match = DEFAULT_RECORD_FILTER;
    if (l.match !== undefined) {
      const parsed = parseRecordFilter(l.match);
      if (!parsed.ok) throw new DnsblConfigError(`dnsbl.lists.${i}.match: ${parsed.reason}`);
      match = parsed.filter;
    }
    return { zone: canonicalZone(l.zone), weight: l.weight ?? 1, match, matchText: l.match };
  });
}

/** A resolver for the `dns` block: its servers (HOST:PORT), one try per query, the configured timeout. */
export function createResolver(dns: DnsConfig = DEFAULT_DNS): { resolver: Resolver; timeoutMs: number } {
  const timeoutMs = parseDuration(dns.timeout);
  const resolver = new Resolver({ timeout: Math.max(1, timeoutMs), tries: 1 });
  if (dns.servers) {
    try {
      resolver.setServers(dns.servers);
    } catch (err) {
      throw new DnsblConfigError(`dns.servers: ${(err as Error).message}`);
    }
  }
  return { resolver, timeoutMs };
}

export interface DnsblScorerOptions {
  config: DnsblConfig;
  dns?: DnsConfig;
  metrics?: Metrics;
  log?: Logger;
}

export class DnsblScorer {
  private readonly lists: CompiledList[];
  private readonly zones: string[];
  private readonly resolver: Resolver;
  private readonly timeoutMs: number;
  private readonly cache: LRUCache<string, Lookup & { kind: 'records' | 'absent' }>;
  private readonly inflight = new Map<string, Promise<Lookup>>();
  private readonly minTtlMs: number;
  private readonly maxTtlMs: number;
  private readonly threshold: number;
  private readonly replyText: string;
  private closed = false;

  constructor(private readonly opts: DnsblScorerOptions) {
    const c = opts.config;
    this.lists = compileLists(c);
    this.zones = [...new Set(this.lists.map((l) => l.zone))];
    ({ resolver: this.resolver, timeoutMs: this.timeoutMs } = createResolver(opts.dns));
    this.minTtlMs = parseDuration(c.minTtl ?? '60s');
    this.maxTtlMs = parseDuration(c.maxTtl ?? '1h');
    if (this.maxTtlMs < this.minTtlMs) throw new DnsblConfigError('dnsbl.maxTtl: must not be below dnsbl.minTtl');
    this.threshold = c.threshold ?? 1;
    this.replyText = c.reply ?? DEFAULT_REPLY;
    this.cache = new LRUCache({ max: c.cacheSize ?? 100000, ttlAutopurge: false });
    const m = opts.metrics;
    if (m) for (const zone of this.zones) for (const result of ['listed', 'not_listed', 'error', 'timeout']) m.dnsblAnswers.inc({ list: zone, result }, 0);
  }

  /** Are this listener's clients scored? The configured listeners, else every mx listener. */
  scores(listener: { name: string; kind: string }): boolean {
    const named = this.opts.config.listeners;
    return named ? named.includes(listener.name) : listener.kind === 'mx';
  }

  /** The zones asked, in configuration order (the `list` label values). */
  get listZones(): readonly string[] {
    return this.zones;
  }

  /** Score one client. Never throws for DNS trouble: a failing list scores nothing. */
  async score(clientIp: string): Promise<DnsblScore> {
    const lookups = new Map<string, { lookup: Lookup; cached: boolean }>();
    await Promise.all(
      this.zones.map(async (zone) => {
        const name = queryName(clientIp, zone);
        if (name === undefined) return lookups.set(zone, { lookup: { kind: 'error', code: 'EBADADDRESS' }, cached: false });
        const hit = this.cache.get(name);
        if (hit) {
          this.opts.metrics?.dnsblCacheHits.inc({ list: zone });
          return lookups.set(zone, { lookup: hit, cached: true });
        }
        lookups.set(zone, { lookup: await this.query(zone, name), cached: false });
      }),
    );
    const answers: ListAnswer[] = [];
    const trace: TraceStep[] = [];
    let score = 0;
    for (const l of this.lists) {
      const { lookup, cached } = lookups.get(l.zone)!;
      const records = lookup.kind === 'records' ? lookup.records : [];
      let result: ListResult;
      if (lookup.kind === 'error') result = 'error';
      else if (lookup.kind === 'timeout') result = 'timeout';
      else result = records.some((r) => l.match(r)) ? 'listed' : 'not_listed';
      const weight = result === 'listed' ? l.weight : 0;
      score += weight;
      answers.push({ zone: l.zone, result, weight, records, cached });
      const filter = l.matchText ? ` (filter ${l.matchText})` : '';
      const note =
        result === 'listed'
          ? `${l.zone} lists the client: ${records.join(', ')}${filter}, weight ${l.weight > 0 ? '+' : ''}${l.weight}`
          : result === 'not_listed'
            ? `${l.zone} does not list the client${records.length > 0 ? ` (answered ${records.join(', ')}${filter})` : ''}`
            : `${l.zone} did not answer (${result === 'timeout' ? `timeout after ${this.timeoutMs} ms` : lookup.kind === 'error' ? lookup.code : ''}): scores nothing`;
      trace.push({ ruleId: 'dnsbl', result: result === 'listed' ? (l.weight > 0 ? 'reject' : 'permit') : 'dunno', note: `${note}${cached ? ' [cached]' : ''}` });
    }
    const refused = score >= this.threshold;
    trace.push({ ruleId: 'dnsbl', result: refused ? 'reject' : 'dunno', note: `score ${score} ${refused ? '≥' : '<'} threshold ${this.threshold}` });
    this.opts.metrics?.dnsblVerdicts.inc({ verdict: refused ? 'refuse' : 'pass' });
    if (!refused) return { score, threshold: this.threshold, refused, answers, trace };
    // The list named in the reply: the heaviest that listed the client.
    const top = answers.filter((a) => a.result === 'listed' && a.weight > 0).sort((a, b) => b.weight - a.weight)[0];
    const text = this.replyText.replaceAll('{client}', clientIp).replaceAll('{zone}', top?.zone ?? 'a DNS list');
    return { score, threshold: this.threshold, refused, reply: { ...reply(554, '5.7.1', text), close: true }, answers, trace };
  }

  /** Ask one name; concurrent asks for the same name share the query. */
  private query(zone: string, name: string): Promise<Lookup> {
    const running = this.inflight.get(name);
    if (running) return running;
    const p = this.ask(zone, name).finally(() => this.inflight.delete(name));
    this.inflight.set(name, p);
    return p;
  }

  private async ask(zone: string, name: string): Promise<Lookup> {
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<Lookup>((resolve) => {
      timer = setTimeout(() => resolve({ kind: 'timeout' }), this.timeoutMs);
    });
    const asked = this.resolver.resolve4(name, { ttl: true }).then(
      (rrs): Lookup => ({ kind: 'records', records: rrs.map((r) => r.address), ttlSeconds: Math.min(...rrs.map((r) => r.ttl)) }),
      (err: NodeJS.ErrnoException): Lookup => {
        const code = String(err.code ?? 'EDNS');
        // NXDOMAIN, or the name exists without an A record: not listed (RFC 5782 §2.1).
        if (code === 'ENOTFOUND' || code === 'ENODATA') return { kind: 'absent' };
        if (code === 'ETIMEOUT') return { kind: 'timeout' };
        return { kind: 'error', code };
      },
    );
    const lookup = await Promise.race([asked, timeout]);
    clearTimeout(timer);
    const m = this.opts.metrics;
    const result: ListResult = lookup.kind === 'records' ? 'listed' : lookup.kind === 'absent' ? 'not_listed' : lookup.kind;
    if (m) {
      m.dnsblAnswers.inc({ list: zone, result });
      m.dnsblQueryDuration.observe({ list: zone }, (performance.now() - started) / 1000);
    }
    if (lookup.kind === 'records' || lookup.kind === 'absent') {
      if (!this.closed) {
        const ttlMs = lookup.kind === 'records' ? Math.min(this.maxTtlMs, Math.max(this.minTtlMs, lookup.ttlSeconds * 1000)) : this.minTtlMs;
        this.cache.set(name, lookup, { ttl: ttlMs });
      }
    } else {
      this.opts.log?.warn({ list: zone, failure: lookup.kind === 'timeout' ? 'timeout' : lookup.code }, 'dns list did not answer: scores nothing');
    }
    return lookup;
  }

  close(): void {
    this.closed = true;
    this.resolver.cancel();
    this.cache.clear();
  }
}
