/** `relay-guard ctl` against a real admin server listening on 127.0.0.1:0 (global fetch, real HTTP). */
import { createServer } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { buildAdminServer } from '../../src/admin/admin-server.js';
import { adminBaseUrl, runCtl } from '../../src/cli/ctl.js';
import { fakeSession, makeAdminDeps, RO_TOKEN, RW_TOKEN, type AdminTestEnv } from '../helpers/admin-deps.js';

let env: AdminTestEnv;
let app: FastifyInstance;
let admin: string;

beforeAll(async () => {
  env = await makeAdminDeps();
  app = await buildAdminServer(env.deps);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const a = app.server.address();
  if (!a || typeof a !== 'object') throw new Error('no address');
  admin = `127.0.0.1:${a.port}`;
});

afterAll(async () => {
  await app.close();
  await env.cleanup();
});

async function ctl(args: string[], opts: { token?: string | null; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const token = opts.token === undefined ? RW_TOKEN : opts.token;
  const code = await runCtl([...(opts.env ? [] : ['--admin', admin]), ...(token === null ? [] : ['--token', token]), ...args], {
    stdout: (s) => (out += s),
    stderr: (s) => (err += s),
    env: opts.env ?? {},
  });
  return { code, out, err };
}

describe('usage', () => {
  test('--help prints usage and exits 0', async () => {
    const r = await ctl(['--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('relay-guard ctl');
    expect(r.out).toContain('relay-networks');
  });

  test.each([
    { name: 'no command', args: [] },
    { name: 'unknown command', args: ['frobnicate'] },
    { name: 'unknown option', args: ['--frob', 'bans', 'list'] },
    { name: 'missing value', args: ['relay-networks', 'add'] },
    { name: 'extra argument', args: ['bans', 'list', 'extra'] },
    { name: 'add to an object section', args: ['policy', 'add', 'x'] },
    { name: 'check without --rcpt', args: ['check', '--ip', '192.0.2.1'] },
    { name: 'senders add with a non-JSON value', args: ['senders', 'add', 'not json'] },
    { name: 'bad --limit', args: ['audit', '--limit', 'ten'] },
  ])('$name → exit 2', async ({ args }) => {
    const r = await ctl(args);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/relay-guard ctl|Usage/);
  });

  test('bad --admin → exit 2', async () => {
    const r = await runCtl(['--admin', 'nowhere', 'bans', 'list'], { stdout: () => undefined, stderr: () => undefined, env: {} });
    expect(r).toBe(2);
  });

  test('adminBaseUrl', () => {
    expect(adminBaseUrl('127.0.0.1:8025')).toBe('http://127.0.0.1:8025/api/v1');
    expect(adminBaseUrl('[::1]:8025')).toBe('http://[::1]:8025/api/v1');
    expect(adminBaseUrl('http://admin.test:9/')).toBe('http://admin.test:9/api/v1');
  });
});

describe('incident moves against a live admin API', () => {
  test('relay refused → add the partner network → accepted → remove → refused', async () => {
    const probe = ['check', '--ip', '198.51.100.7', '--from', 'a@partner.test', '--rcpt', '<v@elsewhere.test>', '--helo', 'mx.partner.test'];
    const before = await ctl(probe);
    expect(before.code).toBe(0);
    expect(before.out).toMatch(/^verdict: +reject$/m);
    expect(before.out).toMatch(/^reply: +550 5\.7\.1 Relaying denied$/m);
    expect(before.out).toMatch(/^rule: +relay-denied$/m);
    expect(before.out).toMatch(/^ +relay-networks +dunno/m);

    const add = await ctl(['relay-networks', 'add', '198.51.100.0/24']);
    expect(add).toMatchObject({ code: 0, err: '' });
    expect(env.store.current().raw.relayNetworks).toContain('198.51.100.0/24');
    expect((await ctl(['relay-networks', 'list'])).out.split('\n')).toContain('198.51.100.0/24');

    const after = await ctl(probe);
    expect(after.out).toMatch(/^verdict: +accept$/m);
    expect(after.out).toMatch(/^rule: +relay-networks$/m);

    expect((await ctl(['relay-networks', 'remove', '198.51.100.0/24'])).code).toBe(0);
    expect((await ctl(probe)).out).toMatch(/^verdict: +reject$/m);
    // Attributed to the token id.
    expect(env.store.audit(2).map((e) => e.actor)).toEqual(['ops', 'ops']);
  });

  test('--json prints the API answer', async () => {
    const r = await ctl(['--json', 'check', '--ip', '203.0.113.9', '--rcpt', 'bob@example.com']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ verdict: 'accept', ruleId: 'accepted-domains', mail: { ruleId: 'default-permit' } });
  });

  test('accepted-domains add and remove; removing it again is a 404 (exit 1)', async () => {
    expect((await ctl(['accepted-domains', 'add', 'example.org'])).code).toBe(0);
    expect(env.store.current().raw.acceptedDomains).toContain('example.org');
    expect((await ctl(['accepted-domains', 'remove', 'example.org'])).code).toBe(0);
    const again = await ctl(['accepted-domains', 'remove', 'example.org']);
    expect(again.code).toBe(1);
    expect(again.err).toContain('404');
  });

  test('an invalid value is refused with the API message (exit 1)', async () => {
    const r = await ctl(['relay-networks', 'add', '0.0.0.0/0']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/400 RG_ERR_/);
  });

  test('senders add takes a JSON rule', async () => {
    const r = await ctl(['senders', 'add', '{"id":"spam","match":["@spam.test"],"action":"reject"}']);
    expect(r.code).toBe(0);
    expect(env.store.current().raw.senders.map((s) => s.id)).toEqual(['spam']);
    expect((await ctl(['senders', 'remove', 'spam'])).code).toBe(0);
  });

  test('bans add of a network covering every address needs --force (issue 16 item 8)', async () => {
    const refused = await ctl(['bans', 'add', '2002::/16']);
    expect(refused.code).toBe(1);
    expect(refused.err).toContain('RG_ERR_BANS_TOO_WIDE');
    expect(env.bans.list()).toEqual([]);
    const forced = await ctl(['bans', 'add', '0.0.0.0/0', '--force', '--reason', 'lockdown']);
    expect(forced.code).toBe(0);
    expect(env.bans.check('198.51.100.1')?.reason).toBe('lockdown');
    expect((await ctl(['bans', 'remove', '0.0.0.0/0'])).code).toBe(0);
  });

  test('bans add, list, remove', async () => {
    const add = await ctl(['bans', 'add', '203.0.113.0/24', '--duration', '1h', '--reason', 'spewing']);
    expect(add.code).toBe(0);
    expect(add.out).toContain('banned 203.0.113.0/24 until');
    expect(env.bans.check('203.0.113.50')?.reason).toBe('spewing');
    const list = await ctl(['bans', 'list']);
    expect(list.out).toMatch(/^203\.0\.113\.0\/24 +manual +\S+ +spewing$/m);
    expect((await ctl(['bans', 'remove', '203.0.113.0/24'])).code).toBe(0);
    expect(env.bans.check('203.0.113.50')).toBeUndefined();
    expect((await ctl(['bans', 'list'])).out).toBe('(none)\n');
    const bad = await ctl(['bans', 'add', 'not-an-ip']);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain('RG_ERR_BANS_BAD_TARGET');
  });

  test('sessions list and close', async () => {
    const s = fakeSession('sess-1', { helo: 'spewer.test' });
    env.sessions.add(s);
    try {
      const list = await ctl(['sessions', 'list']);
      expect(list.out).toMatch(/^sess-1 +mx +203\.0\.113\.9 +spewer\.test/m);
      expect((await ctl(['sessions', 'close', 'sess-1'])).code).toBe(0);
      expect(s.terminated).toHaveLength(1);
      expect((await ctl(['sessions', 'close', 'nope'])).code).toBe(1);
    } finally {
      env.sessions.remove('sess-1');
    }
  });

  test('sessions list names the backend session; pool: off here, and a pooled guard\'s pool as a table', async () => {
    const s = fakeSession('sess-2', { helo: 'pooled.test', backendSession: '7:50432' });
    env.sessions.add(s);
    try {
      expect((await ctl(['sessions', 'list'])).out).toMatch(/^sess-2 .* 7:50432$/m);
    } finally {
      env.sessions.remove('sess-2');
    }
    const off = await ctl(['pool']);
    expect(off.code).toBe(0);
    expect(off.out).toContain('pooled mode is off');
    // A second admin server whose guard runs a pool.
    const pooled = await buildAdminServer({
      ...env.deps,
      pool: () => ({ backend: 'exchange', minIdle: 2, max: 4, idle: 1, lent: 1, dedicated: 0, opening: 0, waiting: 3, sessions: [{ backendSession: '1:40001', state: 'idle', idleSeconds: 12 }, { backendSession: '2:40002', state: 'lent' }] }),
    });
    try {
      await pooled.listen({ host: '127.0.0.1', port: 0 });
      const a = pooled.server.address() as { port: number };
      let out = '';
      const code = await runCtl(['--admin', `127.0.0.1:${a.port}`, '--token', RW_TOKEN, 'pool'], { stdout: (x) => (out += x), stderr: () => undefined, env: {} });
      expect(code).toBe(0);
      expect(out).toContain('backend exchange: 1 idle, 1 lent, 0 dedicated, 0 opening (min idle 2, max 4); 3 client(s) waiting');
      expect(out).toMatch(/^1:40001 +idle +12s$/m);
      expect(out).toMatch(/^2:40002 +lent +-$/m);
    } finally {
      await pooled.close();
    }
  });

  test('rules history, rollback, show; audit; reload-recipients', async () => {
    const v0 = env.store.current().version;
    await ctl(['accepted-domains', 'add', 'rollback.example']);
    const hist = await ctl(['rules', 'history']);
    expect(hist.out).toContain(v0);
    expect(hist.out).toMatch(/^VERSION +TIME +ACTOR/m);
    const rb = await ctl(['rules', 'rollback', v0]);
    expect(rb.code).toBe(0);
    expect(env.store.current().version).toBe(v0);
    expect((await ctl(['rules', 'show'])).out).toContain('relay-networks "');
    const audit = await ctl(['audit', '--limit', '1']);
    expect(audit.out.trim().split('\n')).toHaveLength(2);
    expect(audit.out).toContain('rollback');
    const reload = await ctl(['reload-recipients']);
    expect(reload).toMatchObject({ code: 0, out: 'recipient list reloaded (1 entries)\n' });
  });
});

describe('auth and reachability', () => {
  test('token and address from the environment', async () => {
    const r = await ctl(['bans', 'list'], { token: null, env: { RELAY_GUARD_ADMIN: admin, RELAY_GUARD_ADMIN_TOKEN: RO_TOKEN } });
    expect(r.code).toBe(0);
  });

  test('no token → 401, exit 1', async () => {
    const r = await ctl(['bans', 'list'], { token: null });
    expect(r.code).toBe(1);
    expect(r.err).toContain('401 RG_ERR_ADMIN_UNAUTHORIZED');
  });

  test('read-only token cannot change rules → 403, exit 1', async () => {
    const r = await ctl(['relay-networks', 'add', '10.9.0.0/16'], { token: RO_TOKEN });
    expect(r.code).toBe(1);
    expect(r.err).toContain('403');
    expect(env.store.current().raw.relayNetworks).not.toContain('10.9.0.0/16');
  });

  test('nothing listening → exit 1 with a clear message', async () => {
    const srv = createServer();
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    const port = (srv.address() as { port: number }).port;
    await new Promise<void>((resolve) => srv.close(() => resolve()));
    let err = '';
    const code = await runCtl(['--admin', `127.0.0.1:${port}`, 'bans', 'list'], { stdout: () => undefined, stderr: (s) => (err += s), env: {} });
    expect(code).toBe(1);
    expect(err).toContain('cannot reach the admin API');
  });
});
