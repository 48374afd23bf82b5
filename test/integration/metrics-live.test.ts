/**
 * Issue 7 acceptance, live: real clients run a known traffic mix through a guard in front of the
 * recording backend; then /metrics is fetched over HTTP from the admin listener and
 *  (a) every relay_guard_* series that a dashboard panel, dashboard variable or alert rule queries
 *      exists in the live output, with the labels and label values it filters and groups on;
 *  (b) every counter moved exactly as the traffic implies (tallied by the test as it talks);
 *  (c) no label value holds an IP address or an email address (DESIGN.md invariant 5).
 * All of it in both backend modes: per-client (one backend connection per client) and pooled (the
 * guard greets and answers EHLO itself and lends a pre-opened backend session from MAIL to the
 * reply to end-of-data), where who answered what, and what the backend saw, differ as the mode says.
 * Then, in both modes, two scrapes with known traffic in between (over HTTP and with
 * register.metrics(), one taken in mid-session) differ by exactly that traffic: buffered metrics
 * (handed to prom-client at a scrape) are neither lost nor counted twice.
 * Pooled mode only: relay_guard_pool_sessions{backend,state}, relay_guard_pool_waits_total{result}
 * and relay_guard_pool_replacements_total{reason} follow what the pool did (a burst of held
 * sessions, a wait that got one and one that timed out, idle sessions killed, a failed health check).
 * A last block checks who may read /metrics and /api/v1 (admin token, admin.metricsAuth).
 *
 * Decision on relay_guard_message_bytes_total: it counts the message octets the guard forwarded
 * as RFC 1870 §3 defines a message's size (CR LF included; stuffing dots and the terminator are
 * transfer encoding, not message) — exactly what the backend stores. One message below carries a
 * dot-stuffed line so that the definition is pinned down by the test.
 */
import net from 'node:net';
import type { Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startScriptedBackend, type ScriptedBackend } from '../helpers/scripted-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { MODES, POOLED, withMode, since } from '../helpers/modes.js';
import { Dialog, type ParsedReply } from '../helpers/dialog.js';
import { TlsDialog } from '../helpers/tls-dialog.js';
import { until, withTimeout } from '../helpers/with-timeout.js';
import { alertQueries, baseMetricName, dashboardQueries, groupings, selectors, TARGET_LABELS } from '../helpers/prometheus.js';

const STRANGER = '127.0.0.9';
const ADMIN_TOKEN = 'metrics-live-test-token-0123456789';

// ───────────────────────────── exposition parsing ─────────────────────────────

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Scrape {
  text: string;
  samples: Sample[];
  /** Metric family name → TYPE. */
  types: Map<string, string>;
}

/** Prometheus text format 0.0.4: `name{a="x",b="y"} value`; label values may hold \" \\ \n escapes. */
function parseExposition(text: string): Scrape {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      types.set(type[1]!, type[2]!);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]!] = l[2]!.replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    }
    samples.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return { text, samples, types };
}

async function scrape(base: string, headers: Record<string, string> = {}): Promise<Scrape> {
  const res = await fetch(`${base}/metrics`, { headers });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
  return parseExposition(await res.text());
}

/** Value of the one series with exactly these labels (0 samples → undefined, so typos fail loudly). */
function value(s: Scrape, name: string, labels: Record<string, string> = {}): number | undefined {
  const hits = s.samples.filter(
    (x) => x.name === name && Object.keys(x.labels).length === Object.keys(labels).length && Object.entries(labels).every(([k, v]) => x.labels[k] === v),
  );
  expect(hits.length, `${name}${JSON.stringify(labels)} series`).toBeLessThanOrEqual(1);
  return hits[0]?.value;
}

/** Non-zero series of one metric, keyed by one label. */
function nonZeroBy(s: Scrape, name: string, label: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of s.samples) if (x.name === name && x.value !== 0) out[x.labels[label] ?? ''] = (out[x.labels[label] ?? ''] ?? 0) + x.value;
  return out;
}

/** `name{a="x",b="y"}`, label names sorted: one key per series. */
function seriesKey(name: string, labels: Record<string, string> = {}): string {
  return `${name}{${Object.keys(labels).sort().map((k) => `${k}="${labels[k]}"`).join(',')}}`;
}

/** Duration histograms: their buckets and sums depend on timing; only their counts are exact. */
const TIMED = ['relay_guard_backend_reply_duration_seconds', 'relay_guard_backend_connect_duration_seconds'];
const isTimed = (name: string) => TIMED.some((t) => name.startsWith(`${t}_`));

/**
 * What changed between two scrapes in every relay_guard_* series, by series key (0 left out; a
 * series that vanished shows as minus its value). Timed histograms apart (see timedDeltas).
 */
function deltas(a: Scrape, b: Scrape, timed = false): Record<string, number> {
  const before = new Map<string, number>();
  const after = new Map<string, number>();
  for (const [scrape, into] of [[a, before], [b, after]] as const) {
    for (const x of scrape.samples) if (x.name.startsWith('relay_guard_') && isTimed(x.name) === timed) into.set(seriesKey(x.name, x.labels), x.value);
  }
  const out: Record<string, number> = {};
  for (const k of new Set([...before.keys(), ...after.keys()])) {
    const d = (after.get(k) ?? 0) - (before.get(k) ?? 0);
    if (d !== 0) out[k] = d;
  }
  return out;
}

/**
 * A timed histogram's change between two scrapes: its _count by `label` (exact), checked to be
 * consistent with its buckets and sum (+Inf bucket = count; every bucket within 0…count,
 * cumulative; the sum grew when the count did).
 */
