/**
 * Busy counters add up in plain numbers and hand their sums to prom-client when it collects; what a
 * scrape shows must be exactly what unbuffered counters would show, and bad input must still fail
 * at the call, not at the next scrape.
 */
import { describe, expect, test } from 'vitest';
import { Histogram, Registry } from 'prom-client';
import { createMetrics } from '../../src/observability/metrics.js';

function fresh() {
  return createMetrics(new Registry(), { defaultMetrics: false });
}

async function value(m: ReturnType<typeof fresh>, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const metric = (await m.register.getMetricsAsJSON()).find((x) => x.name === name);
  const v = (metric?.values as Array<{ labels: Record<string, string>; value: number }> | undefined)?.find((x) =>
    Object.entries(labels).every(([k, want]) => x.labels[k] === want),
  );
  return v?.value;
}

describe('buffered counters', () => {
  test('increments across label sets add up exactly, and keep adding after a scrape', async () => {
    const m = fresh();
    for (let i = 0; i < 1000; i++) m.replies.inc({ source: i % 3 === 0 ? 'guard' : 'backend', class: '2xx' });
    m.replies.inc({ source: 'guard', class: '5xx' }, 7);
    expect(await value(m, 'relay_guard_replies_total', { source: 'guard', class: '2xx' })).toBe(334);
    expect(await value(m, 'relay_guard_replies_total', { source: 'backend', class: '2xx' })).toBe(666);
    expect(await value(m, 'relay_guard_replies_total', { source: 'guard', class: '5xx' })).toBe(7);
    m.replies.inc({ source: 'guard', class: '5xx' });
    expect(await value(m, 'relay_guard_replies_total', { source: 'guard', class: '5xx' })).toBe(8);
    expect(await value(m, 'relay_guard_replies_total', { source: 'backend', class: '2xx' })).toBe(666);
    expect((await m.commands.get()).values).toEqual([]);
    m.commands.inc({ verb: 'MAIL' });
    expect((await m.commands.get()).values.map((v) => v.value)).toEqual([1]);
  });

  test('a new label set is visible at 0 → n, zero increments publish a series', async () => {
    const m = fresh();
    m.connections.inc({ listener: 'mx', outcome: 'accepted' }, 0);
    expect(await value(m, 'relay_guard_connections_total', { listener: 'mx', outcome: 'accepted' })).toBe(0);
  });

  test('bad input fails at the call: unknown label, negative, NaN', () => {
    const m = fresh();
    expect(() => m.replies.inc({ source: 'guard', klass: '2xx' } as never)).toThrow();
    expect(() => m.replies.inc({ source: 'guard', class: '2xx' }, -1)).toThrow();
    expect(() => m.replies.inc({ source: 'guard', class: '2xx' }, Number.NaN)).toThrow();
  });
});

describe('buffered gauges', () => {
  test('inc/dec across label sets net out exactly; set() keeps its place in the order', async () => {
    const m = fresh();
    for (let i = 0; i < 100; i++) m.sessionsActive.inc({ listener: i % 2 ? 'mx' : 'submission' });
    for (let i = 0; i < 60; i++) m.sessionsActive.dec({ listener: i % 2 ? 'mx' : 'submission' });
    expect(await value(m, 'relay_guard_sessions_active', { listener: 'mx' })).toBe(20);
    expect(await value(m, 'relay_guard_sessions_active', { listener: 'submission' })).toBe(20);
    m.sessionsActive.dec({ listener: 'mx' }, 5);
    m.sessionsActive.set({ listener: 'mx' }, 100); // after the dec: wins
    m.sessionsActive.inc({ listener: 'mx' }, 2); // after the set: adds
    expect(await value(m, 'relay_guard_sessions_active', { listener: 'mx' })).toBe(102);
    m.backendConnections.inc({ backend: 'b1' });
    m.backendConnections.dec({ backend: 'b1' });
    expect(await value(m, 'relay_guard_backend_connections', { backend: 'b1' })).toBe(0);
  });

  test('bad input fails at the call', () => {
    const m = fresh();
    expect(() => m.sessionsActive.inc({ nope: 'x' } as never)).toThrow();
    expect(() => m.sessionsActive.dec({ listener: 'mx' }, Number.NaN)).toThrow();
  });
});

