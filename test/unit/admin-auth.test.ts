import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterEach, describe, expect, test } from 'vitest';
import { assertAdminSafe, buildAdminServer } from '../../src/admin/admin-server.js';
import { AdminTokens, isLoopbackAddress, isPlaceholderToken } from '../../src/admin/admin-tokens.js';
import { DEFAULT_CONFIG } from '../../src/config/schema.js';
import { bearer, ENV_TOKEN, makeAdminDeps, RO_TOKEN, RW_TOKEN, type AdminTestEnv, type AdminTestOptions } from '../helpers/admin-deps.js';

let env: AdminTestEnv | undefined;
let app: FastifyInstance | undefined;

async function start(opts: AdminTestOptions = {}): Promise<{ env: AdminTestEnv; app: FastifyInstance }> {
  env = await makeAdminDeps(opts);
  app = await buildAdminServer(env.deps);
  await app.ready();
  return { env, app };
}

afterEach(async () => {
  await app?.close();
  await env?.cleanup();
  app = undefined;
  env = undefined;
});

describe('bearer tokens', () => {
  const cases = [
    // who may read
    { name: 'no token', headers: {}, method: 'GET', url: '/api/v1/rules', want: 401, challenge: 'Bearer realm="relay-guard"' },
    { name: 'wrong token', headers: bearer('wrong-token-0123456789'), method: 'GET', url: '/api/v1/rules', want: 401, challenge: 'error="invalid_token"' },
    { name: 'wrong scheme', headers: { authorization: `Basic ${RW_TOKEN}` }, method: 'GET', url: '/api/v1/rules', want: 401, challenge: 'error="invalid_token"' },
    { name: 'prefix of a token', headers: bearer(RW_TOKEN.slice(0, -1)), method: 'GET', url: '/api/v1/rules', want: 401 },
    { name: 'token plus a suffix', headers: bearer(`${RW_TOKEN}x`), method: 'GET', url: '/api/v1/rules', want: 401 },
    { name: 'read-only token reads', headers: bearer(RO_TOKEN), method: 'GET', url: '/api/v1/rules', want: 200 },
    { name: 'read-write token reads', headers: bearer(RW_TOKEN), method: 'GET', url: '/api/v1/bans', want: 200 },
    { name: 'scheme is case-insensitive', headers: { authorization: `bearer ${RW_TOKEN}` }, method: 'GET', url: '/api/v1/rules', want: 200 },
    // who may write
    { name: 'read-only token cannot write', headers: bearer(RO_TOKEN), method: 'POST', url: '/api/v1/rules/relay-networks', payload: { value: '198.51.100.0/24' }, want: 403 },
    { name: 'read-only token cannot ban', headers: bearer(RO_TOKEN), method: 'POST', url: '/api/v1/bans', payload: { target: '192.0.2.9', reason: 'x' }, want: 403 },
    { name: 'read-only token may dry-run', headers: bearer(RO_TOKEN), method: 'POST', url: '/api/v1/check', payload: { clientIp: '203.0.113.9', mailFrom: '<>', rcptTo: '<a@far.test>' }, want: 200 },
    { name: 'unauthenticated write is 401, not 400', headers: {}, method: 'PUT', url: '/api/v1/rules/relay-networks', payload: { junk: true }, want: 401 },
    // no auth needed
    { name: 'healthz', headers: {}, method: 'GET', url: '/healthz', want: 200 },
    { name: 'readyz', headers: {}, method: 'GET', url: '/readyz', want: 200 },
    { name: 'metrics', headers: {}, method: 'GET', url: '/metrics', want: 200 },
    { name: 'openapi', headers: {}, method: 'GET', url: '/api/v1/openapi.json', want: 200 },
  ] as const;

  test.each(cases)('$name → $want', async (c) => {
    const { app } = await start();
    const res = await app.inject({ method: c.method, url: c.url, headers: c.headers, ...('payload' in c ? { payload: c.payload } : {}) });
    expect(res.statusCode).toBe(c.want);
    if (c.want === 401) {
      expect(res.headers['www-authenticate']).toMatch(/^Bearer /);
      if ('challenge' in c) expect(res.headers['www-authenticate']).toContain(c.challenge);
      expect(res.json()).toMatchObject({ statusCode: 401, code: 'RG_ERR_ADMIN_UNAUTHORIZED' });
    }
    if (c.want === 403) expect(res.json()).toMatchObject({ statusCode: 403, code: 'RG_ERR_ADMIN_FORBIDDEN' });
  });

  test('the environment token is read-write and changes are attributed to "env"', async () => {
    const { app, env } = await start({ env: { RELAY_GUARD_ADMIN_TOKEN: ENV_TOKEN } });
    const res = await app.inject({ method: 'POST', url: '/api/v1/rules/relay-networks', headers: bearer(ENV_TOKEN), payload: { value: '198.51.100.0/24' } });
    expect(res.statusCode).toBe(200);
    expect(env.store.audit(1)[0]).toMatchObject({ actor: 'env', operation: 'add', section: 'relay-networks' });
  });

  test('changes are attributed to the token id of the file', async () => {
    const { app, env } = await start();
    await app.inject({ method: 'POST', url: '/api/v1/rules/accepted-domains', headers: bearer(RW_TOKEN), payload: { value: 'example.org' } });
    expect(env.store.audit(1)[0]).toMatchObject({ actor: 'ops', section: 'accepted-domains', after: ['example.com', 'validated.example', 'example.org'] });
  });

  test('no token at all on loopback: open, with a startup warning', async () => {
    const { app, env } = await start({ tokenFile: null });
    const res = await app.inject({ method: 'POST', url: '/api/v1/rules/relay-networks', payload: { value: '198.51.100.0/24' } });
    expect(res.statusCode).toBe(200);
    expect(env.logs.some((l) => l['level'] === 40 && String(l['msg']).includes('no token'))).toBe(true);
  });

  test('metrics need a token when metricsAuth is set', async () => {
    const { app } = await start({ admin: { metricsAuth: true } });
    const anon = await app.inject({ method: 'GET', url: '/metrics' });
    expect(anon.statusCode).toBe(401);
    expect(anon.headers['www-authenticate']).toMatch(/^Bearer/);
    const ro = await app.inject({ method: 'GET', url: '/metrics', headers: bearer(RO_TOKEN) });
    expect(ro.statusCode).toBe(200);
  });

  test('a bad token file stops the server from being built', async () => {
    const e = await makeAdminDeps();
    env = e;
    const file = join(e.dir, 'bad-tokens.yaml');
    await writeFile(file, '- id: x\n  token: short\n  scope: rw\n');
    await expect(buildAdminServer({ ...e.deps, config: { ...e.deps.config, admin: { ...e.deps.config.admin, tokenFile: file } } })).rejects.toMatchObject({ code: 'RG_ERR_ADMIN_TOKEN_FILE' });
    // The secret is never echoed.
    await expect(buildAdminServer({ ...e.deps, config: { ...e.deps.config, admin: { ...e.deps.config.admin, tokenFile: file } } })).rejects.not.toThrow(/short/);
  });
});

