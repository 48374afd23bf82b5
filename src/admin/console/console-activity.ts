/**
 * The "Now" picture of the web console: sessions, messages and refusals per minute, the most refused
 * clients and rules of the last hour, backends, the pool and the limit store. Per-minute counts come
 * from samples of the delivered-messages counter and the refusal ring's total, taken every 10 s into a
 * bounded ring of one hour (no per-event work on the mail path); the rest is read when asked.
 */
import type { Config } from '../../config/schema.js';
import type { BanList } from '../../limits/bans.js';
import type { Metrics } from '../../observability/metrics.js';
import type { CountedKey, RefusalRing } from '../../observability/refusal-ring.js';
import type { PoolSnapshot } from '../../backend/backend-pool.js';
import type { SessionRegistry } from '../../session/session-registry.js';

export const SAMPLE_INTERVAL_MS = 10_000;
const HOUR_MS = 3_600_000;
const MINUTE_MS = 60_000;
/** One hour of samples, plus the one an hour ago. */
const MAX_SAMPLES = HOUR_MS / SAMPLE_INTERVAL_MS + 1;

interface Sample {
  t: number;
  messages: number;
  refusals: number;
}

export interface MinuteCount {
  /** Start of the minute, ISO 8601. */
  minute: string;
  messages: number;
  refusals: number;
}

export interface ConsoleOverview {
  time: string;
  sessions: { open: number; byState: Record<string, number> };
  lastMinute: { messages: number; refusals: number };
  perMinute: MinuteCount[];
  lastHour: { clients: CountedKey[]; rules: CountedKey[]; counted: number };
  recentRefusals: { held: number; capacity: number; total: number };
  backends: { name: string; up: boolean; connections: number }[];
  pool: ({ enabled: true } & PoolSnapshot) | { enabled: false };
  limits: { store: 'memory' | 'redis'; enabled: boolean; fallback: boolean; storeErrors: number };
  bans: { active: number };
}

export interface ActivityDeps {
  config: Pick<Config, 'limits' | 'backends'>;
  metrics: Metrics;
  sessions: Pick<SessionRegistry, 'list'>;
  bans: Pick<BanList, 'list'>;
  refusals?: RefusalRing | undefined;
  rules: { current(): { raw: { limits: { enabled: boolean } } } };
  pool?: (() => PoolSnapshot) | undefined;
  now?: () => number;
}

async function sum(metric: { get(): Promise<{ values: { value: number; labels: Record<string, unknown> }[] }> }, where: (l: Record<string, unknown>) => boolean = () => true): Promise<number> {
  const m = await metric.get();
  return m.values.filter((v) => where(v.labels)).reduce((a, v) => a + v.value, 0);
}

export class ConsoleActivity {
  private readonly samples: Sample[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly now: () => number;

  constructor(private readonly deps: ActivityDeps) {
    this.now = deps.now ?? Date.now;
  }

  start(): void {
    if (this.timer) return;
    void this.sample();
    this.timer = setInterval(() => void this.sample(), SAMPLE_INTERVAL_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private async current(): Promise<Sample> {
    const messages = await sum(this.deps.metrics.messages, (l) => l['outcome'] === 'delivered');
    return { t: this.now(), messages, refusals: this.deps.refusals?.total ?? 0 };
  }

  async sample(): Promise<void> {
    this.samples.push(await this.current());
    if (this.samples.length > MAX_SAMPLES) this.samples.splice(0, this.samples.length - MAX_SAMPLES);
  }

  /** The newest sample at or before t (or the oldest one: the guard is younger than that). */
  private at(t: number): Sample | undefined {
    for (let i = this.samples.length - 1; i >= 0; i--) if (this.samples[i]!.t <= t) return this.samples[i];
    return this.samples[0];
  }

  private perMinute(cur: Sample): MinuteCount[] {
    const out: MinuteCount[] = [];
    const thisMinute = Math.floor(cur.t / MINUTE_MS) * MINUTE_MS;
    const oldest = this.samples[0]?.t ?? cur.t;
    for (let m = thisMinute; m > cur.t - HOUR_MS && m + MINUTE_MS > oldest; m -= MINUTE_MS) {
      const end = m === thisMinute ? cur : this.at(m + MINUTE_MS) ?? cur;
      const start = this.at(m) ?? end;
      out.push({ minute: new Date(m).toISOString(), messages: Math.max(0, end.messages - start.messages), refusals: Math.max(0, end.refusals - start.refusals) });
    }
    return out.reverse();
  }

  async overview(): Promise<ConsoleOverview> {
    const d = this.deps;
    const cur = await this.current();
    const ago = this.at(cur.t - MINUTE_MS) ?? cur;
    const list = d.sessions.list();
    const byState: Record<string, number> = {};
    for (const s of list) byState[s.state] = (byState[s.state] ?? 0) + 1;
    const up = await d.metrics.backendUp.get();
    const conns = await d.metrics.backendConnections.get();
    const names = new Set<string>([...up.values, ...conns.values].map((v) => String(v.labels['backend'] ?? '')).filter((n) => n !== ''));
    const backends = [...names].sort().map((name) => ({
      name,
      up: up.values.some((v) => v.labels['backend'] === name && v.value === 1),
      connections: conns.values.filter((v) => v.labels['backend'] === name).reduce((a, v) => a + v.value, 0),
    }));
    const ring = d.refusals;
    return {
      time: new Date(cur.t).toISOString(),
      sessions: { open: list.length, byState },
      lastMinute: { messages: cur.messages - ago.messages, refusals: cur.refusals - ago.refusals },
      perMinute: this.perMinute(cur),
      lastHour: ring ? ring.top(HOUR_MS) : { clients: [], rules: [], counted: 0 },
      recentRefusals: { held: ring?.size ?? 0, capacity: ring?.capacity ?? 0, total: ring?.total ?? 0 },
      backends,
      pool: d.pool ? { enabled: true, ...d.pool() } : { enabled: false },
      limits: {
        store: d.config.limits.store,
        enabled: d.rules.current().raw.limits.enabled,
        fallback: (await sum(d.metrics.limitStoreFallback)) > 0,
        storeErrors: await sum(d.metrics.limitStoreErrors),
      },
      bans: { active: d.bans.list().length },
    };
  }
}