function timedDeltas(a: Scrape, b: Scrape, name: string, label?: string): Record<string, number> {
  const d = deltas(a, b, true);
  const counts: Record<string, number> = {};
  for (const x of b.samples) {
    if (x.name !== `${name}_count`) continue;
    const n = d[seriesKey(x.name, x.labels)] ?? 0;
    if (n === 0) continue;
    const group = label ? (x.labels[label] ?? '') : '';
    counts[group] = n;
    const rest = label ? { [label]: group } : {};
    expect(d[seriesKey(`${name}_bucket`, { ...rest, le: '+Inf' })], `${name}{${group}} +Inf bucket`).toBe(n);
    expect(d[seriesKey(`${name}_sum`, rest)] ?? 0, `${name}{${group}} sum`).toBeGreaterThan(0);
    let last = 0;
    for (const y of b.samples.filter((s) => s.name === `${name}_bucket` && (!label || s.labels[label] === group))) {
      const v = d[seriesKey(y.name, y.labels)] ?? 0;
      expect(v, `${name} bucket le=${y.labels.le}`).toBeGreaterThanOrEqual(last);
      expect(v).toBeLessThanOrEqual(n);
      last = v;
    }
  }
  // Nothing moved in a series whose count did not.
  for (const [k, v] of Object.entries(d)) {
    if (!k.startsWith(`${name}_`)) continue;
    const labels = /\{(.*)\}$/.exec(k)![1]!;
    const group = label ? (new RegExp(`${label}="([^"]*)"`).exec(labels)?.[1] ?? '') : '';
    expect(counts[group], `${k} moved by ${v} while its count did not`).toBeDefined();
  }
  return counts;
}