describe('assertAdminSafe', () => {
  const admin = (address: string, tokenFile?: string) => ({ admin: { ...DEFAULT_CONFIG.admin, address, ...(tokenFile ? { tokenFile } : {}) } });
  const cases = [
    { name: 'loopback without token', address: '127.0.0.1', env: {}, throws: false },
    { name: 'other loopback address', address: '127.0.0.53', env: {}, throws: false },
    { name: 'IPv6 loopback', address: '::1', env: {}, throws: false },
    { name: 'localhost', address: 'localhost', env: {}, throws: false },
    { name: 'any address without token', address: '0.0.0.0', env: {}, throws: true },
    { name: 'IPv6 any without token', address: '::', env: {}, throws: true },
    { name: 'public address without token', address: '192.0.2.10', env: {}, throws: true },
    { name: 'blank env token counts as none', address: '0.0.0.0', env: { RELAY_GUARD_ADMIN_TOKEN: '  ' }, throws: true },
    { name: 'any address with env token', address: '0.0.0.0', env: { RELAY_GUARD_ADMIN_TOKEN: ENV_TOKEN }, throws: false },
  ];
  test.each(cases)('$name', ({ address, env, throws }) => {
    const run = (): void => assertAdminSafe(admin(address), env);
    if (throws) expect(run).toThrow(expect.objectContaining({ code: 'RG_ERR_ADMIN_NO_TOKEN' }));
    else expect(run).not.toThrow();
  });

  test('disabled admin API is always safe', () => {
    expect(() => assertAdminSafe({ admin: { ...DEFAULT_CONFIG.admin, enabled: false, address: '0.0.0.0' } }, {})).not.toThrow();
  });

  test('buildAdminServer refuses a public address without token', async () => {
    const e = await makeAdminDeps({ tokenFile: null, admin: { address: '0.0.0.0' } });
    env = e;
    await expect(buildAdminServer(e.deps)).rejects.toMatchObject({ code: 'RG_ERR_ADMIN_NO_TOKEN' });
  });

  test('isLoopbackAddress', () => {
    expect(['127.0.0.1', '::1', '[::1]', '::ffff:127.0.0.1', 'LOCALHOST'].map(isLoopbackAddress)).toEqual([true, true, true, true, true]);
    expect(['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', 'example.com', ''].map(isLoopbackAddress)).toEqual([false, false, false, false, false, false]);
  });
});

test('AdminTokens.verify finds the identity and rejects everything else', () => {
  const t = AdminTokens.of([{ id: 'a', token: 'aaaaaaaaaaaaaaaa', scope: 'ro' }, { id: 'b', token: 'bbbbbbbbbbbbbbbb', scope: 'rw' }]);
  expect(t.verify('bbbbbbbbbbbbbbbb')).toEqual({ id: 'b', scope: 'rw' });
  expect(t.verify('aaaaaaaaaaaaaaaa')).toEqual({ id: 'a', scope: 'ro' });
  expect(t.verify('')).toBeUndefined();
  expect(t.verify('a'.repeat(10_000))).toBeUndefined();
});

