/**
 * Issue 7 acceptance, live: real clients run a known traffic mix through a guard in front of the
 * recording backend; then /metrics is fetched over HTTP from the admin listener and
 *  (a) every relay_guard_* series that a dashboard panel, dashboard variable or alert rule queries
 *      exists in the live output, with the labels and label values it filters and groups on;
 *  (b) every counter moved exactly as the traffic implies (tallied by the test as it talks);
 *  (c) no label value holds an IP address or an email address (DESIGN.md invariant 5).
 * A second block checks who may read /metrics and /api/v1 (admin token, admin.metricsAuth).
 *
 * Decision on relay_guard_message_bytes_total: it counts the message octets the guard forwarded
 * as RFC 1870 §3 defines a message's size (CR LF included; stuffing dots and the terminator are
 * transfer encoding, not message) — exactly what the backend stores. One message below carries a
 * dot-stuffed line so that the definition is pinned down by the test.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog, type ParsedReply } from '../helpers/dialog.js';
import { TlsDialog } from '../helpers/tls-dialog.js';
import { until } from '../helpers/with-timeout.js';
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

describe('live /metrics after a known traffic mix', () => {
  let backend: RecordingBackend;
  let g: StartedGuard;
  let admin: string;
  const tally = new Tally();
  let accepted = 0; // sessions that got the backend's greeting
  let delivered = 0;
  let acceptedRcpts = 0;
  const authAttempts: Array<{ username?: string }> = [];
  let live: Scrape;

  async function greeted(): Promise<Dialog> {
    const d = await Dialog.connect(g.port, { localAddress: STRANGER });
    tally.reply(await d.reply(), 220, 'backend');
    accepted++;
    await tally.cmd(d, 'EHLO client.test', 250, 'backend');
    return d;
  }

  async function quit(d: Dialog | TlsDialog): Promise<void> {
    await tally.cmd(d, 'QUIT', 221, 'backend');
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
      config: {
        admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false },
        listeners: [{ name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', starttls: true }],
        // A greeting delay makes "talks before the greeting" deterministic for the early talker.
        smtp: { greetingDelay: '150ms' },
        timeouts: { drain: '1s' },
      },
    });
    const a = g.guard.adminAddress();
    if (!a) throw new Error('admin listener not bound');
    admin = `http://${a.host}:${a.port}`;

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

    // 2. Relay attempts of every relay rule, one transaction; nothing reaches the backend.
    {
      const d = await greeted();
      await tally.cmd(d, 'MAIL FROM:<sender@outside.test>', 250, 'backend');
      for (const a of RELAY_ATTEMPTS) await tally.cmd(d, `RCPT TO:${a.rcpt}`, a.code, 'guard');
      await tally.cmd(d, 'RSET', 250, 'backend');
      await quit(d);
    }

    // 3. SMTP smuggling: a bare LF "." bare LF inside DATA → 554 5.6.0 and close.
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

    // 6. STARTTLS with node:tls, then a failing AUTH (the backend says 535).
    {
      const d = await greeted();
      await tally.cmd(d, 'STARTTLS', 220, 'guard');
      const t = await TlsDialog.upgrade(d.socket);
      const ehlo = await tally.cmd(t, 'EHLO client.test', 250, 'backend');
      expect(ehlo.lines.some((l) => /^AUTH\b.*PLAIN/i.test(l))).toBe(true);
      await tally.cmd(t, `AUTH PLAIN ${Buffer.from('\0mallory\0guess').toString('base64')}`, 535, 'backend');
      await quit(t);
    }

    // Everything settled: the backend saw every guard connection close (QUIT or abort).
    await until(() => backend.openConnections() === 0, 5000, 'backend connections closed');
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
  });

  test('(a) every relay_guard_* series queried by a dashboard or an alert exists live, with its labels and values', () => {
    const histograms = new Set([...live.types].filter(([, t]) => t === 'histogram').map(([n]) => n));
    const refs = [...dashboardQueries(), ...alertQueries()];
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

  test('(b) sessions back to 0, backend up, one connect observation per backend connection', () => {
    expect(value(live, 'relay_guard_sessions_active', { listener: 'mx' })).toBe(0);
    const backendName = 'backend1'; // the first configured backend, given by IP: never an IP as a label
    expect(value(live, 'relay_guard_backend_up', { backend: backendName })).toBe(1);
    expect(value(live, 'relay_guard_backend_connections', { backend: backendName })).toBe(0);
    // Every session, the early talker's included, opened exactly one backend connection.
    expect(backend.connections).toHaveLength(accepted + 1);
    expect(value(live, 'relay_guard_backend_connect_duration_seconds_count')).toBe(backend.connections.length);
    expect(nonZeroBy(live, 'relay_guard_backend_errors_total', 'kind')).toEqual({});
    expect(nonZeroBy(live, 'relay_guard_internal_errors_total', 'where')).toEqual({});
    // Backend reply latency is observed for the forwarded verbs.
    const replyCounts = nonZeroBy(live, 'relay_guard_backend_reply_duration_seconds_count', 'verb');
    expect(replyCounts.MAIL).toBe(MESSAGES.length + 2);
    expect(replyCounts.RCPT).toBe(acceptedRcpts);
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
    const backendNames = new Set(['backend1']);
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
