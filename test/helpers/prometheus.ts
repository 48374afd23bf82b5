/**
 * Prometheus test helpers:
 *  - what our artefacts query: PromQL expressions of dashboards/*.json and deploy/prometheus/alerts.yml,
 *    and the relay_guard_* selectors and grouping labels inside them (drift guards, live test);
 *  - a private, real Prometheus (Debian `prometheus`) scraping given targets, with a query helper;
 *  - a scrape tap: a tiny /metrics server that counts scrapes, so tests wait on events, not sleeps.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { EventEmitter } from 'node:events';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { freePort } from './free-port.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const DASHBOARDS_DIR = join(REPO_ROOT, 'dashboards');
export const ALERTS_FILE = join(REPO_ROOT, 'deploy/prometheus/alerts.yml');

// ───────────────────────────── PromQL references ─────────────────────────────

export interface QueryRef {
  /** Where the expression lives, e.g. `dashboards/overview.json panel "Relay denials"`. */
  source: string;
  expr: string;
}

export interface GrafanaPanel {
  type?: string;
  title?: string;
  datasource?: unknown;
  targets?: Array<{ expr?: string; datasource?: unknown }>;
  panels?: GrafanaPanel[];
}

export interface GrafanaVariable {
  name?: string;
  type?: string;
  query?: string | { query?: string };
}

export interface GrafanaDashboard {
  uid?: string;
  title?: string;
  schemaVersion?: number;
  panels?: GrafanaPanel[];
  templating?: { list?: GrafanaVariable[] };
}

/** Every panel of a dashboard, rows flattened (a collapsed row keeps its children in `panels`). */
export function flattenPanels(panels: GrafanaPanel[] | undefined): GrafanaPanel[] {
  const out: GrafanaPanel[] = [];
  for (const p of panels ?? []) {
    out.push(p);
    if (p.panels) out.push(...flattenPanels(p.panels));
  }
  return out;
}

export function dashboardFiles(): string[] {
  return readdirSync(DASHBOARDS_DIR).filter((f) => f.endsWith('.json')).sort();
}

export function dashboardQueries(): QueryRef[] {
  const refs: QueryRef[] = [];
  for (const file of dashboardFiles()) {
    const json = JSON.parse(readFileSync(join(DASHBOARDS_DIR, file), 'utf8')) as GrafanaDashboard;
    for (const v of json.templating?.list ?? []) {
      const q = typeof v.query === 'string' ? v.query : v.query?.query;
      if (v.type === 'query' && q) refs.push({ source: `dashboards/${file} variable "${v.name ?? '?'}"`, expr: q });
    }
    for (const p of flattenPanels(json.panels)) {
      for (const t of p.targets ?? []) if (t.expr) refs.push({ source: `dashboards/${file} panel "${p.title ?? '?'}"`, expr: t.expr });
    }
  }
  return refs;
}

export interface AlertRule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export function alertRules(file: string = ALERTS_FILE): AlertRule[] {
  const doc = parseYaml(readFileSync(file, 'utf8')) as { groups: Array<{ name: string; rules: AlertRule[] }> };
  return doc.groups.flatMap((g) => g.rules);
}

export function alertQueries(file: string = ALERTS_FILE): QueryRef[] {
  return alertRules(file).map((r) => ({ source: `alerts.yml ${r.alert ?? r.record ?? '?'}`, expr: r.expr }));
}

/** Grafana template variables are not PromQL: replace them by harmless stand-ins before scanning. */
function stripTemplating(expr: string): string {
  return expr.replace(/\$__\w+/g, '5m').replace(/\$\{?\w+(:\w+)?\}?/g, 'x');
}

export interface Selector {
  /** As written, e.g. relay_guard_backend_reply_duration_seconds_bucket. */
  name: string;
  /** Label names used in `{…}` matchers. */
  matchers: string[];
}

