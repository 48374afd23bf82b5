/**
 * The console's server side without a browser: the refusal ring's bound and filters, the static
 * files and their headers, the console API routes and the cross-site guard on API writes.
 * (test/browser/console.test.ts drives the pages in a real Chromium.)
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildAdminServer } from '../../src/admin/admin-server.js';
import { CONSOLE_CSP } from '../../src/admin/console/console-routes.js';
import { ConsoleActivity, SAMPLE_INTERVAL_MS } from '../../src/admin/console/console-activity.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { SessionRegistry } from '../../src/session/session-registry.js';
import { Registry } from 'prom-client';
import { FIELD_CAP, RefusalRing, type RefusalRecord } from '../../src/observability/refusal-ring.js';
import { bearer, makeAdminDeps, RO_TOKEN, RW_TOKEN, type AdminTestEnv } from '../helpers/admin-deps.js';

function refusal(n: number, over: Partial<RefusalRecord> = {}): RefusalRecord {
  return {
    kind: 'rcpt', sessionId: `s${n}`, clientIp: `192.0.2.${n}`, listener: 'mx', helo: `host${n}.test`,
    mailFrom: `a${n}@outside.test`, rcpt: `victim${n}@elsewhere.test`, ruleId: 'relay-denied', reply: '550 5.7.1 Relaying denied', ...over,
  };
}

describe('RefusalRing', () => {
  test('holds at most its capacity, newest first, and counts what it dropped', () => {
    const ring = new RefusalRing(5);
    for (let i = 1; i <= 12; i++) ring.record(refusal(i));
    expect(ring.size).toBe(5);
    expect(ring.total).toBe(12);
    expect(ring.list().map((r) => r.id)).toEqual([12, 11, 10, 9, 8]);
    expect(ring.get(7)).toBeUndefined();
    expect(ring.get(9)?.clientIp).toBe('192.0.2.9');
    // A bound that holds under any number of writes, not just one wrap.
    for (let i = 0; i < 10_000; i++) ring.record(refusal(i % 250));
    expect(ring.size).toBe(5);
    expect(ring.list({ limit: 1000 })).toHaveLength(5);
  });

  test('filters by client (address or HELO), sender, recipient and rule; "after" gives only newer ones', () => {
    const ring = new RefusalRing(100);
    ring.record(refusal(1));
    ring.record(refusal(2, { ruleId: 'routing-tricks', rcpt: 'x%y@example.com' }));
    ring.record(refusal(3, { kind: 'sender', rcpt: undefined, mailFrom: 'ceo@example.com', ruleId: 'anti-spoofing' }));
    expect(ring.list({ client: '192.0.2.2' }).map((r) => r.id)).toEqual([2]);
    expect(ring.list({ client: 'HOST3' }).map((r) => r.id)).toEqual([3]);
    expect(ring.list({ sender: 'ceo@' }).map((r) => r.id)).toEqual([3]);
    expect(ring.list({ recipient: '%' }).map((r) => r.id)).toEqual([2]);
    expect(ring.list({ rule: 'relay' }).map((r) => r.id)).toEqual([1]);
    expect(ring.list({ after: 1 }).map((r) => r.id)).toEqual([3, 2]);
    expect(ring.list({ limit: 1 }).map((r) => r.id)).toEqual([3]);
  });

  test('holds only what the refusal log line holds, with client strings capped as the log caps them', () => {
    const ring = new RefusalRing(3);
    const long = 'h'.repeat(5000);
    ring.record({ ...refusal(1), helo: long, mailFrom: long, rcpt: long, authUser: 'alice' });
    const [r] = ring.list();
    expect(Object.keys(r!).sort()).toEqual(['authUser', 'clientIp', 'helo', 'id', 'kind', 'listener', 'mailFrom', 'rcpt', 'reply', 'ruleId', 'sessionId', 'time']);
    for (const k of ['helo', 'mailFrom', 'rcpt'] as const) expect(r![k]!.length).toBe(FIELD_CAP + 1);
  });

  test('top clients and rules count only the window', () => {
    let now = 1_000_000_000_000;
    const ring = new RefusalRing(100, () => now);
    ring.record(refusal(1, { clientIp: '192.0.2.1' }));
    now += 2 * 3_600_000;
    ring.record(refusal(2, { clientIp: '192.0.2.2' }));
    ring.record(refusal(3, { clientIp: '192.0.2.2', ruleId: 'routing-tricks' }));
    const top = ring.top(3_600_000);
    expect(top.counted).toBe(2);
    expect(top.clients).toEqual([{ key: '192.0.2.2', count: 2 }]);
    expect(top.rules).toEqual([{ key: 'relay-denied', count: 1 }, { key: 'routing-tricks', count: 1 }]);
  });

  test('a capacity below 1 is refused', () => {
    expect(() => new RefusalRing(0)).toThrow(RangeError);
  });
});

describe('ConsoleActivity (the Now page numbers)', () => {
  test('per-minute delivered messages and refusals from 10 s samples, an hour at most', async () => {
    let now = Date.UTC(2026, 0, 1, 3, 0, 0);
    const metrics = createMetrics(new Registry(), { defaultMetrics: false });
    const ring = new RefusalRing(5, () => now);
    const activity = new ConsoleActivity({
      config: { limits: { store: 'memory', maxEntries: 100 }, backends: [] },
      metrics, sessions: new SessionRegistry(), bans: { list: () => [] }, refusals: ring,
      rules: { current: () => ({ raw: { limits: { enabled: true } } }) }, now: () => now,
    });
    // Two hours of traffic: per minute 3 delivered (and 1 bounced, not counted) and 2 refused.
    for (let t = 0; t < 2 * 360; t++) {
      await activity.sample();
      now += SAMPLE_INTERVAL_MS;
      if (t % 6 === 0) {
        metrics.messages.inc({ outcome: 'delivered' }, 3);
        metrics.messages.inc({ outcome: 'rejected_by_backend' });
        ring.record(refusal(1));
        ring.record(refusal(2));
      }
    }
    const o = await activity.overview();
    expect(o.perMinute).toHaveLength(60);
    expect(o.perMinute.slice(0, -1).every((m) => m.messages === 3 && m.refusals === 2)).toBe(true);
    expect(o.lastMinute).toEqual({ messages: 3, refusals: 2 });
    // The ring holds 5, its total counts all: per-minute refusals come from the total.
    expect(o.recentRefusals).toEqual({ held: 5, capacity: 5, total: 240 });
    expect(o.limits).toEqual({ store: 'memory', enabled: true, fallback: false, storeErrors: 0 });
    expect(o.backends).toEqual([]);
  });

  test('a young guard shows only the minutes it has lived', async () => {
    let now = Date.UTC(2026, 0, 1, 3, 0, 30);
    const metrics = createMetrics(new Registry(), { defaultMetrics: false });
    const activity = new ConsoleActivity({
      config: { limits: { store: 'memory', maxEntries: 100 }, backends: [] },
      metrics, sessions: new SessionRegistry(), bans: { list: () => [] },
      rules: { current: () => ({ raw: { limits: { enabled: false } } }) }, now: () => now,
    });
    await activity.sample();
    metrics.messages.inc({ outcome: 'delivered' }, 2);
    now += 40_000;
    const o = await activity.overview();
    expect(o.perMinute.map((m) => m.messages)).toEqual([0, 2]);
    expect(o.lastMinute.messages).toBe(2);
  });
});

describe('console routes', () => {
  let env: AdminTestEnv;
  let app: FastifyInstance;
  let ring: RefusalRing;
  beforeEach(async () => {
    env = await makeAdminDeps();
    ring = new RefusalRing(10);
    app = await buildAdminServer({ ...env.deps, refusals: ring });
    await app.ready();
  });
  afterEach(async () => {
    await app.close();
    await env.cleanup();
  });

  test('/ and /console redirect to /console/, which is the page shell with a strict CSP and no data', async () => {
    ring.record(refusal(9));
    for (const url of ['/', '/console']) {
      const r = await app.inject({ url });
      expect(r.statusCode).toBe(302);
      expect(r.headers.location).toBe('/console/');
    }
    const page = await app.inject({ url: '/console/' });
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toMatch(/^text\/html/);
    expect(page.headers['content-security-policy']).toBe(CONSOLE_CSP);
    expect(CONSOLE_CSP).toContain("script-src 'self'");
    expect(CONSOLE_CSP).not.toContain('unsafe');
    expect(page.headers['x-frame-options']).toBe('DENY');
    expect(page.body).toContain('id="login-form"');
    expect(page.body).not.toContain('192.0.2.9');
    // No inline script or style in the shell: everything comes from files the CSP allows.
    expect(page.body).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(page.body).not.toMatch(/<style|\sstyle=/);
  });

  test('every console file is served from the guard with its type; nothing outside the asset set is', async () => {
    const dir = path.resolve('src/admin/console/assets');
    for (const name of readdirSync(dir)) {
      const r = await app.inject({ url: `/console/${name}` });
      expect(r.statusCode, name).toBe(200);
      expect(r.headers['x-content-type-options']).toBe('nosniff');
    }
    expect((await app.inject({ url: '/console/console.js' })).headers['content-type']).toMatch(/^text\/javascript/);
    for (const url of ['/console/..%2Fconsole-routes.ts', '/console/%2e%2e%2f%2e%2e%2fadmin-server.ts', '/console/nope.js', '/console/.hidden.js']) {
      expect((await app.inject({ url })).statusCode, url).toBe(404);
    }
  });

  test('the browser code never turns a string into markup or code', () => {
    const dir = path.resolve('src/admin/console/assets');
    for (const name of readdirSync(dir).filter((n) => n.endsWith('.js'))) {
      const text = readFileSync(path.join(dir, name), 'utf8').replace(/^\s*(\/\/|\*|\/\*\*).*$/gm, '');
      expect(text, name).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setAttribute\(\s*['"]on/);
    }
  });

  test('GET /api/v1/refusals needs a token, filters, and says how much the ring holds', async () => {
    for (let i = 1; i <= 14; i++) ring.record(refusal(i, i % 2 === 0 ? { ruleId: 'routing-tricks' } : {}));
    expect((await app.inject({ url: '/api/v1/refusals' })).statusCode).toBe(401);
    const all = await app.inject({ url: '/api/v1/refusals', headers: bearer(RO_TOKEN) });
    expect(all.statusCode).toBe(200);
    const body = all.json() as { refusals: { id: number }[]; held: number; capacity: number; total: number };
    expect(body.refusals.map((r) => r.id)).toEqual([14, 13, 12, 11, 10, 9, 8, 7, 6, 5]);
    expect({ held: body.held, capacity: body.capacity, total: body.total }).toEqual({ held: 10, capacity: 10, total: 14 });
    const f = await app.inject({ url: '/api/v1/refusals?rule=routing&client=192.0.2.1&limit=2', headers: bearer(RO_TOKEN) });
    expect((f.json() as { refusals: { id: number }[] }).refusals.map((r) => r.id)).toEqual([14, 12]);
    expect((await app.inject({ url: '/api/v1/refusals?limit=x', headers: bearer(RO_TOKEN) })).statusCode).toBe(400);
    expect((await app.inject({ url: '/api/v1/refusals?bogus=1', headers: bearer(RO_TOKEN) })).statusCode).toBe(400);
    expect((await app.inject({ url: '/api/v1/refusals/13', headers: bearer(RO_TOKEN) })).json()).toMatchObject({ refusal: { id: 13, clientIp: '192.0.2.13' } });
    expect((await app.inject({ url: '/api/v1/refusals/1', headers: bearer(RO_TOKEN) })).statusCode).toBe(404);
  });

  test('whoami says the scope; overview says what the Now page shows', async () => {
    expect((await app.inject({ url: '/api/v1/whoami', headers: bearer(RO_TOKEN) })).json()).toEqual({ id: 'viewer', scope: 'ro', open: false });
    expect((await app.inject({ url: '/api/v1/whoami', headers: bearer(RW_TOKEN) })).json()).toEqual({ id: 'ops', scope: 'rw', open: false });
    expect((await app.inject({ url: '/api/v1/whoami' })).statusCode).toBe(401);
    ring.record(refusal(1));
    ring.record(refusal(2, { clientIp: '192.0.2.1' }));
    const o = (await app.inject({ url: '/api/v1/overview', headers: bearer(RO_TOKEN) })).json() as Record<string, any>;
    expect(o['sessions']).toEqual({ open: 0, byState: {} });
    expect(o['lastHour'].clients).toEqual([{ key: '192.0.2.1', count: 2 }]);
    expect(o['recentRefusals']).toEqual({ held: 2, capacity: 10, total: 2 });
    expect(o['lastMinute'].refusals).toBe(2);
    expect(o['pool']).toEqual({ enabled: false });
    expect(o['limits']).toMatchObject({ store: 'memory', fallback: false, storeErrors: 0 });
    expect(o['bans']).toEqual({ active: 0 });
  });

  test('with no token configured (loopback only) the console goes straight in: whoami says the API is open', async () => {
    const open = await makeAdminDeps({ tokenFile: null });
    const openApp = await buildAdminServer(open.deps);
    try {
      expect((await openApp.inject({ url: '/api/v1/whoami' })).json()).toEqual({ id: 'local', scope: 'rw', open: true });
      expect((await openApp.inject({ url: '/api/v1/refusals' })).json()).toEqual({ refusals: [], held: 0, capacity: 0, total: 0 });
      // Open or not, a cross-site write is refused.
      const r = await openApp.inject({ method: 'POST', url: '/api/v1/rules/reload', headers: { 'sec-fetch-site': 'cross-site' } });
      expect(r.statusCode).toBe(403);
    } finally {
      await openApp.close();
      await open.cleanup();
    }
  });

  describe('cross-site writes are refused; curl, ctl and the console itself are not', () => {
    const ban = { target: '203.0.113.7', reason: 'test', duration: '1h' };
    const cases: { name: string; headers: Record<string, string>; want: number }[] = [
      // what a browser sends from another site
      { name: 'Sec-Fetch-Site: cross-site', headers: { 'sec-fetch-site': 'cross-site', 'x-relay-guard-console': '1' }, want: 403 },
      { name: 'Sec-Fetch-Site: same-site (another port or subdomain)', headers: { 'sec-fetch-site': 'same-site', 'x-relay-guard-console': '1' }, want: 403 },
      { name: 'Origin of another site', headers: { origin: 'http://evil.test', 'x-relay-guard-console': '1' }, want: 403 },
      { name: 'opaque Origin (sandboxed frame, file:)', headers: { origin: 'null' }, want: 403 },
      { name: 'same origin but without the console header (a form post)', headers: { 'sec-fetch-site': 'same-origin', origin: 'http://localhost:80' }, want: 403 },
      // allowed
      { name: 'the console: same origin with its header', headers: { 'sec-fetch-site': 'same-origin', origin: 'http://localhost:80', 'x-relay-guard-console': '1' }, want: 200 },
      { name: 'curl / relay-guard ctl (no browser headers)', headers: {}, want: 200 },
    ];
    test.each(cases)('$name → $want', async ({ headers, want }) => {
      const r = await app.inject({ method: 'POST', url: '/api/v1/bans', headers: { ...bearer(RW_TOKEN), host: 'localhost:80', ...headers }, payload: ban });
      expect(r.statusCode, r.body).toBe(want);
      expect(env.bans.list().length).toBe(want === 200 ? 1 : 0);
    });
    test('reads are not affected (CORS already keeps their answers from another site)', async () => {
      const r = await app.inject({ url: '/api/v1/bans', headers: { ...bearer(RO_TOKEN), 'sec-fetch-site': 'cross-site' } });
      expect(r.statusCode).toBe(200);
    });
  });
});