/** An async condition, polled (bounded) like until(): for state read through an async API. */
async function eventually(cond: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The in-process scrape (prom-client's register.metrics(), what /metrics serves). */
async function scrapeRegister(g: StartedGuard): Promise<Scrape> {
  return parseExposition(await g.guard.metrics.register.metrics());
}

function adminBaseOf(g: StartedGuard): string {
  const a = g.guard.adminAddress();
  if (!a) throw new Error('admin listener not bound');
  return `http://${a.host}:${a.port}`;
}

const BACKEND = 'backend1'; // the first configured backend, given by IP: never an IP as a label

/**
 * Everything settled: no client session left; per-client mode: no backend connection left;
 * pooled: every pooled session idle (none lent or being opened), at least `minIdle`, each one an
 * open connection at the backend. The backend_connections gauge has caught up with the backend.
 */
async function settled(g: StartedGuard, backend: RecordingBackend, minIdle = 2): Promise<void> {
  await until(() => g.guard.services.registry.size === 0, 5000, 'no client session left');
  const pool = g.guard.services.pool;
  if (!pool) await until(() => backend.openConnections() === 0, 5000, 'backend connections closed');
  else await until(() => pool.total === pool.idleCount && pool.idleCount >= minIdle && backend.openConnections() === pool.idleCount, 5000, 'every pooled session idle');
  const want = backend.openConnections();
  await eventually(async () => (await g.guard.metrics.backendConnections.get()).values.find((v) => v.labels.backend === BACKEND)?.value === want, 5000, `backend_connections = ${want}`);
}

// ───────────────────────────── the client side tally ─────────────────────────────

type Source = 'guard' | 'backend';

/** What the clients sent and received, counted as they talk: the expectation for the counters. */
class Tally {
  readonly commands: Record<string, number> = {};
  readonly replies: Record<string, number> = {};

  command(verb: string): void {
    this.commands[verb] = (this.commands[verb] ?? 0) + 1;
  }

  reply(r: ParsedReply, code: number, source: Source): ParsedReply {
    expect(r.code, r.text).toBe(code);
    const key = `${source}/${String(code)[0]}xx`;
    this.replies[key] = (this.replies[key] ?? 0) + 1;
    return r;
  }

  /** Send a command and check its reply's code and who made it. `verb` null: not a command line. */
  async cmd(d: Dialog | TlsDialog, line: string, code: number, source: Source, verb: string | null = line.split(' ')[0]!.toUpperCase()): Promise<ParsedReply> {
    if (verb !== null) this.command(verb);
    return this.reply(await d.cmd(line), code, source);
  }
}

/** RFC 5321 §4.5.2 transparency: a line starting with "." gets one more. */
function dotStuff(content: string): string {
  return content.replace(/^\./gm, '..');
}

// ───────────────────────────── the traffic mix ─────────────────────────────

const MESSAGES = [
  'Subject: one\r\n\r\nshort body\r\n',
  `Subject: two\r\n\r\n${'x'.repeat(998)}\r\n${'y'.repeat(500)}\r\n`,
  'Subject: three\r\n\r\n.a line that starts with a dot (stuffed on the wire)\r\nend\r\n',
  `Subject: four\r\n\r\n${'z'.repeat(3000).replace(/(.{70})/g, '$1\r\n')}\r\n`,
];

// RCPT TO argument → rule that refuses it and the code it answers.
const RELAY_ATTEMPTS: Array<{ rcpt: string; rule: string; code: number }> = [
  { rcpt: '<victim@elsewhere.test>', rule: 'relay-denied', code: 550 },
  { rcpt: '<VICTIM@ELSEWHERE.TEST.>', rule: 'relay-denied', code: 550 },
  { rcpt: '<postmaster@elsewhere.test>', rule: 'relay-denied', code: 550 },
  { rcpt: '<victim%elsewhere.test@example.com>', rule: 'routing-tricks', code: 501 },
  { rcpt: '<@example.com:victim@elsewhere.test>', rule: 'routing-tricks', code: 501 },
  { rcpt: '<IMCEASMTP-victim+40elsewhere+2Etest@example.com>', rule: 'encapsulated-address', code: 550 },
];

for (const { mode, config: modeConfig } of MODES) describe(`live /metrics after a known traffic mix (${mode} mode)`, () => {
  const pooled = mode === 'pooled';
  /** Who answers the greeting, EHLO and a QUIT with no backend session held: the backend per client; the guard itself in pooled mode. */
  const front: Source = pooled ? 'guard' : 'backend';
  let backend: RecordingBackend;
  let g: StartedGuard;
  let admin: string;
  const tally = new Tally();
  let accepted = 0; // sessions that got a greeting
  let delivered = 0;
  let acceptedRcpts = 0;
  const authAttempts: Array<{ username?: string }> = [];
  let live: Scrape;
  /** Backend connections open when `live` was scraped (pooled: the idle pooled sessions). */
  let openAtScrape = 0;

  async function greeted(): Promise<Dialog> {
    const d = await Dialog.connect(g.port, { localAddress: STRANGER });
    tally.reply(await d.reply(), 220, front);
    accepted++;
    await tally.cmd(d, 'EHLO client.test', 250, front);
    return d;
  }

  async function quit(d: Dialog | TlsDialog, source: Source = front): Promise<void> {
    await tally.cmd(d, 'QUIT', 221, source);
    await d.waitClosed();
  }

  beforeAll(async () => {
    backend = await startRecordingBackend({
      server: {
        authMethods: ['PLAIN', 'LOGIN'],
        allowInsecureAuth: true, // the guard↔backend leg is plaintext here
        onAuth(auth, _session, callback) {
          authAttempts.push({ username: auth.username });
          callback(new Error('Invalid username or password'));
        },
      },
    });
    g = await startGuard({
      backendPort: backend.port,
      rules: { acceptedDomains: ['example.com'], relayNetworks: ['127.0.0.2/32'] },
      config: withMode(modeConfig, {
        admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false },
        listeners: [{ name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', starttls: true }],
        // A greeting delay makes "talks before the greeting" deterministic for the early talker.
        smtp: { greetingDelay: '150ms' },
        timeouts: { drain: '1s' },
      }),
    });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(pooled);
    admin = adminBaseOf(g);
    if (pooled) await settled(g, backend); // the warm sessions are open before the first client

    // 1. Delivered messages, one session (dot-stuffing on the wire, RFC 1870 size in the metric).
    {
      const d = await greeted();
      for (const [i, content] of MESSAGES.entries()) {
        await tally.cmd(d, 'MAIL FROM:<sender@outside.test>', 250, 'backend');
        await tally.cmd(d, `RCPT TO:<user${i}@example.com>`, 250, 'backend');
        acceptedRcpts++;
        await tally.cmd(d, 'DATA', 354, 'backend');
        tally.reply(await d.cmd(`${dotStuff(content)}.`), 250, 'backend');
        delivered++;
      }
      await quit(d);
    }

    // 2. Relay attempts of every relay rule, one transaction; nothing reaches the backend. The
    //    RSET goes to the backend session the MAIL holds (pooled: which then goes back to the pool).
    {
      const d = await greeted();
      await tally.cmd(d, 'MAIL FROM:<sender@outside.test>', 250, 'backend');
      for (const a of RELAY_ATTEMPTS) await tally.cmd(d, `RCPT TO:${a.rcpt}`, a.code, 'guard');
      await tally.cmd(d, 'RSET', 250, 'backend');
      await quit(d);
    }

    // 3. SMTP smuggling: a bare LF "." bare LF inside DATA → 554 5.6.0 and close (pooled: the
    //    backend session, left inside a message, is replaced: reason unexpected_reply).
    {
      const d = await greeted();
      await tally.cmd(d, 'MAIL FROM:<sender@outside.test>', 250, 'backend');
      await tally.cmd(d, 'RCPT TO:<smuggle@example.com>', 250, 'backend');
      acceptedRcpts++;
      await tally.cmd(d, 'DATA', 354, 'backend');
      tally.reply(await d.cmd('Subject: s\r\n\r\nhello\n.\nMAIL FROM:<evil@outside.test>\r\n.'), 554, 'guard');
      await d.waitClosed();
    }

    // 4. Protocol errors and a refused verb, then the session goes on.
    {
      const d = await greeted();
      await tally.cmd(d, 'FOOBAR something', 500, 'guard', 'other');
      await tally.cmd(d, 'A'.repeat(2000), 500, 'guard', null); // longer than smtp.maxLineBytes
      await tally.cmd(d, 'EXPN staff', 502, 'guard');
      await tally.cmd(d, 'NOOP', 250, 'guard');
      await quit(d);
    }

    // 5. An early talker: speaks before the greeting → 554 and close.
    {
      const d = await Dialog.connect(g.port, { localAddress: STRANGER });
      d.send('EHLO impatient.test\r\n');
      tally.reply(await d.reply(), 554, 'guard');
      await d.waitClosed();
    }

    // 6. STARTTLS with node:tls, then a failing AUTH (the backend says 535). Pooled: AUTH binds a
    //    backend session to this client (greeted with its EHLO), so its QUIT goes to the backend.
    {
      const d = await greeted();
      await tally.cmd(d, 'STARTTLS', 220, 'guard');
      const t = await TlsDialog.upgrade(d.socket);
      const ehlo = await tally.cmd(t, 'EHLO client.test', 250, front);
      expect(ehlo.lines.some((l) => /^AUTH\b.*PLAIN/i.test(l))).toBe(true);
      await tally.cmd(t, `AUTH PLAIN ${Buffer.from('\0mallory\0guess').toString('base64')}`, 535, 'backend');
      await quit(t, 'backend');
    }

    // Everything settled: per-client, the backend saw every guard connection close (QUIT or
    // abort); pooled, every pooled session is idle again.
    await settled(g, backend);
    openAtScrape = backend.openConnections();
    live = await scrape(admin);
  });

  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  test('the traffic reached the backend as expected (sanity of the mix itself)', () => {
    expect(backend.messages).toHaveLength(delivered);
    expect(backend.messages.map((m) => m.body.toString('latin1'))).toEqual(MESSAGES);
    expect(authAttempts).toEqual([{ username: 'mallory' }]);
    expect(backend.lines().some((l) => /elsewhere|IMCEA|evil/i.test(l))).toBe(false);
    // Pooled: the clients' EHLO reached the backend only on the session AUTH bound to its client.
    expect(backend.lines().filter((l) => l === 'EHLO client.test')).toHaveLength(pooled ? 1 : 5 + 1);
  });

  test('(a) every relay_guard_* series queried by a dashboard or an alert exists live, with its labels and values', () => {
    const histograms = new Set([...live.types].filter(([, t]) => t === 'histogram').map(([n]) => n));
    // Series that exist only when an optional part is configured (this mix configures none of them);
    // each part's own test asserts them live with their labels.
    const gated = [
      /^relay_guard_dnsbl_/, // dnsbl: test/integration/dnsbl-policy-guard.test.ts
      /^relay_guard_policy_service_/, // policyServices: test/integration/dnsbl-policy-guard.test.ts
      /^relay_guard_rules_store_/, // rulesStore: test/integration/fleet-rules-store.test.ts, shared-rules-store.test.ts
    ];
    const all = [...dashboardQueries(), ...alertQueries()];
    const refs = all.filter((ref) => !selectors(ref.expr).every((sel) => gated.some((g) => g.test(sel.name))));
    expect(all.length - refs.length).toBeLessThan(12);
    expect(refs.length).toBeGreaterThan(40);
    const problems: string[] = [];
    let checked = 0;
    for (const ref of refs) {
      for (const sel of selectors(ref.expr)) {
        checked++;
        const series = live.samples.filter((s) => s.name === sel.name);
        if (series.length === 0) {
          const { base } = baseMetricName(sel.name, histograms);
          problems.push(`${ref.source}: ${sel.name} has no sample in /metrics${live.types.has(base) ? ' (declared, but no series)' : ''}`);
          continue;
        }
        const labelsOnSeries = new Set(series.flatMap((s) => Object.keys(s.labels)));
        for (const l of sel.matchers) {
          if (!(TARGET_LABELS as readonly string[]).includes(l) && !labelsOnSeries.has(l)) problems.push(`${ref.source}: ${sel.name} has no label ${l}`);
        }
      }
      // Literal label values the query filters on (outcome="delivered", action="ban", ...) exist.
      for (const m of ref.expr.matchAll(/\b(relay_guard_[a-zA-Z0-9_]+)\s*\{([^}]*)\}/g)) {
        for (const eq of m[2]!.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"$]*)"/g)) {
          const [, label, want] = eq;
          if ((TARGET_LABELS as readonly string[]).includes(label!)) continue;
          if (!live.samples.some((s) => s.name === m[1] && s.labels[label!] === want)) problems.push(`${ref.source}: no ${m[1]} series with ${label}="${want}"`);
        }
      }
      // Labels grouped on (by/without/on/ignoring) exist on the grouped metrics.
      for (const grp of groupings(ref.expr)) {
        for (const name of grp.metrics) {
          const { extraLabels } = baseMetricName(name, histograms);
          const labelsOnSeries = new Set([...live.samples.filter((s) => s.name === name).flatMap((s) => Object.keys(s.labels)), ...extraLabels]);
          for (const l of grp.labels) {
            if (!(TARGET_LABELS as readonly string[]).includes(l) && !labelsOnSeries.has(l)) problems.push(`${ref.source}: groups ${name} by ${l}, which it does not have`);
          }
        }
      }
    }
    expect(checked).toBeGreaterThan(40);
    expect(problems).toEqual([]);
  });

  test('(b) relay denials and RCPT verdicts by rule equal the attempts sent', () => {
    const byRule: Record<string, number> = {};
    for (const a of RELAY_ATTEMPTS) byRule[a.rule] = (byRule[a.rule] ?? 0) + 1;
    expect(nonZeroBy(live, 'relay_guard_relay_denials_total', 'rule')).toEqual(byRule);
    for (const [rule, n] of Object.entries(byRule)) {
      expect(value(live, 'relay_guard_rcpt_verdicts_total', { verdict: 'reject', mode: 'enforce', rule })).toBe(n);
    }
    expect(value(live, 'relay_guard_rcpt_verdicts_total', { verdict: 'accept', mode: 'enforce', rule: 'accepted-domains' })).toBe(acceptedRcpts);
    const verdicts = live.samples.filter((s) => s.name === 'relay_guard_rcpt_verdicts_total' && s.value > 0);
    expect(verdicts.reduce((n, s) => n + s.value, 0)).toBe(RELAY_ATTEMPTS.length + acceptedRcpts);
    // Every MAIL FROM was accepted (senders outside our domains): one enforce verdict each.
    expect(nonZeroBy(live, 'relay_guard_mail_verdicts_total', 'verdict')).toEqual({ accept: tally.commands.MAIL });
  });

  test('(b) messages, bytes and sizes of delivered mail; smuggling counted once', () => {
    const sizes = MESSAGES.map((m) => Buffer.byteLength(m, 'latin1'));
    const total = sizes.reduce((a, b) => a + b, 0);
    // The dot-stuffed message shows the definition: RFC 1870 octets, not wire bytes.
    expect(total).toBe(backend.messages.reduce((n, m) => n + m.body.length, 0));
    expect(nonZeroBy(live, 'relay_guard_messages_total', 'outcome')).toEqual({ delivered, smuggling: 1 });
    expect(value(live, 'relay_guard_message_bytes_total')).toBe(total);
    expect(value(live, 'relay_guard_message_size_bytes_count')).toBe(delivered);
    expect(value(live, 'relay_guard_message_size_bytes_sum')).toBe(total);
    expect(value(live, 'relay_guard_message_size_bytes_bucket', { le: '1024' })).toBe(sizes.filter((s) => s <= 1024).length);
    expect(value(live, 'relay_guard_smuggling_attempts_total', { kind: 'bare_lf', action: 'rejected' })).toBe(1);
    expect(nonZeroBy(live, 'relay_guard_smuggling_attempts_total', 'kind')).toEqual({ bare_lf: 1 });
  });

  test('(b) protocol errors by kind, refused verbs, connections by outcome', () => {
    expect(nonZeroBy(live, 'relay_guard_protocol_errors_total', 'kind')).toEqual({ unknown_verb: 1, line_too_long: 1, bare_lf: 1, early_talker: 1 });
    expect(nonZeroBy(live, 'relay_guard_refused_verbs_total', 'verb')).toEqual({ EXPN: 1 });
    expect(value(live, 'relay_guard_connections_total', { listener: 'mx', outcome: 'early_talker' })).toBe(1);
    expect(value(live, 'relay_guard_connections_total', { listener: 'mx', outcome: 'accepted' })).toBe(accepted);
    expect(nonZeroBy(live, 'relay_guard_connections_total', 'outcome')).toEqual({ accepted, early_talker: 1 });
  });

  test('(b) TLS handshakes and AUTH results', () => {
    expect(value(live, 'relay_guard_tls_handshakes_total', { kind: 'starttls', result: 'success' })).toBe(1);
    expect(value(live, 'relay_guard_tls_handshakes_total', { kind: 'starttls', result: 'failure' })).toBe(0);
    expect(nonZeroBy(live, 'relay_guard_auth_total', 'result')).toEqual({ failure: 1 });
    // The served certificate's expiry is exported (the TlsCertificateExpiringSoon alert needs it).
    expect(value(live, 'relay_guard_tls_certificate_expiry_timestamp_seconds', { listener: 'mx' })).toBeGreaterThan(Date.now() / 1000);
  });

  test('(b) sessions back to 0, backend up, backend connections as the backend saw them, one connect observation per backend connection', () => {
    expect(value(live, 'relay_guard_sessions_active', { listener: 'mx' })).toBe(0);
    expect(value(live, 'relay_guard_backend_up', { backend: BACKEND })).toBe(1);
    expect(value(live, 'relay_guard_backend_connections', { backend: BACKEND })).toBe(openAtScrape);
    if (pooled) {
      // Only the pool connects, each session greeted with the guard's own EHLO; no client
      // session (the early talker's included) opened one; the warm sessions stay open.
      expect(openAtScrape).toBeGreaterThanOrEqual(2);
      for (const c of backend.connections) expect(Buffer.concat(c).toString('latin1')).toMatch(/^EHLO relay-guard\r\n/);
    } else {
      expect(openAtScrape).toBe(0);
      // Every session, the early talker's included, opened exactly one backend connection.
      expect(backend.connections).toHaveLength(accepted + 1);
    }
    expect(value(live, 'relay_guard_backend_connect_duration_seconds_count')).toBe(backend.connections.length);
    expect(value(live, 'relay_guard_backend_connect_duration_seconds_bucket', { le: '+Inf' })).toBe(backend.connections.length);
    expect(nonZeroBy(live, 'relay_guard_backend_errors_total', 'kind')).toEqual({});
    expect(nonZeroBy(live, 'relay_guard_internal_errors_total', 'where')).toEqual({});
  });

  test('(b) backend reply time: one observation per command the backend answered, by verb', () => {
    // EHLO: per client, each client's EHLO (5 plain, 1 over TLS); pooled, the pool's own EHLO on
    // each session it opened, and the client's EHLO on the session AUTH bound to it.
    const ehlos = backend.lines().filter((l) => /^EHLO /.test(l)).length;
    expect(ehlos).toBe(pooled ? backend.connections.length + 1 : 6);
    const want: Record<string, number> = {
      GREETING: backend.connections.length, // every backend connection's greeting (its reply time too)
      EHLO: ehlos,
      MAIL: MESSAGES.length + 2,
      RCPT: acceptedRcpts,
      DATA: MESSAGES.length + 1, // the smuggling attempt's DATA was answered too
      DATA_END: delivered,
      RSET: 1,
      AUTH: 1,
      QUIT: pooled ? 1 : 4, // pooled: only the AUTH session's QUIT reaches the backend
    };
    expect(nonZeroBy(live, 'relay_guard_backend_reply_duration_seconds_count', 'verb')).toEqual(want);
    for (const [verb, n] of Object.entries(want)) {
      expect(value(live, 'relay_guard_backend_reply_duration_seconds_bucket', { verb, le: '+Inf' }), verb).toBe(n);
      expect(value(live, 'relay_guard_backend_reply_duration_seconds_sum', { verb }), verb).toBeGreaterThan(0);
    }
  });

  test(`(b) pool metrics: ${pooled ? 'every pooled session idle again, the session left inside the smuggled message replaced, no wait' : 'none in per-client mode'}`, () => {
    const poolSamples = live.samples.filter((s) => s.name.startsWith('relay_guard_pool_'));
    if (!pooled) {
      expect(poolSamples.filter((s) => s.value !== 0)).toEqual([]);
      return;
    }
    expect(value(live, 'relay_guard_pool_sessions', { backend: BACKEND, state: 'idle' })).toBe(openAtScrape);
    expect(value(live, 'relay_guard_pool_sessions', { backend: BACKEND, state: 'busy' })).toBe(0);
    expect(nonZeroBy(live, 'relay_guard_pool_replacements_total', 'reason')).toEqual({ unexpected_reply: 1 });
    expect(nonZeroBy(live, 'relay_guard_pool_waits_total', 'result')).toEqual({});
  });

  test('(b) replies by source and class, and commands by verb, equal what the clients saw and sent', () => {
    const replies: Record<string, number> = {};
    for (const s of live.samples) {
      if (s.name === 'relay_guard_replies_total' && s.value > 0) replies[`${s.labels.source}/${s.labels.class}`] = s.value;
    }
    expect(replies).toEqual(tally.replies);
    expect(nonZeroBy(live, 'relay_guard_commands_total', 'verb')).toEqual(tally.commands);
  });

  test('(c) no label value anywhere holds an IP address or an email address', () => {
    const backendNames = new Set([BACKEND]);
    const bad: string[] = [];
    for (const s of live.samples) {
      for (const [k, v] of Object.entries(s.labels)) {
        // `backend` is the operator's configured backend name (backends[].name, else host:port for a
        // host name, else backendN): bounded by the config, never client data, never an IP address.
        if (k === 'backend' && !backendNames.has(v)) bad.push(`${s.name} backend="${v}"`);
        const tokens = v.split(/[^0-9A-Fa-f:.]+/).flatMap((t) => [t, t.replace(/:\d+$/, '')]);
        if (v.includes('@') || tokens.some((t) => net.isIP(t) !== 0) || /\d+\.\d+\.\d+\.\d+/.test(v)) bad.push(`${s.name} ${k}="${v}"`);
      }
    }
    expect(bad).toEqual([]);
    // Nothing the clients said leaks anywhere into the scrape, label or help text.
    for (const secret of [STRANGER, 'outside.test', 'elsewhere.test', 'example.com', 'mallory', 'impatient.test', 'client.test', 'IMCEA']) {
      expect(live.text.includes(secret), secret).toBe(false);
    }
  });

  // ─────────── two scrapes with known traffic in between differ by exactly that traffic ───────────

  const ROUND_BODIES = (n: number) => [`Subject: round ${n} a\r\n\r\nshort\r\n`, `Subject: round ${n} b\r\n\r\n${'r'.repeat(1500)}\r\n`];

  /**
   * One client: a refused relay attempt and two messages. In the middle (a transaction open, its
   * backend session held), `mid` scrapes: the session counts as active; pooled, one session is busy.
   */
  async function round(n: number, mid: () => Promise<Scrape>): Promise<void> {
    const d = await Dialog.connect(g.port, { localAddress: STRANGER });
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO client.test')).code).toBe(250);
    for (const [i, body] of ROUND_BODIES(n).entries()) {
      expect((await d.cmd('MAIL FROM:<sender@outside.test>')).code).toBe(250);
      if (i === 0) expect((await d.cmd('RCPT TO:<victim@elsewhere.test>')).code).toBe(550);
      expect((await d.cmd(`RCPT TO:<round${n}-${i}@example.com>`)).code).toBe(250);
      if (i === 0) {
        const m = await mid();
        expect(value(m, 'relay_guard_sessions_active', { listener: 'mx' }), 'a session in mid-transaction is active').toBe(1);
        if (pooled) expect(value(m, 'relay_guard_pool_sessions', { backend: BACKEND, state: 'busy' }), 'its backend session is busy').toBe(1);
      }
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd(`${body}.`)).code).toBe(250);
    }
    expect((await d.cmd('QUIT')).code).toBe(221);
    await d.waitClosed();
  }

  /** What one round changes, given the backend connections it opened and how many were open before and after. */
  function roundDeltas(n: number, opened: number, openBefore: number, openAfter: number): Record<string, number> {
    const sizes = ROUND_BODIES(n).map((b) => Buffer.byteLength(b, 'latin1'));
    const bytes = sizes.reduce((a, b) => a + b, 0);
    const want: Record<string, number> = {
      [seriesKey('relay_guard_connections_total', { listener: 'mx', outcome: 'accepted' })]: 1,
      [seriesKey('relay_guard_commands_total', { verb: 'EHLO' })]: 1,
      [seriesKey('relay_guard_commands_total', { verb: 'MAIL' })]: 2,
      [seriesKey('relay_guard_commands_total', { verb: 'RCPT' })]: 3,
      [seriesKey('relay_guard_commands_total', { verb: 'DATA' })]: 2,
      [seriesKey('relay_guard_commands_total', { verb: 'QUIT' })]: 1,
      // greeting, EHLO, QUIT by `front`; MAIL, RCPT, end-of-data ×2 by the backend; 354 ×2; the 550.
      [seriesKey('relay_guard_replies_total', { source: 'backend', class: '2xx' })]: 6 + (front === 'backend' ? 3 : 0),
      [seriesKey('relay_guard_replies_total', { source: 'backend', class: '3xx' })]: 2,
      [seriesKey('relay_guard_replies_total', { source: 'guard', class: '5xx' })]: 1,
      [seriesKey('relay_guard_rcpt_verdicts_total', { verdict: 'reject', mode: 'enforce', rule: 'relay-denied' })]: 1,
      [seriesKey('relay_guard_rcpt_verdicts_total', { verdict: 'accept', mode: 'enforce', rule: 'accepted-domains' })]: 2,
      [seriesKey('relay_guard_relay_denials_total', { rule: 'relay-denied' })]: 1,
      [seriesKey('relay_guard_command_refusals_total', { rule: 'relay-denied' })]: 1,
      [seriesKey('relay_guard_mail_verdicts_total', { verdict: 'accept', mode: 'enforce', rule: 'default-permit' })]: 2,
      [seriesKey('relay_guard_messages_total', { outcome: 'delivered' })]: 2,
      [seriesKey('relay_guard_message_bytes_total')]: bytes,
      [seriesKey('relay_guard_message_size_bytes_count')]: 2,
      [seriesKey('relay_guard_message_size_bytes_sum')]: bytes,
      [seriesKey('relay_guard_message_size_bytes_bucket', { le: '+Inf' })]: 2,
    };
    if (front === 'guard') want[seriesKey('relay_guard_replies_total', { source: 'guard', class: '2xx' })] = 3;
    for (const le of [1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 52428800]) {
      const k = sizes.filter((s) => s <= le).length;
      if (k > 0) want[seriesKey('relay_guard_message_size_bytes_bucket', { le: String(le) })] = k;
    }
    if (openAfter !== openBefore) {
      want[seriesKey('relay_guard_backend_connections', { backend: BACKEND })] = openAfter - openBefore;
      if (pooled) want[seriesKey('relay_guard_pool_sessions', { backend: BACKEND, state: 'idle' })] = openAfter - openBefore;
    }
    if (!pooled) expect(opened, 'backend connections opened by the round').toBe(1);
    return want;
  }

  test('two scrapes with a known round of traffic in between differ by exactly that round (HTTP and register.metrics(), one scrape in mid-session)', async () => {
    const replyWant = (opened: number) =>
      pooled
        ? { MAIL: 2, RCPT: 2, DATA: 2, DATA_END: 2, ...(opened > 0 ? { GREETING: opened, EHLO: opened } : {}) } // a new pooled session: greeting and the pool's EHLO
        : { GREETING: 1, EHLO: 1, MAIL: 2, RCPT: 2, DATA: 2, DATA_END: 2, QUIT: 1 };
    const check = (a: Scrape, b: Scrape, n: number, conns: number, openBefore: number) => {
      const opened = backend.connections.length - conns;
      expect(deltas(a, b), `round ${n}`).toEqual(roundDeltas(n, opened, openBefore, backend.openConnections()));
      expect(timedDeltas(a, b, 'relay_guard_backend_reply_duration_seconds', 'verb'), `round ${n} reply times`).toEqual(replyWant(opened));
      expect(timedDeltas(a, b, 'relay_guard_backend_connect_duration_seconds'), `round ${n} connect times`).toEqual(opened > 0 ? { '': opened } : {});
    };

    await settled(g, backend);
    let conns = backend.connections.length;
    let open = backend.openConnections();
    const a = await scrape(admin);
    await round(1, () => scrapeRegister(g));
    await settled(g, backend);
    const b = await scrapeRegister(g);
    check(a, b, 1, conns, open);

    conns = backend.connections.length;
    open = backend.openConnections();
    await round(2, () => scrape(admin));
    await settled(g, backend);
    const c = await scrape(admin);
    check(b, c, 2, conns, open);
    // And a scrape with nothing in between changes nothing.
    expect(deltas(c, await scrapeRegister(g))).toEqual({});
    expect(backend.messages.slice(-4).map((m) => m.body.toString('latin1'))).toEqual([...ROUND_BODIES(1), ...ROUND_BODIES(2)]);
  });
});