describe('health, metrics, OpenAPI', () => {
  test('healthz', async () => {
    const { app } = await start();
    const res = await app.inject({ method: 'GET', url: '/healthz' });
    expect(res.json()).toEqual({ status: 'ok' });
  });

  test('readyz is 503 with a reason when no backend answers', async () => {
    const { app, env } = await start();
    env.backendUp.value = false;
    const res = await app.inject({ method: 'GET', url: '/readyz' });
    expect(res.statusCode).toBe(503);
    expect(res.json()).toEqual({ status: 'not ready', reasons: ['no backend reachable'] });
  });

  test('readyz treats a throwing backend check as not ready', async () => {
    const e = await makeAdminDeps();
    env = e;
    app = await buildAdminServer({ ...e.deps, checkBackend: async () => Promise.reject(new Error('boom')) });
    const res = await app.inject({ method: 'GET', url: '/readyz' });
    expect(res.statusCode).toBe(503);
  });

  test('metrics: prom-client text with its content type, counting rule changes', async () => {
    const { app } = await start();
    await app.inject({ method: 'POST', url: '/api/v1/rules/relay-networks', headers: bearer(RW_TOKEN), payload: { value: '198.51.100.0/24' } });
    const res = await app.inject({ method: 'GET', url: '/metrics' });
    expect(res.headers['content-type']).toContain('text/plain');
    expect(res.body).toContain('relay_guard_rules_changes_total{section="relay-networks",operation="add"} 1');
  });

  test('OpenAPI document lists the routes with their body schemas', async () => {
    const { app } = await start();
    const doc = (await app.inject({ method: 'GET', url: '/api/v1/openapi.json' })).json() as {
      openapi: string;
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: unknown }> } }>>;
    };
    expect(doc.openapi).toMatch(/^3\./);
    for (const p of ['/api/v1/rules', '/api/v1/rules/relay-networks', '/api/v1/check', '/api/v1/bans', '/api/v1/bans/{target}', '/api/v1/sessions/{id}', '/api/v1/rules/rollback', '/api/v1/audit', '/healthz', '/readyz']) {
      expect(doc.paths, p).toHaveProperty([p]);
    }
    const checkBody = doc.paths['/api/v1/check']?.['post']?.requestBody?.content['application/json']?.schema as { required?: string[] };
    expect(checkBody.required).toEqual(expect.arrayContaining(['clientIp', 'mailFrom', 'rcptTo']));
    expect(doc.paths['/api/v1/rules/relay-networks']?.['put']?.requestBody).toBeDefined();
    // Catch-all routes are not documented.
    expect(doc.paths).not.toHaveProperty(['/api/v1/rules/{section}']);
  });
});

describe('placeholder tokens are refused (issue 17: an example Secret must never become the token)', () => {
  const admin = (address: string, tokenFile?: string) => ({ admin: { ...DEFAULT_CONFIG.admin, address, ...(tokenFile ? { tokenFile } : {}) } });
  test.each([
    'replace-me-with-openssl-rand-hex-32',
    'demo-admin-token-change-me',
    '  replace-me-with-openssl-rand-hex-32\n',
    'CHANGEME',
    'please_replace_me_0123456789',
    'changeit',
  ])('RELAY_GUARD_ADMIN_TOKEN=%j is refused on any address, loopback included', (token) => {
    for (const address of ['0.0.0.0', '127.0.0.1']) {
      expect(() => assertAdminSafe(admin(address), { RELAY_GUARD_ADMIN_TOKEN: token })).toThrow(
        expect.objectContaining({ code: 'RG_ERR_ADMIN_PLACEHOLDER_TOKEN', message: expect.stringMatching(/^RELAY_GUARD_ADMIN_TOKEN is an example placeholder, not a secret: set a generated token/) }),
      );
    }
  });

  test.each([ENV_TOKEN, '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08', 'replacement-policy-token-7f3a9c1e', 'exchangemeister-0123456789abcdef'])('a real token %j is accepted', (token) => {
    expect(isPlaceholderToken(token)).toBe(false);
    expect(() => assertAdminSafe(admin('0.0.0.0'), { RELAY_GUARD_ADMIN_TOKEN: token })).not.toThrow();
  });

  test('a placeholder in the token file is refused, naming the entry but not echoing the value', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rg-placeholder-'));
    try {
      const file = join(dir, 'tokens.yaml');
      await writeFile(file, '- id: ops\n  token: replace-me-with-openssl-rand-hex-32\n  scope: rw\n');
      const run = (): void => assertAdminSafe(admin('0.0.0.0', file), {});
      expect(run).toThrow(expect.objectContaining({ code: 'RG_ERR_ADMIN_PLACEHOLDER_TOKEN', message: expect.stringContaining('"ops"') }));
      expect(run).not.toThrow(/rand-hex/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
