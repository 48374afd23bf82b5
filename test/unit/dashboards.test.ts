/**
 * Dashboards and alerts against the metric catalogue (drift guard): every dashboard parses, uses the
 * datasource variable and has a query per panel; every relay_guard_* name, matcher label and grouping
 * label used by a dashboard or an alert rule exists in createMetrics().
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { describe, expect, test } from 'vitest';
import { createMetrics } from '../../src/observability/metrics.js';
import {
  DASHBOARDS_DIR,
  TARGET_LABELS,
  alertQueries,
  baseMetricName,
  dashboardFiles,
  dashboardQueries,
  flattenPanels,
  groupings,
  selectors,
  type GrafanaDashboard,
  type QueryRef,
} from '../helpers/prometheus.js';

interface Declared {
  type: string;
  labels: string[];
}

function catalogue(): Map<string, Declared> {
  const m = createMetrics(new Registry(), { defaultMetrics: false });
  const out = new Map<string, Declared>();
  for (const metric of m.register.getMetricsAsArray()) {
    const x = metric as unknown as { name: string; type: string; labelNames?: readonly string[] };
    out.set(x.name, { type: x.type, labels: [...(x.labelNames ?? [])] });
  }
  return out;
}

const CATALOGUE = catalogue();
const HISTOGRAMS = new Set([...CATALOGUE].filter(([, d]) => d.type === 'histogram').map(([n]) => n));
const DS_REF = { type: 'prometheus', uid: '${datasource}' };

/** Everything wrong with one query, as readable messages (empty when the query is sound). */
function problems(ref: QueryRef, cat: Map<string, Declared> = CATALOGUE): string[] {
  const out: string[] = [];
  const labelsOf = (name: string): string[] | undefined => {
    const { base, extraLabels } = baseMetricName(name, HISTOGRAMS);
    const d = cat.get(base);
    return d ? [...d.labels, ...extraLabels, ...TARGET_LABELS, '__name__'] : undefined;
  };
  for (const sel of selectors(ref.expr)) {
    const labels = labelsOf(sel.name);
    if (!labels) {
      out.push(`${ref.source}: ${sel.name} is not declared in createMetrics()`);
      continue;
    }
    for (const l of sel.matchers) if (!labels.includes(l)) out.push(`${ref.source}: ${sel.name} has no label "${l}"`);
  }
  for (const g of groupings(ref.expr)) {
    for (const name of g.metrics) {
      const labels = labelsOf(name);
      if (!labels) continue; // reported above
      for (const l of g.labels) if (!labels.includes(l)) out.push(`${ref.source}: grouping label "${l}" does not exist on ${name}`);
    }
  }
  return out;
}

function readDashboard(file: string): GrafanaDashboard {
  return JSON.parse(readFileSync(join(DASHBOARDS_DIR, file), 'utf8')) as GrafanaDashboard;
}

describe('the drift checker itself', () => {
  const cases = [
    // sound queries
    { name: 'counter with its labels', expr: 'sum by (rule) (rate(relay_guard_relay_denials_total{job=~"$job"}[$__rate_interval]))', bad: 0 },
    { name: 'histogram bucket with le', expr: 'histogram_quantile(0.9, sum by (le, verb) (rate(relay_guard_backend_reply_duration_seconds_bucket[5m])))', bad: 0 },
    { name: 'trailing by clause', expr: 'sum(rate(relay_guard_auth_total{result="failure"}[5m])) by (result, instance)', bad: 0 },
    // each of these must be caught
    { name: 'unknown metric', expr: 'rate(relay_guard_relay_denial_total[5m])', bad: 1 },
    { name: 'matcher label the metric lacks', expr: 'relay_guard_relay_denials_total{verdict="reject"}', bad: 1 },
    { name: 'by label the metric lacks', expr: 'sum by (rule) (rate(relay_guard_connections_total[5m]))', bad: 1 },
    { name: 'trailing by label the metric lacks', expr: 'sum(rate(relay_guard_auth_total[5m])) by (kind)', bad: 1 },
    { name: 'le on a non-bucket series', expr: 'sum by (le) (rate(relay_guard_backend_reply_duration_seconds_count[5m]))', bad: 1 },
    { name: '_bucket of a counter is not a histogram', expr: 'rate(relay_guard_commands_total_bucket[5m])', bad: 1 },
  ];
  test.each(cases)('$name', ({ expr, bad }) => {
    expect(problems({ source: 'case', expr })).toHaveLength(bad);
  });
});