/** relay_guard_* vector selectors with the label names of their matchers. */
export function selectors(expr: string): Selector[] {
  const e = stripTemplating(expr);
  const out: Selector[] = [];
  const re = /\b(relay_guard_[a-zA-Z0-9_]+)\s*(\{([^}]*)\})?/g;
  for (let m = re.exec(e); m; m = re.exec(e)) {
    const body = m[3] ?? '';
    const matchers = [...body.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)/g)].map((x) => x[1]!);
    out.push({ name: m[1]!, matchers });
  }
  return out;
}

/** Index of the parenthesis closing the one at `open`, or -1. */
function closingParen(s: string, open: number): number {
  let depth = 0;
  for (let i = open; i < s.length; i++) {
    if (s[i] === '(') depth++;
    else if (s[i] === ')' && --depth === 0) return i;
  }
  return -1;
}

export interface Grouping {
  /** Labels in `by (…)` / `without (…)` / `on (…)` / `ignoring (…)` / `group_left (…)`. */
  labels: string[];
  /** relay_guard_* metric names inside the aggregated argument (or the whole expression for on/ignoring). */
  metrics: string[];
}

/**
 * Grouping clauses and the metrics they group: `sum by (a) (X)` and `sum (X) by (a)` relate `a` to
 * the metrics of X. For vector matching (`on`, `ignoring`, `group_left/right`) the labels must exist on
 * the metrics of the whole expression.
 */
export function groupings(expr: string): Grouping[] {
  const e = stripTemplating(expr);
  const out: Grouping[] = [];
  const names = (s: string): string[] => [...new Set(selectors(s).map((x) => x.name))];
  const re = /\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)/g;
  for (let m = re.exec(e); m; m = re.exec(e)) {
    const labels = m[2]!.split(',').map((s) => s.trim()).filter(Boolean);
    if (labels.length === 0) continue;
    const kw = m[1]!;
    let scope = e;
    if (kw === 'by' || kw === 'without') {
      const after = m.index + m[0].length;
      const next = /^\s*\(/.exec(e.slice(after));
      if (next) {
        const open = after + next[0].length - 1;
        scope = e.slice(open, closingParen(e, open) + 1);
      } else {
        // `agg (X) by (…)`: the argument is the parenthesised group just before the keyword.
        let i = m.index - 1;
        while (i >= 0 && /\s/.test(e[i]!)) i--;
        let depth = 0;
        let j = i;
        for (; j >= 0; j--) {
          if (e[j] === ')') depth++;
          else if (e[j] === '(' && --depth === 0) break;
        }
        scope = e.slice(Math.max(j, 0), i + 1);
      }
    }
    out.push({ labels, metrics: names(scope) });
  }
  return out;
}

/** Histogram series suffixes stripped to find the declared metric. */
export function baseMetricName(name: string, histograms: ReadonlySet<string>): { base: string; extraLabels: string[] } {
  for (const suffix of ['_bucket', '_sum', '_count'] as const) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      if (histograms.has(base)) return { base, extraLabels: suffix === '_bucket' ? ['le'] : [] };
    }
  }
  return { base: name, extraLabels: [] };
}

/** Labels every scraped series carries, besides its own. */
export const TARGET_LABELS = ['job', 'instance'] as const;

// ───────────────────────────── a private Prometheus ─────────────────────────────

export interface PrometheusServer {
  url: string;
  dir: string;
  /** Instant query; returns the result vector. Throws on an API error. */
  query(expr: string): Promise<Array<{ metric: Record<string, string>; value: [number, string] }>>;
  close(): Promise<void>;
}

