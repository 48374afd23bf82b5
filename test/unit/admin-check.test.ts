import type { FastifyInstance, InjectOptions } from 'fastify';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { buildAdminServer } from '../../src/admin/admin-server.js';
import { bearer, makeAdminDeps, RW_TOKEN, type AdminTestEnv } from '../helpers/admin-deps.js';

let env: AdminTestEnv;
let app: FastifyInstance;

beforeEach(async () => {
  env = await makeAdminDeps();
  app = await buildAdminServer(env.deps);
  await app.ready();
});

afterEach(async () => {
  await app.close();
  await env.cleanup();
});

function call(method: InjectOptions['method'], url: string, payload?: unknown) {
  return app.inject({ method, url, headers: bearer(RW_TOKEN), ...(payload === undefined ? {} : { payload: payload as InjectOptions['payload'] }) });
}

interface CheckBody {
  verdict: string;
  reply: string;
  ruleId: string;
  trace: { ruleId: string; result: string; note?: string }[];
  warnings: { ruleId: string; reply: string }[];
  mail: { verdict: string; ruleId: string; reply: string };
  lookup?: { result: string; source: string };
}

async function check(body: Record<string, unknown>): Promise<CheckBody> {
  const res = await call('POST', '/api/v1/check', body);
  expect(res.statusCode, res.body).toBe(200);
  return res.json() as CheckBody;
}

// Fixture (test/helpers/admin-deps.ts): accepted example.com and validated.example (list mode,
// alice known); relay network 192.0.2.0/24; never-relay 192.0.2.66; listeners mx, internal
// (relay: allow), submission.
const STRANGER = '203.0.113.9';
const TRUSTED = '192.0.2.5';
const NEVER = '192.0.2.66';

interface CheckCase {
  name: string;
  client?: string;
  auth?: string;
  listener?: string;
  from?: string;
  rcpt: string;
  want: 'accept' | 'reject' | 'defer';
  rule: string;
  reply?: string;
  lookup?: { result: string; source: string };
}

const cases: CheckCase[] = [
  // relay: refused for strangers, allowed for trusted clients
  { name: 'relay from an untrusted client', rcpt: '<victim@elsewhere.test>', want: 'reject', rule: 'relay-denied', reply: '550 5.7.1 Relaying denied' },
  { name: 'relay from a relay network', client: TRUSTED, rcpt: '<victim@elsewhere.test>', want: 'accept', rule: 'relay-networks', reply: '250 2.1.5 OK' },
  { name: 'IPv4-mapped address of a relay network', client: `::ffff:${TRUSTED}`, rcpt: '<victim@elsewhere.test>', want: 'accept', rule: 'relay-networks' },
  { name: 'relay from a never-relay client', client: NEVER, rcpt: '<victim@elsewhere.test>', want: 'reject', rule: 'relay-denied' },
  { name: 'relay when authenticated', auth: 'alice', rcpt: '<victim@elsewhere.test>', want: 'accept', rule: 'authenticated' },
  { name: 'relay on an internal listener', listener: 'internal', rcpt: '<victim@elsewhere.test>', want: 'accept', rule: 'internal-listener' },
  { name: 'submission listener without AUTH', listener: 'submission', rcpt: '<bob@example.com>', want: 'reject', rule: 'auth-required', reply: '530 5.7.0 Authentication required' },
  // our domains
  { name: 'accepted domain', rcpt: '<bob@example.com>', want: 'accept', rule: 'accepted-domains', reply: '250 2.1.5 OK' },
  { name: 'bare address without brackets', rcpt: 'bob@Example.COM', want: 'accept', rule: 'accepted-domains' },
  { name: '<postmaster>', rcpt: '<postmaster>', want: 'accept', rule: 'postmaster' },
  { name: 'percent hack', rcpt: '<victim%elsewhere.test@example.com>', want: 'reject', rule: 'routing-tricks', reply: '501 5.1.3 Bad recipient address syntax' },
  // recipient validation (list mode for validated.example)
  { name: 'known recipient', rcpt: '<alice@validated.example>', want: 'accept', rule: 'recipient-validation', lookup: { result: 'known', source: 'list' } },
  { name: 'unknown recipient', rcpt: '<mallory@validated.example>', want: 'reject', rule: 'recipient-unknown', reply: '550 5.1.1 User unknown', lookup: { result: 'unknown', source: 'list' } },
  // syntax errors are answers, not request errors
  { name: 'recipient syntax error', rcpt: '<bob@>', want: 'reject', rule: 'recipient-syntax', reply: '501 5.1.3 Bad recipient address syntax' },
  { name: 'empty recipient', rcpt: '', want: 'reject', rule: 'recipient-syntax' },
  { name: 'sender syntax error', from: '<a b@c>', rcpt: '<bob@example.com>', want: 'reject', rule: 'sender-syntax', reply: '501 5.1.7 Bad sender address syntax' },
  { name: 'null sender is fine', from: '<>', rcpt: '<bob@example.com>', want: 'accept', rule: 'accepted-domains' },
];