// ───────────────────────────── pooled mode: the pool's own metrics ─────────────────────────────

describe('pooled mode: relay_guard_pool_* follow what the pool did', () => {
  let backend: RecordingBackend;
  let g: StartedGuard;
  let admin: string;
  const ACQUIRE_MS = 2000;

  beforeAll(async () => {
    backend = await startRecordingBackend();
    g = await startGuard({
      backendPort: backend.port,
      config: withMode(POOLED, {
        // 3 sessions at most; a client waits 2 s for one; holders are never cut for waiting clients here.
        backend: { pool: { minIdle: 2, max: 3, acquireTimeout: `${ACQUIRE_MS}ms`, stressTimeout: '60s' } },
        admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false },
        timeouts: { drain: '1s' },
      }),
    });
    admin = adminBaseOf(g);
  });
  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  const pool = () => g.guard.services.pool!;
  const sessions = (s: Scrape) => ({
    idle: value(s, 'relay_guard_pool_sessions', { backend: BACKEND, state: 'idle' }),
    busy: value(s, 'relay_guard_pool_sessions', { backend: BACKEND, state: 'busy' }),
  });

  async function greeted(name: string): Promise<Dialog> {
    const d = await Dialog.connect(g.port, { localAddress: STRANGER });
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd(`EHLO ${name}.test`)).code).toBe(250);
    return d;
  }

  /** MAIL and RCPT: the client now holds a backend session. */
  async function hold(d: Dialog, who: string): Promise<void> {
    expect((await d.cmd(`MAIL FROM:<${who}@outside.test>`)).code).toBe(250);
    expect((await d.cmd(`RCPT TO:<${who}@example.com>`)).code).toBe(250);
  }

  async function finish(d: Dialog, who: string): Promise<void> {
    expect((await d.cmd('DATA')).code).toBe(354);
    expect((await d.cmd(`Subject: ${who}\r\n\r\nfrom ${who}\r\n.`)).code).toBe(250);
    expect((await d.cmd('QUIT')).code).toBe(221);
    await d.waitClosed();
  }

  const holders: Dialog[] = [];
  afterEach(() => {
    for (const d of holders.splice(0)) d.close();
  });

  test('a burst: busy and idle sessions as clients hold them; a wait that got a session and one that timed out; all idle again', async () => {
    await settled(g, backend);
    const seen = since(backend);
    let s = await scrape(admin);
    const waits0 = nonZeroBy(s, 'relay_guard_pool_waits_total', 'result');
    const replaced0 = nonZeroBy(s, 'relay_guard_pool_replacements_total', 'reason');
    expect(sessions(s)).toEqual({ idle: backend.openConnections(), busy: 0 });

    // Three clients hold a backend session each: the pool grows to its max, none idle. (Each
    // takes an idle one: the next client comes once the pool has opened what it tops up with.)
    for (const who of ['h0', 'h1', 'h2']) {
      const d = await greeted(who);
      await hold(d, who);
      holders.push(d);
      await until(() => pool().total === pool().live, 5000, 'no session being opened');
    }
    await until(() => pool().total === 3 && pool().idleCount === 0 && backend.openConnections() === 3, 5000, 'three sessions lent');
    s = await scrape(admin);
    expect(sessions(s)).toEqual({ idle: 0, busy: 3 });
    expect(value(s, 'relay_guard_backend_connections', { backend: BACKEND })).toBe(3);

    // A fourth waits; h0's message ends and its session goes to the waiter: one wait, got.
    const w = await greeted('w');
    holders.push(w);
    w.send('MAIL FROM:<w@outside.test>\r\n');
    await until(() => pool().waiting === 1, 5000, 'the fourth client waits');
    await finish(holders[0]!, 'h0');
    expect((await w.reply(ACQUIRE_MS + 3000)).code).toBe(250);
    s = await scrape(admin);
    expect(nonZeroBy(s, 'relay_guard_pool_waits_total', 'result')).toEqual({ ...waits0, got: (waits0.got ?? 0) + 1 });
    expect(sessions(s)).toEqual({ idle: 0, busy: 3 });

    // A fifth waits in vain: 451 4.3.0 after acquireTimeout, counted as a timeout; its MAIL never reaches the backend.
    const late = await greeted('late');
    holders.push(late);
    const r = await late.cmd('MAIL FROM:<late@outside.test>', ACQUIRE_MS + 5000);
    expect(r.code, r.text).toBe(451);
    expect(r.text).toContain('4.3.0');
    s = await scrape(admin);
    expect(nonZeroBy(s, 'relay_guard_pool_waits_total', 'result')).toEqual({ ...waits0, got: (waits0.got ?? 0) + 1, timeout: (waits0.timeout ?? 0) + 1 });
    expect(sessions(s)).toEqual({ idle: 0, busy: 3 });
    expect((await late.cmd('QUIT')).code).toBe(221);

    // Everyone finishes: every session idle again, none replaced, the backend saw each message once.
    expect((await w.cmd('RCPT TO:<w@example.com>')).code).toBe(250);
    await finish(w, 'w');
    await finish(holders[1]!, 'h1');
    await finish(holders[2]!, 'h2');
    await settled(g, backend);
    s = await scrape(admin);
    expect(sessions(s)).toEqual({ idle: 3, busy: 0 });
    expect(value(s, 'relay_guard_backend_connections', { backend: BACKEND })).toBe(3);
    expect(nonZeroBy(s, 'relay_guard_pool_replacements_total', 'reason')).toEqual(replaced0);
    expect(seen().filter((l) => l.startsWith('MAIL FROM:')).sort()).toEqual(['h0', 'h1', 'h2', 'w'].map((x) => `MAIL FROM:<${x}@outside.test>`));
    expect(backend.messages.map((m) => m.rcptTo.join()).sort()).toEqual(['h0', 'h1', 'h2', 'w'].map((x) => `${x}@example.com`));
  });

  test('idle sessions the backend killed: one replacement (closed) each, the pool refilled, mail still flows', async () => {
    await settled(g, backend);
    const before = await scrape(admin);
    const replaced = nonZeroBy(before, 'relay_guard_pool_replacements_total', 'reason');
    const killed = backend.openConnections();
    expect(sessions(before)).toEqual({ idle: killed, busy: 0 });
    const old = backend.connections.length;
    backend.killConnections();
    await until(() => backend.receivedSince({ chunks: [] }).slice(0, old).every((c) => !c.open), 5000, 'the killed connections closed');
    await settled(g, backend);
    const s = await scrape(admin);
    expect(nonZeroBy(s, 'relay_guard_pool_replacements_total', 'reason')).toEqual({ ...replaced, closed: (replaced.closed ?? 0) + killed });
    expect(sessions(s)).toEqual({ idle: backend.openConnections(), busy: 0 });
    expect(value(s, 'relay_guard_backend_connections', { backend: BACKEND })).toBe(backend.openConnections());
    expect(backend.connections.length - old, 'new sessions opened').toBe(backend.openConnections());
    const d = await greeted('after');
    await hold(d, 'after');
    await finish(d, 'after');
    expect(backend.messages.at(-1)!.rcptTo).toEqual(['after@example.com']);
  });

  test('an idle session that fails its health check (NOOP answered 500): one replacement (health_check)', async () => {
    let refused: Socket | undefined;
    const scripted: ScriptedBackend = await startScriptedBackend({
      onLine: (line, socket) => {
        if (line !== 'NOOP' || refused) return undefined;
        refused = socket;
        return '500 5.5.1 confused\r\n';
      },
    });
    const hg = await startGuard({
      backendPort: scripted.port,
      config: withMode(POOLED, { backend: { pool: { minIdle: 2, max: 3, healthInterval: '1s' } } }),
    });
    try {
      // The health check runs every second on sessions idle for 1 s: the first NOOP is refused.
      await until(() => refused !== undefined, 10_000, 'a health check NOOP');
      await withTimeout(new Promise<void>((resolve) => (refused!.destroyed ? resolve() : refused!.once('close', () => resolve()))), 5000, 'the failed session closed');
      const s = await scrapeRegister(hg);
      expect(nonZeroBy(s, 'relay_guard_pool_replacements_total', 'reason')).toEqual({ health_check: 1 });
      // Later health checks pass (NOOP 250): nothing more replaced; the pool is back to minIdle.
      const p = hg.guard.services.pool!;
      await until(() => scripted.lines.filter((l) => l === 'NOOP').length >= 3 && p.total === p.idleCount && p.idleCount >= 2, 10_000, 'more health checks, pool refilled');
      const later = await scrapeRegister(hg);
      expect(nonZeroBy(later, 'relay_guard_pool_replacements_total', 'reason')).toEqual({ health_check: 1 });
      expect(sessions(later).busy).toBe(0);
      expect(sessions(later).idle).toBe(p.idleCount);
    } finally {
      await hg.stop();
      await scripted.close();
    }
  });
});