describe.each(dashboardFiles())('dashboards/%s', (file) => {
  const dash = readDashboard(file);
  const panels = flattenPanels(dash.panels);

  test('has a stable uid, a title and a recent schemaVersion', () => {
    expect(dash.uid).toBe(`relay-guard-${file.replace(/\.json$/, '')}`);
    expect(dash.title).toMatch(/relay-guard/);
    expect(dash.schemaVersion).toBeGreaterThanOrEqual(36);
  });

  test('declares a Prometheus datasource variable, and its query variables use it', () => {
    const vars = dash.templating?.list ?? [];
    const ds = vars.find((v) => v.name === 'datasource');
    expect(ds).toMatchObject({ type: 'datasource', query: 'prometheus' });
    for (const v of vars.filter((x) => x.type === 'query')) expect((v as { datasource?: unknown }).datasource, v.name).toEqual(DS_REF);
    expect(vars.map((v) => v.name)).toEqual(expect.arrayContaining(['job', 'instance']));
  });

  test('has panels, including rows with nested panels', () => {
    expect(panels.filter((p) => p.type !== 'row').length).toBeGreaterThanOrEqual(10);
    expect(panels.some((p) => p.type === 'row')).toBe(true);
    const ids = panels.map((p) => (p as { id?: number }).id);
    expect(new Set(ids).size, 'panel ids are unique').toBe(ids.length);
  });

  test('every panel has a query and uses the datasource variable', () => {
    for (const p of panels) {
      if (p.type === 'row') {
        expect(p.targets ?? [], `row "${p.title}" holds no queries itself`).toHaveLength(0);
        continue;
      }
      expect(p.datasource, `panel "${p.title}" datasource`).toEqual(DS_REF);
      expect(p.targets?.length ?? 0, `panel "${p.title}" has a target`).toBeGreaterThanOrEqual(1);
      for (const t of p.targets ?? []) {
        expect(t.expr?.trim(), `panel "${p.title}" target expr`).toBeTruthy();
        expect(t.datasource, `panel "${p.title}" target datasource`).toEqual(DS_REF);
        expect(selectors(t.expr ?? '').length, `panel "${p.title}" queries a relay_guard_* metric`).toBeGreaterThanOrEqual(1);
      }
    }
  });

  test('filters every relay_guard_* selector by $job and $instance', () => {
    for (const ref of dashboardQueries().filter((r) => r.source.startsWith(`dashboards/${file} panel`))) {
      for (const sel of selectors(ref.expr)) expect(sel.matchers, `${ref.source}: ${sel.name}`).toEqual(expect.arrayContaining(['job', 'instance']));
    }
  });
});

describe('drift guard: dashboards and alerts use only declared metrics and labels', () => {
  const refs = [...dashboardQueries(), ...alertQueries()];

  test('finds the queries to check', () => {
    expect(dashboardQueries().length).toBeGreaterThan(20);
    expect(alertQueries().length).toBeGreaterThanOrEqual(9);
  });

  test('every referenced name, matcher label and grouping label exists', () => {
    expect(refs.flatMap((r) => problems(r))).toEqual([]);
  });

  test('the dashboards together cover the core metrics of the issue', () => {
    const used = new Set(refs.flatMap((r) => selectors(r.expr).map((s) => baseMetricName(s.name, HISTOGRAMS).base)));
    const core = [
      'relay_guard_messages_total', 'relay_guard_message_bytes_total', 'relay_guard_sessions_active', 'relay_guard_connections_total',
      'relay_guard_rcpt_verdicts_total', 'relay_guard_relay_denials_total', 'relay_guard_limit_hits_total', 'relay_guard_bans_active',
      'relay_guard_backend_up', 'relay_guard_backend_connect_duration_seconds', 'relay_guard_backend_reply_duration_seconds',
      'relay_guard_protocol_errors_total', 'relay_guard_internal_errors_total', 'relay_guard_rules_reloads_total',
      'relay_guard_smuggling_attempts_total', 'relay_guard_auth_total', 'relay_guard_tls_handshakes_total', 'relay_guard_refused_verbs_total',
      'relay_guard_tls_certificate_expiry_timestamp_seconds', 'relay_guard_limit_store_fallback',
    ];
    expect(core.filter((n) => !used.has(n))).toEqual([]);
  });
});
