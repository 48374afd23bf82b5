/**
 * DnsblScorer against a real DNSBL server (rbldnsd from Debian) on a loopback port: listed, not
 * listed, A-record filters, an allow list outweighing a block list, a list that times out (a UDP
 * relay that drops its queries) and the cache (rbldnsd's query log shows what was asked).
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Registry } from 'prom-client';
import { DnsblScorer } from '../../src/dnsbl/dnsbl-scorer.js';
import type { DnsblConfig } from '../../src/dnsbl/schema.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { dropProxy, startRbldnsd, type DropProxy, type Rbldnsd } from '../helpers/rbldnsd.js';

let dns: Rbldnsd;
let proxy: DropProxy;

beforeAll(async () => {
  dns = await startRbldnsd([
    { zone: 'bl.test', entries: ['127.0.0.9', '127.0.0.11', '127.0.0.12 :127.0.0.20:outside the filter', '::1'] },
    { zone: 'wl.test', entries: ['127.0.0.11'] },
    { zone: 'slow.test', entries: ['127.0.0.9'] },
  ]);
  proxy = await dropProxy(dns.server, ['slow.test']);
});
afterAll(async () => {
  await proxy?.stop();
  await dns?.stop();
});

function scorer(config: Partial<DnsblConfig> & Pick<DnsblConfig, 'lists'>, server = dns.server, timeout = '2s') {
  const metrics = createMetrics(new Registry(), { defaultMetrics: false });
  const s = new DnsblScorer({ config: { threshold: 1, cacheSize: 1000, ...config }, dns: { servers: [server], timeout }, metrics });
  return { s, metrics };
}

async function value(metrics: ReturnType<typeof createMetrics>, name: string, labels: Record<string, string>): Promise<number> {
  const got = await metrics.register.getSingleMetric(name)!.get();
  return got.values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value ?? 0;
}

describe('DnsblScorer with rbldnsd', () => {
  test('a listed client reaches the threshold and gets 554 5.7.1 naming the list', async () => {
    const { s } = scorer({ lists: [{ zone: 'bl.test', weight: 1 }] });
    const r = await s.score('127.0.0.9');
    expect(r.refused).toBe(true);
    expect(r.score).toBe(1);
    expect(r.answers).toEqual([{ zone: 'bl.test', result: 'listed', weight: 1, records: ['127.0.0.2'], cached: false }]);
    expect(r.reply).toMatchObject({ code: 554, enhanced: '5.7.1', lines: ['Service unavailable; client [127.0.0.9] blocked using bl.test'], close: true });
    expect(r.trace.at(-1)).toMatchObject({ ruleId: 'dnsbl', result: 'reject' });
    s.close();
  });

  test('a client no list names passes', async () => {
    const { s } = scorer({ lists: [{ zone: 'bl.test', weight: 1 }] });
    const r = await s.score('127.0.0.10');
    expect(r).toMatchObject({ refused: false, score: 0 });
    expect(r.answers[0]).toMatchObject({ result: 'not_listed', records: [] });
    s.close();
  });

  test('the reply need not name the list', async () => {
    const { s } = scorer({ lists: [{ zone: 'bl.test', weight: 1 }], reply: 'Client [{client}] has a poor reputation' });
    expect((await s.score('127.0.0.9')).reply?.lines).toEqual(['Client [127.0.0.9] has a poor reputation']);
    s.close();
  });

  test('an allow list (negative weight) outweighs a block list', async () => {
    const { s } = scorer({ threshold: 1, lists: [{ zone: 'bl.test', weight: 1 }, { zone: 'wl.test', weight: -2 }] });
    const r = await s.score('127.0.0.11');
    expect(r).toMatchObject({ refused: false, score: -1 });
    expect(r.answers.map((a) => [a.zone, a.result, a.weight])).toEqual([
      ['bl.test', 'listed', 1],
      ['wl.test', 'listed', -2],
    ]);
    // …while a client only the block list names is still refused.
    expect((await s.score('127.0.0.9')).refused).toBe(true);
    s.close();
  });

  test('weights add up to the threshold', async () => {
    const { s } = scorer({ threshold: 3, lists: [{ zone: 'bl.test', weight: 2 }, { zone: 'slow.test', weight: 1 }] });
    expect(await s.score('127.0.0.9')).toMatchObject({ refused: true, score: 3 });
    expect(await s.score('127.0.0.11')).toMatchObject({ refused: false, score: 2 });
    s.close();
  });

  test('match filters the A records: an answer outside the filter is no listing', async () => {
    const { s } = scorer({ lists: [{ zone: 'bl.test', weight: 1, match: '127.0.0.[2..11]' }] });
    const r = await s.score('127.0.0.12');
    expect(r.refused).toBe(false);
    expect(r.answers[0]).toMatchObject({ result: 'not_listed', records: ['127.0.0.20'] });
    expect((await s.score('127.0.0.9')).refused).toBe(true);
    s.close();
  });

  test('a list that times out scores nothing, the mail goes on, and it is counted', async () => {
    const { s, metrics } = scorer({ lists: [{ zone: 'bl.test', weight: 1 }, { zone: 'slow.test', weight: 5 }] }, proxy.server, '300ms');
    const started = Date.now();
    const r = await s.score('127.0.0.10');
    expect(Date.now() - started).toBeLessThan(2000);
    expect(r.refused).toBe(false);
    expect(r.answers.map((a) => [a.zone, a.result])).toEqual([
      ['bl.test', 'not_listed'],
      ['slow.test', 'timeout'],
    ]);
    expect(proxy.dropped()).toContain('10.0.0.127.slow.test');
    expect(await value(metrics, 'relay_guard_dnsbl_answers_total', { list: 'slow.test', result: 'timeout' })).toBe(1);
    // A failure is not cached: the next client asks again (and is counted again).
    await s.score('127.0.0.10');
    expect(await value(metrics, 'relay_guard_dnsbl_answers_total', { list: 'slow.test', result: 'timeout' })).toBe(2);
    // A listed client is still refused by the list that answers.
    expect((await s.score('127.0.0.9')).refused).toBe(true);
    s.close();
  });

  test('cached answers (listed and not listed) are not asked again: the query log shows one query each', async () => {
    const { s, metrics } = scorer({ lists: [{ zone: 'bl.test', weight: 1 }, { zone: 'bl.test', weight: 2, match: '127.0.0.2' }] });
    const before = dns.queries();
    const first = await s.score('127.0.0.9');
    const second = await s.score('127.0.0.9');
    await s.score('127.0.0.10');
    await s.score('127.0.0.10');
    // Concurrent clients from one address share one query.
    await Promise.all([s.score('127.0.0.11'), s.score('127.0.0.11'), s.score('127.0.0.11')]);
    const asked = dns.queries().slice(before.length);
    expect(asked.filter((q) => q.startsWith('9.0.0.127.bl.test'))).toHaveLength(1);
    expect(asked.filter((q) => q.startsWith('10.0.0.127.bl.test'))).toHaveLength(1);
    expect(asked.filter((q) => q.startsWith('11.0.0.127.bl.test'))).toHaveLength(1);
    expect(first.score).toBe(3); // two entries for one zone: one query, both weights
    expect(second).toMatchObject({ score: 3 });
    expect(second.answers.every((a) => a.cached)).toBe(true);
    expect(await value(metrics, 'relay_guard_dnsbl_cache_hits_total', { list: 'bl.test' })).toBe(2);
    s.close();
  });

  test('IPv6 clients are asked by nibble (rbldnsd answers an ip4set for nothing: not listed)', async () => {
    const { s } = scorer({ lists: [{ zone: 'bl.test', weight: 1 }] });
    const r = await s.score('2001:db8::9');
    expect(r.refused).toBe(false);
    expect(r.answers[0]?.result).toMatch(/not_listed|error/);
    s.close();
  });

  test('a server that refuses the zone is an error: scores nothing, counted', async () => {
    const { s, metrics } = scorer({ lists: [{ zone: 'unknown.example', weight: 5 }] });
    const r = await s.score('127.0.0.9');
    expect(r.refused).toBe(false);
    expect(r.answers[0]?.result).toBe('error');
    expect(await value(metrics, 'relay_guard_dnsbl_answers_total', { list: 'unknown.example', result: 'error' })).toBe(1);
    s.close();
  });
});