describe('POST /api/v1/check', () => {
  test.each(cases)('$name → $want by $rule', async (c) => {
    const body = await check({
      clientIp: c.client ?? STRANGER,
      mailFrom: c.from ?? '<sender@outside.test>',
      rcptTo: c.rcpt,
      ...(c.auth ? { authUser: c.auth } : {}),
      ...(c.listener ? { listener: c.listener } : {}),
    });
    expect(body.verdict).toBe(c.want);
    expect(body.ruleId).toBe(c.rule);
    if (c.reply) expect(body.reply).toBe(c.reply);
    expect(body.trace.length).toBeGreaterThan(0);
    expect(body.trace.at(-1)?.ruleId).toBe(c.rule);
    if (c.lookup) expect(body.lookup).toEqual(c.lookup);
    else expect(body.lookup).toBeUndefined();
  });

  test('the trace names every rule consulted, in order', async () => {
    const body = await check({ clientIp: STRANGER, mailFrom: '<a@outside.test>', rcptTo: '<v@elsewhere.test>', helo: 'client.test' });
    expect(body.trace.map((s) => s.ruleId)).toEqual(
      expect.arrayContaining(['postmaster', 'routing-tricks', 'accepted-domains', 'relay-networks', 'authenticated', 'relay-denied']),
    );
    expect(body.mail).toEqual({ verdict: 'accept', ruleId: 'default-permit', reply: '250 2.1.0 OK', trace: expect.any(Array) });
  });

  test('relay refused, then accepted once the relay network is added through the API, refused again after rollback', async () => {
    const attempt = { clientIp: '198.51.100.7', mailFrom: '<a@partner.test>', rcptTo: '<v@elsewhere.test>' };
    const v0 = env.store.current().version;
    expect((await check(attempt)).verdict).toBe('reject');
    expect((await call('POST', '/api/v1/rules/relay-networks', { value: '198.51.100.0/24' })).statusCode).toBe(200);
    expect(await check(attempt)).toMatchObject({ verdict: 'accept', ruleId: 'relay-networks' });
    expect((await call('POST', '/api/v1/rules/rollback', { version: v0 })).statusCode).toBe(200);
    expect(await check(attempt)).toMatchObject({ verdict: 'reject', ruleId: 'relay-denied', reply: '550 5.7.1 Relaying denied' });
  });

  test('a sender refused at MAIL decides the transaction', async () => {
    await call('PUT', '/api/v1/rules/policy', { antiSpoofing: true });
    const body = await check({ clientIp: STRANGER, mailFrom: '<ceo@example.com>', rcptTo: '<bob@example.com>' });
    expect(body).toMatchObject({ verdict: 'reject', ruleId: 'anti-spoofing', reply: '550 5.7.1 Sender not authorised', mail: { verdict: 'reject', ruleId: 'anti-spoofing' } });
  });

  test('a rule in warn mode shows up as a warning', async () => {
    await call('PUT', '/api/v1/rules/policy', { antiSpoofing: true, rules: { 'anti-spoofing': { mode: 'warn' } } });
    const body = await check({ clientIp: STRANGER, mailFrom: '<ceo@example.com>', rcptTo: '<bob@example.com>' });
    expect(body.verdict).toBe('accept');
    expect(body.warnings).toEqual([{ ruleId: 'anti-spoofing', reply: '550 5.7.1 Sender not authorised' }]);
  });

  test('a banned client is refused at connect', async () => {
    await call('POST', '/api/v1/bans', { target: '203.0.113.0/24', reason: 'spewing' });
    const body = await check({ clientIp: STRANGER, mailFrom: '<a@b.test>', rcptTo: '<bob@example.com>' });
    expect(body).toMatchObject({ verdict: 'reject', ruleId: 'ban', reply: '554 5.7.1 Access denied', ban: { target: '203.0.113.0/24', reason: 'spewing' } });
  });

  test.each([
    { name: 'missing rcptTo', body: { clientIp: STRANGER, mailFrom: '<>' }, field: "'rcptTo'" },
    { name: 'missing clientIp', body: { mailFrom: '<>', rcptTo: '<a@b.test>' }, field: "'clientIp'" },
    { name: 'clientIp not an address', body: { clientIp: 'mail.example.com', mailFrom: '<>', rcptTo: '<a@b.test>' }, field: 'body/clientIp' },
    { name: 'clientIp with a zone', body: { clientIp: 'fe80::1%eth0', mailFrom: '<>', rcptTo: '<a@b.test>' }, field: 'body/clientIp' },
    { name: 'clientIp a number', body: { clientIp: 3221225985, mailFrom: '<>', rcptTo: '<a@b.test>' }, field: 'body/clientIp' },
    { name: 'unknown listener', body: { clientIp: STRANGER, mailFrom: '<>', rcptTo: '<a@b.test>', listener: 'nope' }, field: 'body/listener' },
    { name: 'unknown field', body: { clientIp: STRANGER, mailFrom: '<>', rcptTo: '<a@b.test>', tls: true }, field: "'tls'" },
    { name: 'CR LF smuggled into rcptTo', body: { clientIp: STRANGER, mailFrom: '<>', rcptTo: '<a@b.test>\r\nRCPT TO:<x@y>' }, field: 'body/rcptTo' },
  ])('400 for $name', async ({ body, field }) => {
    const res = await call('POST', '/api/v1/check', body);
    expect(res.statusCode).toBe(400);
    expect((res.json() as { message: string }).message).toContain(field);
  });
});