describe('buffered histograms', () => {
  /** The exposition text of one histogram, from a registry holding only it. */
  async function text(h: Histogram<string>): Promise<string> {
    const r = new Registry();
    r.registerMetric(h);
    return (await r.metrics()).trimEnd();
  }

  /** Same series, same bucket counts and counts; sums equal up to float rounding (added in another order). */
  function expectSameHistogram(got: string, want: string): void {
    const parse = (t: string) => new Map(t.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => [l.slice(0, l.lastIndexOf(' ')), Number(l.slice(l.lastIndexOf(' ') + 1))] as const));
    const g = parse(got);
    const w = parse(want);
    expect([...g.keys()]).toEqual([...w.keys()]);
    for (const [k, v] of w) {
      if (/_sum(\{|$)/.test(k)) expect(Math.abs(g.get(k)! - v)).toBeLessThanOrEqual(Math.abs(v) * 1e-12);
      else expect(g.get(k), k).toBe(v);
    }
  }

  test('buckets, count and sum equal an unbuffered histogram fed the same values, across scrapes', async () => {
    const m = fresh();
    const shape = { name: 'relay_guard_backend_reply_duration_seconds', help: 'Time from forwarding a command to the backend reply, by verb', labelNames: ['verb'], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [] };
    const plain = new Histogram(shape);
    // Values on every bound, between bounds, above the last bound and zero; three verbs.
    const values = [0, 0.0005, 0.0007, 0.001, 0.003, 0.05, 0.0501, 1, 29.9, 30, 31, 120];
    const feed = (n: number) => {
      for (let i = 0; i < n; i++) {
        const v = values[i % values.length]!;
        const verb = ['MAIL', 'RCPT', 'DATA_END'][i % 3]!;
        m.backendReplyDuration.observe({ verb }, v);
        plain.observe({ verb }, v);
      }
    };
    feed(500);
    const buffered = await m.register.getSingleMetricAsString('relay_guard_backend_reply_duration_seconds');
    expectSameHistogram(buffered, await text(plain));
    feed(77);
    expectSameHistogram(await m.register.getSingleMetricAsString('relay_guard_backend_reply_duration_seconds'), await text(plain));
  });

  test('an unlabelled histogram too, and a reset series starts again from what follows', async () => {
    const m = fresh();
    const plain = new Histogram({ name: 'relay_guard_message_size_bytes', help: (m.messageSize as unknown as { help: string }).help, buckets: [...(m.messageSize as unknown as { upperBounds: number[] }).upperBounds], registers: [] });
    for (const v of [10, 1000, 5e5, 1e7, 1e9]) {
      m.messageSize.observe(v);
      plain.observe(v);
    }
    expectSameHistogram(await m.register.getSingleMetricAsString('relay_guard_message_size_bytes'), await text(plain));
    m.messageSize.reset();
    plain.reset();
    for (const v of [20, 3000]) {
      m.messageSize.observe(v);
      plain.observe(v);
    }
    expectSameHistogram(await m.register.getSingleMetricAsString('relay_guard_message_size_bytes'), await text(plain));
  });

  test('bad input fails at the call: NaN, Infinity, unknown label', () => {
    const m = fresh();
    expect(() => m.backendReplyDuration.observe({ verb: 'MAIL' }, Number.NaN)).toThrow();
    expect(() => m.backendReplyDuration.observe({ verb: 'MAIL' }, Number.POSITIVE_INFINITY)).toThrow();
    expect(() => m.backendReplyDuration.observe({ nope: 'x' } as never, 0.1)).toThrow();
  });
});
