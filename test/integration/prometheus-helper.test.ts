/**
 * test/helpers/prometheus.ts works against a real Prometheus: a scrape tap serves a fixed /metrics
 * text, a private Prometheus scrapes it, and the query API returns the sample we served.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startPrometheus, startScrapeTap, type PrometheusServer, type ScrapeTap } from '../helpers/prometheus.js';

const METRICS_TEXT = [
  '# HELP relay_guard_relay_denials_total Recipients refused as relay attempts, by rule id',
  '# TYPE relay_guard_relay_denials_total counter',
  'relay_guard_relay_denials_total{rule="relay-denied"} 7',
  'relay_guard_relay_denials_total{rule="routing-trick"} 2',
  '',
].join('\n');

describe('startPrometheus + startScrapeTap', () => {
  let tap: ScrapeTap;
  let prom: PrometheusServer;

  beforeAll(async () => {
    tap = await startScrapeTap(() => METRICS_TEXT);
    prom = await startPrometheus({ targets: [tap.target], scrapeInterval: '1s' });
  });
  afterAll(async () => {
    await prom?.close();
    await tap?.close();
  });

  test('Prometheus scrapes the tap and answers queries with the served samples', async () => {
    // Scrape 1 is committed before scrape 2 starts.
    await tap.waitForScrapes(2);
    const up = await prom.query('up{job="relay-guard"}');
    expect(up).toHaveLength(1);
    expect(up[0]?.metric.instance).toBe(tap.target);
    expect(up[0]?.value[1]).toBe('1');

    const denials = await prom.query('sum by (rule) (relay_guard_relay_denials_total{job="relay-guard"})');
    const byRule = Object.fromEntries(denials.map((s) => [s.metric.rule, Number(s.value[1])]));
    expect(byRule).toEqual({ 'relay-denied': 7, 'routing-trick': 2 });
  });

  test('query errors are reported, not swallowed', async () => {
    await expect(prom.query('sum by (')).rejects.toThrow(/failed/);
  });

  test('waitForScrapes times out with a clear error when no scrape comes', async () => {
    await expect(tap.waitForScrapes(tap.scrapes + 1000, 50)).rejects.toThrow(/timed out after 50 ms/);
  });
});