// ───────────────────────────── who may read /metrics ─────────────────────────────

describe('/metrics and /api/v1 access on the admin listener', () => {
  let backend: RecordingBackend;
  const guards: StartedGuard[] = [];

  beforeAll(async () => {
    backend = await startRecordingBackend();
  });
  afterAll(async () => {
    for (const g of guards) await g.stop();
    await backend?.close();
  });

  async function adminBase(metricsAuth: boolean): Promise<string> {
    const g = await startGuard({
      backendPort: backend.port,
      config: { admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth } },
      env: { RELAY_GUARD_ADMIN_TOKEN: ADMIN_TOKEN },
    });
    guards.push(g);
    const a = g.guard.adminAddress();
    if (!a) throw new Error('admin listener not bound');
    return `http://${a.host}:${a.port}`;
  }

  const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

  test('with a token configured, /metrics needs none while /api/v1 does', async () => {
    const base = await adminBase(false);
    const m = await scrape(base);
    expect(m.samples.some((s) => s.name === 'relay_guard_build_info' && s.value === 1)).toBe(true);
    expect((await fetch(`${base}/api/v1/sessions`)).status).toBe(401);
    expect((await fetch(`${base}/api/v1/sessions`, { headers: bearer('wrong-token') })).status).toBe(401);
    expect((await fetch(`${base}/api/v1/sessions`, { headers: bearer(ADMIN_TOKEN) })).status).toBe(200);
  });

  test('admin.metricsAuth: true makes /metrics require the token', async () => {
    const base = await adminBase(true);
    const anon = await fetch(`${base}/metrics`);
    expect(anon.status).toBe(401);
    expect(anon.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect(await anon.text()).not.toMatch(/relay_guard_/);
    expect((await fetch(`${base}/metrics`, { headers: bearer('wrong-token') })).status).toBe(401);
    const m = await scrape(base, bearer(ADMIN_TOKEN));
    expect(m.samples.some((s) => s.name === 'relay_guard_build_info' && s.value === 1)).toBe(true);
  });
});
