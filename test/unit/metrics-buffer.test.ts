/**
 * Busy counters add up in plain numbers and hand their sums to prom-client when it collects; what a
 * scrape shows must be exactly what unbuffered counters would show, and bad input must still fail
 * at the call, not at the next scrape.
 */
import { describe, expect, test } from 'vitest';
import { Registry } from 'prom-client';
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
