/**
 * Generate docs/metrics.md, the metric catalogue, from createMetrics() (the only place metrics are
 * declared). Run: `npx tsx scripts/metrics-doc.ts` (writes the file) or `--check` (exit 1 if stale).
 * test/unit/metrics-doc.test.ts fails when the committed file and the declarations drift apart.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Registry } from 'prom-client';
import { EVENT_LOOP_SAMPLE_MS, KNOWN_VERBS, REFUSAL_RULES, createMetrics } from '../src/observability/metrics.js';

export interface CatalogueEntry {
  name: string;
  type: string;
  help: string;
  labels: string[];
}

/** Every relay_guard_* metric createMetrics() declares, sorted by name. */
export function metricCatalogue(): CatalogueEntry[] {
  const m = createMetrics(new Registry(), { defaultMetrics: false });
  return m.register
    .getMetricsAsArray()
    .map((metric) => {
      const x = metric as unknown as { name: string; help: string; type: string; labelNames?: readonly string[] };
      return { name: x.name, type: x.type, help: x.help, labels: [...(x.labelNames ?? [])] };
    })
    .sort((a, b) => a.name.localeCompare(b.name));
}

/** Names of Node's default process metrics (collectDefaultMetrics), sorted. */
export function defaultMetricNames(): string[] {
  const all = createMetrics(new Registry()).register.getMetricsAsArray().map((x) => (x as unknown as { name: string }).name);
  return all.filter((n) => !n.startsWith('relay_guard_')).sort();
}

const SEL = '{job="relay-guard"}';

/** Closed value sets of each label, where the Help text is not enough. Keyed by label name. */
const LABEL_VALUES: Record<string, string> = {
  listener: 'listener names from relay-guard.yaml (`listeners[].name`, e.g. mx, submission, smtps)',
  rule: 'rule ids from rules/ (stable kebab-case, e.g. relay-denied, routing-trick, never-relay)',
  limit: 'limit ids from rules/limits.yaml (e.g. relay-denied-per-ip, auth-failures-per-ip)',
  backend: 'backend names from relay-guard.yaml (`backends[].name`, else host:port)',
  verb: `known SMTP verbs (${KNOWN_VERBS.join(', ')}) or other`,
  version: 'the package version of the running build',
  mode: 'enforce, warn',
  verdict: 'accept, reject, defer',
  section: 'rules sections (file names in rules/ without .yaml)',
  store: 'redis',
};

/** A label whose values differ for one metric from LABEL_VALUES. Keyed by metric, then label. */
const METRIC_LABEL_VALUES: Record<string, Record<string, string>> = {
  relay_guard_command_refusals_total: {
    rule: `built-in rule ids (${REFUSAL_RULES.join(', ')}); sender rule ids from rules/senders.yaml; limit ids from rules/limits.yaml (e.g. relay-denied-per-ip); policy-service:<name> (a configured policy service)`,
  },
};

/** A PromQL example per metric; the fallback depends on the type. */
const EXAMPLES: Record<string, string> = {
  relay_guard_connections_total: `sum by (outcome) (rate(relay_guard_connections_total${SEL}[5m]))`,
  relay_guard_sessions_active: `sum by (listener) (relay_guard_sessions_active${SEL})`,
  relay_guard_rcpt_verdicts_total: `sum by (verdict, rule) (rate(relay_guard_rcpt_verdicts_total${SEL}[5m]))`,
  relay_guard_command_refusals_total: `topk(10, sum by (rule) (increase(relay_guard_command_refusals_total${SEL}[1h])))`,
  relay_guard_relay_denials_total: `topk(5, sum by (rule) (increase(relay_guard_relay_denials_total${SEL}[1h])))`,
  relay_guard_messages_total: `sum by (outcome) (rate(relay_guard_messages_total${SEL}[5m]))`,
  relay_guard_limit_hits_total: `topk(10, sum by (limit, action) (increase(relay_guard_limit_hits_total${SEL}[1h])))`,
  relay_guard_backend_up: `min by (instance) (relay_guard_backend_up${SEL}) == 0`,
  relay_guard_backend_connect_duration_seconds: `histogram_quantile(0.95, sum by (le) (rate(relay_guard_backend_connect_duration_seconds_bucket${SEL}[5m])))`,
  relay_guard_backend_reply_duration_seconds: `histogram_quantile(0.99, sum by (le, verb) (rate(relay_guard_backend_reply_duration_seconds_bucket${SEL}[5m])))`,
  relay_guard_tls_certificate_expiry_timestamp_seconds: `(relay_guard_tls_certificate_expiry_timestamp_seconds${SEL} - time()) / 86400`,
  relay_guard_rules_reloads_total: `increase(relay_guard_rules_reloads_total{job="relay-guard",result="error"}[15m]) > 0`,
  relay_guard_rules_last_reload_timestamp_seconds: `time() - relay_guard_rules_last_reload_timestamp_seconds${SEL}`,
  relay_guard_build_info: `count by (version) (relay_guard_build_info${SEL})`,
  relay_guard_rules_store_up: `min by (instance) (relay_guard_rules_store_up${SEL}) == 0`,
  relay_guard_rules_store_behind: `max by (instance) (relay_guard_rules_store_behind${SEL}) == 1`,
  relay_guard_fleet_guards: `max by (state) (relay_guard_fleet_guards${SEL})`,
};

