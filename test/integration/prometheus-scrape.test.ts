/**
 * Issue 7 acceptance: a real Prometheus (Debian `prometheus`) scrapes a running guard's /metrics on
 * its admin listener, and after K relay attempts its query API returns a relay-denial count of K.
 * Waits poll the query API (bounded); there is no event to wait on inside Prometheus.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { startPrometheus, type PrometheusServer } from '../helpers/prometheus.js';

const STRANGER = '127.0.0.9';
const POLL_MS = 250;
const MAX_WAIT_MS = 30_000;

// K relay attempts: rule → RCPT TO argument, several per rule.
const RELAY_ATTEMPTS: Array<{ rule: string; rcpt: string }> = [
  { rule: 'relay-denied', rcpt: '<a@elsewhere.test>' },
  { rule: 'relay-denied', rcpt: '<b@elsewhere.test>' },
  { rule: 'relay-denied', rcpt: '<c@far.example.net>' },
  { rule: 'routing-tricks', rcpt: '<a%elsewhere.test@example.com>' },
  { rule: 'routing-tricks', rcpt: '<elsewhere.test!a@example.com>' },
  { rule: 'encapsulated-address', rcpt: '<IMCEASMTP-a+40elsewhere+2Etest@example.com>' },
  { rule: 'relay-denied', rcpt: '<d@elsewhere.test>' },
];
const K = RELAY_ATTEMPTS.length;

/** Poll an instant query until `want` holds for its result (bounded by MAX_WAIT_MS). */
async function queryUntil<T>(prom: PrometheusServer, expr: string, read: (r: Awaited<ReturnType<PrometheusServer['query']>>) => T, want: (v: T) => boolean): Promise<T> {
  const deadline = Date.now() + MAX_WAIT_MS;
  let last: T | undefined;
  for (let i = 0; Date.now() < deadline && i < MAX_WAIT_MS / POLL_MS + 10; i++) {
    last = read(await prom.query(expr));
    if (want(last)) return last;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  throw new Error(`${expr}: still ${JSON.stringify(last)} after ${MAX_WAIT_MS} ms`);
}

const scalar = (r: Awaited<ReturnType<PrometheusServer['query']>>): number | undefined => (r[0] ? Number(r[0].value[1]) : undefined);

describe('a real Prometheus scraping the guard', () => {
  let backend: RecordingBackend;
  let g: StartedGuard;
  let prom: PrometheusServer;
  let target: string;

  beforeAll(async () => {
    backend = await startRecordingBackend();
    g = await startGuard({
      backendPort: backend.port,
      config: { admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false }, timeouts: { drain: '1s' } },
    });
    const a = g.guard.adminAddress();
    if (!a) throw new Error('admin listener not bound');
    target = `127.0.0.1:${a.port}`;
    prom = await startPrometheus({ targets: [target], scrapeInterval: '500ms' });
  });

  afterAll(async () => {
    await prom?.close();
    await g?.stop();
    await backend?.close();
  });

  test(`after ${K} relay attempts, sum(relay_guard_relay_denials_total) is ${K}`, async () => {
    // Before the traffic: the target is up and the pre-published series read 0 (a scrape happened).
    const up = await queryUntil(prom, `up{job="relay-guard", instance="${target}"}`, scalar, (v) => v === 1);
    expect(up).toBe(1);
    expect(await queryUntil(prom, 'sum(relay_guard_relay_denials_total)', scalar, (v) => v !== undefined)).toBe(0);

    const d = await Dialog.connect(g.port, { localAddress: STRANGER });
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO client.test')).code).toBe(250);
    expect((await d.cmd('MAIL FROM:<someone@outside.test>')).code).toBe(250);
    for (const a of RELAY_ATTEMPTS) expect((await d.cmd(`RCPT TO:${a.rcpt}`)).code, a.rcpt).toBeGreaterThanOrEqual(500);
    expect((await d.cmd('QUIT')).code).toBe(221);
    await d.waitClosed();

    const total = await queryUntil(prom, 'sum(relay_guard_relay_denials_total)', scalar, (v) => v !== undefined && v >= K);
    expect(total).toBe(K);

    const want: Record<string, number> = {};
    for (const a of RELAY_ATTEMPTS) want[a.rule] = (want[a.rule] ?? 0) + 1;
    const byRule = await prom.query('sum by (rule) (relay_guard_relay_denials_total) > 0');
    expect(Object.fromEntries(byRule.map((s) => [s.metric.rule, Number(s.value[1])]))).toEqual(want);
    // Nothing of the refused recipients reached the backend.
    expect(backend.lines().some((l) => /elsewhere|far\.example|IMCEA/i.test(l))).toBe(false);
  });
});
