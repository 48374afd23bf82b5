/**
 * docs/metrics.md is the metric catalogue: generated from createMetrics() by scripts/metrics-doc.ts.
 * These tests fail when a metric is declared but not documented, or the file is stale.
 */
import { readFileSync } from 'node:fs';
import { Registry } from 'prom-client';
import { describe, expect, test } from 'vitest';
import { createMetrics } from '../../src/observability/metrics.js';
import { METRICS_DOC_PATH, metricCatalogue, renderMetricsDoc } from '../../scripts/metrics-doc.js';

const doc = readFileSync(METRICS_DOC_PATH, 'utf8');

function declared(): Array<{ name: string; type: string; labels: string[] }> {
  const m = createMetrics(new Registry(), { defaultMetrics: false });
  return m.register.getMetricsAsArray().map((x) => {
    const d = x as unknown as { name: string; type: string; labelNames?: readonly string[] };
    return { name: d.name, type: d.type, labels: [...(d.labelNames ?? [])] };
  });
}

describe('docs/metrics.md', () => {
  test('the catalogue holds every declared relay_guard_* metric', () => {
    const names = declared().map((d) => d.name);
    expect(names.length).toBeGreaterThan(20);
    expect(metricCatalogue().map((e) => e.name).sort()).toEqual([...names].sort());
  });

  test.each(declared())('documents $name with its type and every label', ({ name, type, labels }) => {
    const section = doc.split(`\n## ${name}\n`)[1]?.split('\n## ')[0];
    expect(section, `docs/metrics.md has no section for ${name}; run npx tsx scripts/metrics-doc.ts`).toBeDefined();
    expect(section).toContain(`*${type}*`);
    for (const l of labels) expect(section, `${name} label ${l}`).toMatch(new RegExp(`\\| \`${l}\` \\| [^|\\n]+`));
    expect(section).toMatch(/```promql\n.*relay_guard_/);
  });

  test('lists Node default process metrics', () => {
    expect(doc).toContain('`process_cpu_seconds_total`');
    expect(doc).toContain('`nodejs_eventloop_lag_seconds`');
  });

  test('is up to date with scripts/metrics-doc.ts (regenerate with: npx tsx scripts/metrics-doc.ts)', () => {
    expect(doc).toBe(renderMetricsDoc());
  });

  test('the renderer documents a metric it is given, so a new metric cannot be left out', () => {
    const text = renderMetricsDoc([{ name: 'relay_guard_example_total', type: 'counter', help: 'Examples by colour (red, blue)', labels: ['colour'] }], []);
    expect(text).toContain('## relay_guard_example_total');
    expect(text).toContain('| `colour` | red, blue |');
    expect(text).toContain('sum by (colour) (rate(relay_guard_example_total{job="relay-guard"}[5m]))');
  });
});