export interface StartPrometheusOptions {
  /** host:port scrape targets (job "relay-guard", path /metrics). */
  targets: string[];
  scrapeInterval?: string;
  /** Rule files copied into the config's `rule_files`. */
  ruleFiles?: string[];
  timeoutMs?: number;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

const READY_LINE = 'Server is ready to receive web requests';

/** Start `prometheus` on 127.0.0.1 in a temp dir; resolves once it logs readiness and /-/ready says 200. */
export async function startPrometheus(opts: StartPrometheusOptions): Promise<PrometheusServer> {
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const dir = mkdtempSync(join(tmpdir(), 'relay-guard-prom-'));
  const config = [
    'global:',
    `  scrape_interval: ${opts.scrapeInterval ?? '1s'}`,
    `  evaluation_interval: ${opts.scrapeInterval ?? '1s'}`,
    ...(opts.ruleFiles?.length ? ['rule_files:', ...opts.ruleFiles.map((f) => `  - ${JSON.stringify(f)}`)] : []),
    'scrape_configs:',
    '  - job_name: relay-guard',
    '    metrics_path: /metrics',
    '    static_configs:',
    `      - targets: [${opts.targets.map((t) => JSON.stringify(t)).join(', ')}]`,
    '',
  ].join('\n');
  const configFile = join(dir, 'prometheus.yml');
  writeFileSync(configFile, config);

  // The port can be taken between freePort() and Prometheus binding it: retry a bounded number of times.
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const child = spawn(
      'prometheus',
      [`--config.file=${configFile}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=info'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let log = '';
    const ready = new Promise<void>((resolve, reject) => {
      child.stderr!.setEncoding('utf8');
      child.stderr!.on('data', (chunk: string) => {
        if (log.length < 64_000) log += chunk;
        if (log.includes(READY_LINE)) resolve();
      });
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`prometheus exited with ${code}: ${log.slice(-2000)}`)));
    });
    try {
      await withTimeout(ready, timeoutMs, 'prometheus ready');
    } catch (err) {
      lastError = err as Error;
      await stop(child);
      if (/address already in use/.test(log)) continue;
      rmSync(dir, { recursive: true, force: true });
      throw lastError;
    }
    const url = `http://127.0.0.1:${port}`;
    const res = await fetch(`${url}/-/ready`);
    if (res.status !== 200) {
      await stop(child);
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`prometheus /-/ready answered ${res.status}`);
    }
    return {
      url,
      dir,
      async query(expr) {
        const r = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(expr)}`);
        const body = (await r.json()) as { status: string; error?: string; data?: { resultType: string; result: unknown } };
        if (body.status !== 'success' || !body.data) throw new Error(`query ${expr} failed: ${body.error ?? r.status}`);
        if (body.data.resultType !== 'vector') throw new Error(`query ${expr}: expected a vector, got ${body.data.resultType}`);
        return (body.data.result as Array<{ metric: Record<string, string>; value: [number, string] }>);
      },
      async close() {
        await stop(child);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  rmSync(dir, { recursive: true, force: true });
  throw lastError ?? new Error('prometheus did not start');
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  try {
    await withTimeout(exited, 5_000, 'prometheus exit');
  } catch {
    child.kill('SIGKILL');
    await exited;
  }
}

// ───────────────────────────── scrape tap ─────────────────────────────

export interface ScrapeTap {
  /** host:port to give Prometheus as a target. */
  target: string;
  /** Number of /metrics requests served so far. */
  readonly scrapes: number;
  /**
   * Resolves once `n` scrapes have been requested. A scrape's samples are committed before the
   * next scrape starts, so after scrape k+1 begins, queries see scrape k.
   */
  waitForScrapes(n: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * A /metrics endpoint whose body comes from `source()` — fixed text, or the guard's live /metrics
 * fetched on every scrape. Listens on 127.0.0.1:0.
 */
export async function startScrapeTap(source: () => string | Promise<string>): Promise<ScrapeTap> {
  const events = new EventEmitter();
  let scrapes = 0;
  const server: Server = createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    scrapes++;
    events.emit('scrape', scrapes);
    Promise.resolve()
      .then(source)
      .then(
        (text) => res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(text),
        (err: unknown) => res.writeHead(502).end(String(err)),
      );
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    target: `127.0.0.1:${port}`,
    get scrapes() {
      return scrapes;
    },
    waitForScrapes(n, timeoutMs = 15_000) {
      if (scrapes >= n) return Promise.resolve();
      let on: ((count: number) => void) | undefined;
      const reached = new Promise<void>((resolve) => {
        on = (count: number): void => {
          if (count >= n) resolve();
        };
        events.on('scrape', on);
      });
      return withTimeout(reached, timeoutMs, `${n} scrapes`).finally(() => {
        if (on) events.off('scrape', on);
      });
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}