describe('bans', () => {
  test('add with a duration, list, remove (URL-encoded CIDR); persisted to the ban file', async () => {
    const add = await call('POST', '/api/v1/bans', { target: '198.51.100.9/24', duration: '1h', reason: 'relay probing' });
    expect(add.statusCode).toBe(200);
    expect(add.json()).toMatchObject({ ban: { target: '198.51.100.0/24', reason: 'relay probing', source: 'manual', expiresAt: new Date(env.clock.now() + 3_600_000).toISOString() } });
    expect(env.bans.check('198.51.100.200')).toBeDefined();
    const list = await call('GET', '/api/v1/bans');
    expect((list.json() as { bans: { target: string }[] }).bans.map((b) => b.target)).toEqual(['198.51.100.0/24']);
    const reopened = await import('../../src/limits/bans.js').then((m) => new m.BanList({ file: `${env.dir}/bans.yaml`, clock: env.clock }));
    expect(reopened.check('198.51.100.1')?.target).toBe('198.51.100.0/24');

    const del = await call('DELETE', `/api/v1/bans/${encodeURIComponent('198.51.100.0/24')}`);
    expect(del.statusCode).toBe(200);
    expect(env.bans.check('198.51.100.200')).toBeUndefined();
    expect((await call('GET', '/api/v1/bans')).json()).toEqual({ bans: [] });
  });

  test('a ban without duration is permanent', async () => {
    const add = await call('POST', '/api/v1/bans', { target: '2001:db8::1', reason: 'x' });
    expect(add.statusCode).toBe(200);
    expect((add.json() as { ban: { expiresAt?: string } }).ban.expiresAt).toBeUndefined();
  });

  test.each([
    { name: 'bad target', body: { target: 'mail.example.com', reason: 'x' }, code: 'RG_ERR_BANS_BAD_TARGET', field: 'ban target' },
    { name: 'bad prefix', body: { target: '10.0.0.0/33', reason: 'x' }, code: 'RG_ERR_BANS_BAD_TARGET', field: 'ban target' },
    { name: 'bad duration', body: { target: '10.0.0.1', duration: 'forever', reason: 'x' }, code: 'RG_ERR_ADMIN_VALIDATION', field: 'body/duration' },
    { name: 'zero duration', body: { target: '10.0.0.1', duration: '0s', reason: 'x' }, code: 'RG_ERR_ADMIN_VALIDATION', field: 'body/duration' },
    { name: 'huge duration', body: { target: '10.0.0.1', duration: '99999999999999999999d', reason: 'x' }, code: 'RG_ERR_ADMIN_VALIDATION', field: 'body/duration' },
    { name: 'missing reason', body: { target: '10.0.0.1' }, code: 'RG_ERR_ADMIN_VALIDATION', field: "'reason'" },
  ])('400 for $name', async ({ body, code, field }) => {
    const res = await call('POST', '/api/v1/bans', body);
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({ code });
    expect((res.json() as { message: string }).message).toContain(field);
    expect(env.bans.list()).toEqual([]);
  });

  // issue 16 item 8: a ban that covers every address (or every IPv4 host via a transition prefix) needs force
  test.each(['0.0.0.0/0', '::/0', '::ffff:0:0/96', '0.0.0.0/7', '2002::/16', '2001::/32', '64:ff9b::/96', '2000::/3'])(
    'a ban of %s without force → 400 RG_ERR_BANS_TOO_WIDE and no ban; with force: true it is made',
    async (target) => {
      const res = await call('POST', '/api/v1/bans', { target, reason: 'oops' });
      expect(res.statusCode).toBe(400);
      expect(res.json()).toMatchObject({ code: 'RG_ERR_BANS_TOO_WIDE' });
      expect((res.json() as { message: string }).message).toContain('force');
      expect(env.bans.list()).toEqual([]);
      const forced = await call('POST', '/api/v1/bans', { target, reason: 'really', force: true });
      expect(forced.statusCode).toBe(200);
      expect(env.bans.list()).toHaveLength(1);
    },
  );

  test('force is a boolean, and a narrow ban needs none', async () => {
    expect((await call('POST', '/api/v1/bans', { target: '0.0.0.0/0', reason: 'x', force: 'yes' })).statusCode).toBe(400);
    expect((await call('POST', '/api/v1/bans', { target: '2002:c000:200::/40', reason: 'one 6to4 /24' })).statusCode).toBe(200);
  });

  test('removing a target that is not banned → 404; a malformed one → 400', async () => {
    expect((await call('DELETE', `/api/v1/bans/${encodeURIComponent('192.0.2.1')}`)).statusCode).toBe(404);
    expect((await call('DELETE', '/api/v1/bans/not-an-ip')).statusCode).toBe(400);
  });
});