function example(e: CatalogueEntry): string {
  const given = EXAMPLES[e.name];
  if (given) return given;
  const by = e.labels.length > 0 ? ` by (${e.labels.join(', ')})` : '';
  if (e.type === 'counter') return `sum${by} (rate(${e.name}${SEL}[5m]))`;
  if (e.type === 'histogram') return `histogram_quantile(0.95, sum by (le) (rate(${e.name}_bucket${SEL}[5m])))`;
  return `sum${by} (${e.name}${SEL})`;
}

/** The closed value set of a label: the LABEL_VALUES entry, else the list in the Help text's parentheses. */
function labelValues(label: string, help: string, metric?: string): string {
  const known = (metric ? METRIC_LABEL_VALUES[metric]?.[label] : undefined) ?? LABEL_VALUES[label];
  if (known) return known;
  const m = new RegExp(`${label.replace(/_/g, '[ _]')}s? \\(([^)]+)\\)`, 'i').exec(help);
  if (m?.[1]) return m[1];
  const any = /\(([^)]+)\)/.exec(help);
  return any?.[1] ?? 'see description';
}

const esc = (s: string): string => s.replace(/\|/g, '\\|');

export function renderMetricsDoc(entries: CatalogueEntry[] = metricCatalogue(), defaults: string[] = defaultMetricNames()): string {
  const out: string[] = [
    '# relay-guard metric catalogue',
    '',
    '<!-- Generated by `npx tsx scripts/metrics-doc.ts` from createMetrics() in src/observability/metrics.ts. Do not edit by hand. -->',
    '',
    'All metrics are served at `/metrics` on the admin listener (default `127.0.0.1:8025`, no token unless',
    '`admin.metricsAuth` is set) and, optionally, on the separate `metrics` listener. Label values come from',
    'closed sets: never addresses, IPs, HELO names or raw verbs. Prometheus adds the `job` and `instance`',
    'labels when scraping. Histograms also expose `_bucket` (label `le`), `_sum` and `_count` series.',
    '',
    '| metric | type | labels | meaning |',
    '|---|---|---|---|',
  ];
  for (const e of entries) {
    out.push(`| [\`${e.name}\`](#${e.name}) | ${e.type} | ${e.labels.map((l) => `\`${l}\``).join(', ') || '—'} | ${esc(e.help)} |`);
  }
  out.push('');
  for (const e of entries) {
    out.push(`## ${e.name}`, '', `*${e.type}* — ${e.help}.`, '');
    if (e.labels.length > 0) {
      out.push('| label | values |', '|---|---|');
      for (const l of e.labels) out.push(`| \`${l}\` | ${esc(labelValues(l, e.help, e.name))} |`);
      out.push('');
    }
    out.push('```promql', example(e), '```', '');
  }
  out.push(
    '## Node.js process metrics',
    '',
    "prom-client's `collectDefaultMetrics()` adds these (no `relay_guard_` prefix). The event-loop delay behind",
    `\`nodejs_eventloop_lag_*\` is sampled every ${EVENT_LOOP_SAMPLE_MS} ms. prom-client's default, 10 ms, kept the guard at 6.6–6.8 ms of`,
    'CPU per second at rest, against 2.2 ms at 100 ms.',
    '',
    ...defaults.map((n) => `- \`${n}\``),
    '',
  );
  return out.join('\n');
}

export const METRICS_DOC_PATH = fileURLToPath(new URL('../docs/metrics.md', import.meta.url));

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const text = renderMetricsDoc();
  if (process.argv.includes('--check')) {
    const current = readFileSync(METRICS_DOC_PATH, 'utf8');
    if (current !== text) {
      console.error('docs/metrics.md is stale: run npx tsx scripts/metrics-doc.ts');
      process.exit(1);
    }
  } else {
    writeFileSync(METRICS_DOC_PATH, text);
    console.log(`wrote ${METRICS_DOC_PATH}`);
  }
}