describe('sessions and recipients', () => {
  test('list sessions; close one (421 via terminate); unknown id → 404', async () => {
    const { fakeSession } = await import('../helpers/admin-deps.js');
    const s = fakeSession('s1', { helo: 'spewer.test', state: 'rcpt' });
    env.sessions.add(s);
    const list = await call('GET', '/api/v1/sessions');
    expect(list.statusCode).toBe(200);
    expect(list.json()).toMatchObject({ sessions: [{ id: 's1', helo: 'spewer.test', state: 'rcpt', clientIp: '203.0.113.9', bytesIn: 10, ageSeconds: 1 }] });
    const del = await call('DELETE', '/api/v1/sessions/s1');
    expect(del.statusCode).toBe(200);
    expect(s.terminated).toHaveLength(1);
    expect(s.terminated[0]).toContain('ops');
    const missing = await call('DELETE', '/api/v1/sessions/nope');
    expect(missing.statusCode).toBe(404);
    expect(missing.json()).toMatchObject({ code: 'RG_ERR_ADMIN_UNKNOWN_SESSION' });
  });

  test('reload the recipient list: a new address becomes known', async () => {
    const { writeFile } = await import('node:fs/promises');
    const probe = { clientIp: STRANGER, mailFrom: '<>', rcptTo: '<bob@validated.example>' };
    expect((await check(probe)).verdict).toBe('reject');
    await writeFile(`${env.dir}/recipients.txt`, 'alice@validated.example\nbob@validated.example\n');
    const res = await call('POST', '/api/v1/recipients/reload');
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ ok: true, entries: 2 });
    expect((await check(probe)).verdict).toBe('accept');
  });

  test('reload without a validator → 501', async () => {
    const { validator: _v, ...rest } = env.deps;
    const bare = await buildAdminServer(rest);
    try {
      const res = await bare.inject({ method: 'POST', url: '/api/v1/recipients/reload', headers: bearer(RW_TOKEN) });
      expect(res.statusCode).toBe(501);
      expect(res.json()).toMatchObject({ code: 'RG_ERR_ADMIN_NOT_CONFIGURED' });
    } finally {
      await bare.close();
    }
  });
});

describe('errors', () => {
  test('unknown route → 404 JSON', async () => {
    const res = await call('GET', '/api/v1/nothing-here');
    expect(res.statusCode).toBe(404);
    expect(res.json()).toMatchObject({ statusCode: 404, code: 'RG_ERR_ADMIN_NOT_FOUND' });
  });

  test('an internal fault is a 500 without details, logged and counted', async () => {
    const broken = await buildAdminServer({ ...env.deps, sessions: { ...env.deps.sessions, list: () => { throw new Error('secret detail'); } } as never });
    try {
      const res = await broken.inject({ method: 'GET', url: '/api/v1/sessions', headers: bearer(RW_TOKEN) });
      expect(res.statusCode).toBe(500);
      expect(res.json()).toEqual({ statusCode: 500, code: 'RG_ERR_ADMIN_INTERNAL', message: 'internal error' });
      expect(res.body).not.toContain('secret detail');
      const m = await env.registry.getSingleMetric('relay_guard_internal_errors_total')?.get();
      expect(m?.values.find((v) => v.labels['where'] === 'admin')?.value).toBe(1);
      expect(env.logs.some((l) => l['msg'] === 'admin request failed')).toBe(true);
    } finally {
      await broken.close();
    }
  });
});
