import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance, InjectOptions } from 'fastify';
import { parse as parseYaml } from 'yaml';
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

function call(method: InjectOptions['method'], url: string, payload?: unknown, headers: Record<string, string> = {}) {
  return app.inject({ method, url, headers: { ...bearer(RW_TOKEN), ...headers }, ...(payload === undefined ? {} : { payload: payload as InjectOptions['payload'] }) });
}

async function fileValue(name: string): Promise<unknown> {
  return parseYaml(await readFile(join(env.dir, name), 'utf8'));
}

describe('GET rules', () => {
  test('every section with its ETag', async () => {
    const res = await call('GET', '/api/v1/rules');
    expect(res.statusCode).toBe(200);
    const body = res.json() as { version: string; sections: Record<string, { value: unknown; etag: string }> };
    expect(body.version).toBe(env.store.current().version);
    expect(Object.keys(body.sections).sort()).toEqual(
      ['accepted-domains', 'limits', 'never-relay-networks', 'policy', 'recipient-validation', 'relay-networks', 'senders'],
    );
    expect(body.sections['relay-networks']).toEqual({ value: ['192.0.2.0/24'], etag: env.store.getSection('relay-networks').etag });
  });

  test('one section: value and ETag header', async () => {
    const res = await call('GET', '/api/v1/rules/accepted-domains');
    expect(res.statusCode).toBe(200);
    expect(res.headers.etag).toBe(env.store.getSection('accepted-domains').etag);
    expect(res.json()).toMatchObject({ section: 'accepted-domains', value: ['example.com', 'validated.example'] });
  });

  test('unknown section → 404 for every method', async () => {
    for (const [method, url, body] of [
      ['GET', '/api/v1/rules/open-relay'],
      ['PUT', '/api/v1/rules/open-relay', []],
      ['POST', '/api/v1/rules/open-relay', { value: 'x' }],
      ['DELETE', '/api/v1/rules/open-relay/x'],
      ['DELETE', '/api/v1/rules/history/x'],
    ] as const) {
      const res = await call(method, url, body);
      expect(res.statusCode, `${method} ${url}`).toBe(404);
      expect(res.json()).toMatchObject({ code: 'RG_ERR_ADMIN_UNKNOWN_SECTION' });
    }
  });
});

describe('PUT a whole section', () => {
  test('replaces the snapshot and the file, returns the new ETag', async () => {
    const before = env.store.current();
    const res = await call('PUT', '/api/v1/rules/relay-networks', ['192.0.2.0/24', '198.51.100.0/24']);
    expect(res.statusCode).toBe(200);
    const body = res.json() as { etag: string; version: string; value: unknown };
    expect(res.headers.etag).toBe(body.etag);
    expect(body.value).toEqual(['192.0.2.0/24', '198.51.100.0/24']);
    expect(body.etag).not.toBe(before.raw.relayNetworks);
    expect(env.store.current().version).toBe(body.version);
    expect(env.store.current().raw.relayNetworks).toEqual(['192.0.2.0/24', '198.51.100.0/24']);
    expect(env.store.current().relayNetworks.containsText('198.51.100.7')).toBe(true);
    expect(await fileValue('relay-networks.yaml')).toEqual(['192.0.2.0/24', '198.51.100.0/24']);
  });

  test('an object section (policy)', async () => {
    const res = await call('PUT', '/api/v1/rules/policy', { antiSpoofing: true });
    expect(res.statusCode).toBe(200);
    expect(env.store.current().antiSpoofing).toBe(true);
    expect(await fileValue('policy.yaml')).toEqual({ antiSpoofing: true });
  });

  test('If-Match with the current ETag succeeds, a stale one gets 412 and changes nothing', async () => {
    const etag = (await call('GET', '/api/v1/rules/relay-networks')).headers.etag as string;
    const ok = await call('PUT', '/api/v1/rules/relay-networks', ['10.1.0.0/16'], { 'if-match': etag });
    expect(ok.statusCode).toBe(200);
    const stale = await call('PUT', '/api/v1/rules/relay-networks', ['10.2.0.0/16'], { 'if-match': etag });
    expect(stale.statusCode).toBe(412);
    expect(stale.json()).toMatchObject({ statusCode: 412, code: 'RG_ERR_RULES_PRECONDITION_FAILED' });
    expect(env.store.current().raw.relayNetworks).toEqual(['10.1.0.0/16']);
    expect(await fileValue('relay-networks.yaml')).toEqual(['10.1.0.0/16']);
  });

  test('two writers with the same ETag: one 200, one 412, nothing lost', async () => {
    const etag = (await call('GET', '/api/v1/rules/accepted-domains')).headers.etag as string;
    const [a, b] = await Promise.all([
      call('PUT', '/api/v1/rules/accepted-domains', ['example.com', 'validated.example', 'a.example'], { 'if-match': etag }),
      call('PUT', '/api/v1/rules/accepted-domains', ['example.com', 'validated.example', 'b.example'], { 'if-match': etag }),
    ]);
    expect([a.statusCode, b.statusCode].sort()).toEqual([200, 412]);
    const winner = a.statusCode === 200 ? a : b;
    const loserDomain = a.statusCode === 200 ? 'b.example' : 'a.example';
    const won = (winner.json() as { value: string[] }).value;
    expect(env.store.current().raw.acceptedDomains).toEqual(won);
    expect(await fileValue('accepted-domains.yaml')).toEqual(won);
    // The loser re-reads and retries: both changes are in.
    const fresh = await call('GET', '/api/v1/rules/accepted-domains');
    expect((fresh.json() as { value: string[] }).value).not.toContain(loserDomain);
    const merged = [...(fresh.json() as { value: string[] }).value, loserDomain];
    const retry = await call('PUT', '/api/v1/rules/accepted-domains', merged, { 'if-match': fresh.headers.etag as string });
    expect(retry.statusCode).toBe(200);
    expect(env.store.current().raw.acceptedDomains).toEqual(expect.arrayContaining(['a.example', 'b.example']));
  });

  test('concurrent adds without If-Match are all kept (the store serialises writes)', async () => {
    const nets = Array.from({ length: 8 }, (_, i) => `10.${i}.0.0/16`);
    const res = await Promise.all(nets.map((n) => call('POST', '/api/v1/rules/relay-networks', { value: n })));
    expect(res.map((r) => r.statusCode)).toEqual(nets.map(() => 200));
    expect(env.store.current().raw.relayNetworks).toEqual(expect.arrayContaining(nets));
    expect(await fileValue('relay-networks.yaml')).toEqual(expect.arrayContaining(nets));
  });

  const invalid = [
    // schema (Fastify + TypeBox): the message names the field
    { name: 'not a list', section: 'relay-networks', body: { net: '10.0.0.0/8' }, field: 'body' },
    { name: 'bad CIDR characters', section: 'relay-networks', body: ['10.0.0.0/8', 'ten/8'], field: 'body/1' },
    { name: 'number instead of string', section: 'accepted-domains', body: [42], field: 'body/0' },
    { name: 'unknown key in an object section', section: 'policy', body: { antiSpoofing: true, openRelay: true }, field: "'openRelay'" },
    { name: 'wrong type in an object section', section: 'policy', body: { antiSpoofing: 'yes' }, field: 'body/antiSpoofing' },
    { name: 'sender rule without action', section: 'senders', body: [{ id: 'x', match: ['@spam.test'] }], field: "'action'" },
    { name: 'null body', section: 'senders', body: null, field: 'body' },
    // meaning (compileRules): the open-relay guard
    { name: 'relay network 0.0.0.0/0', section: 'relay-networks', body: ['0.0.0.0/0'], field: 'relay-networks' },
    { name: 'relay network 6to4 2002::/16', section: 'relay-networks', body: ['10.0.0.0/8', '2002::/16'], field: 'relay-networks' },
    { name: 'relay network Teredo 2001::/32', section: 'relay-networks', body: ['2001::/32'], field: 'relay-networks' },
    { name: 'relay network NAT64 64:ff9b::/96', section: 'relay-networks', body: ['64:ff9b::/96'], field: 'relay-networks' },
    { name: 'wildcard accepted domain', section: 'accepted-domains', body: ['*'], field: 'accepted-domains' },
  ];
  test.each(invalid)('400 for $name, naming $field, nothing changed', async ({ section, body, field }) => {
    const before = env.store.current().version;
    const fileBefore = await readFile(join(env.dir, `${section}.yaml`), 'utf8').catch(() => null);
    const res = await call('PUT', `/api/v1/rules/${section}`, body === null ? 'null' : body, { 'content-type': 'application/json' });
    expect(res.statusCode).toBe(400);
    const err = res.json() as { statusCode: number; code: string; message: string };
    expect(err.statusCode).toBe(400);
    expect(err.code).toMatch(/^RG_ERR_/);
    expect(err.message).toContain(field);
    expect(env.store.current().version).toBe(before);
    expect(await readFile(join(env.dir, `${section}.yaml`), 'utf8').catch(() => null)).toBe(fileBefore);
  });

  test('invalid JSON → 400', async () => {
    const res = await call('PUT', '/api/v1/rules/relay-networks', '["10.0.0.0/8"', { 'content-type': 'application/json' });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({ code: 'RG_ERR_ADMIN_BAD_JSON' });
  });

  test('a body that is not JSON → 400 or 415; prototype poisoning → 400', async () => {
    const text = await call('PUT', '/api/v1/rules/relay-networks', '10.0.0.0/8', { 'content-type': 'text/plain' });
    expect(text.statusCode).toBe(400);
    expect(text.json()).toMatchObject({ code: 'RG_ERR_ADMIN_VALIDATION', message: 'body must be array' });
    const xml = await call('PUT', '/api/v1/rules/relay-networks', '<nets/>', { 'content-type': 'application/xml' });
    expect(xml.statusCode).toBe(415);
    expect(xml.json()).toMatchObject({ code: 'RG_ERR_ADMIN_UNSUPPORTED_MEDIA_TYPE' });
    const proto = await call('PUT', '/api/v1/rules/policy', '{"__proto__":{"antiSpoofing":true}}', { 'content-type': 'application/json' });
    expect(proto.statusCode).toBe(400);
    expect(env.store.current().antiSpoofing).toBe(false);
  });

  test('a body over 1 MiB → 413', async () => {
    const res = await call('PUT', '/api/v1/rules/accepted-domains', JSON.stringify(['a'.repeat(1024 * 1024)]), { 'content-type': 'application/json' });
    expect(res.statusCode).toBe(413);
  });
});

describe('POST and DELETE one item', () => {
  test('add a relay network: snapshot, file, ETag; adding it again is idempotent', async () => {
    const res = await call('POST', '/api/v1/rules/relay-networks', { value: '198.51.100.0/24' });
    expect(res.statusCode).toBe(200);
    expect(res.headers.etag).toBe(env.store.getSection('relay-networks').etag);
    expect(env.store.current().relayNetworks.containsText('198.51.100.9')).toBe(true);
    expect(await fileValue('relay-networks.yaml')).toEqual(['192.0.2.0/24', '198.51.100.0/24']);
    const again = await call('POST', '/api/v1/rules/relay-networks', { value: '198.51.100.0/24' });
    expect(again.statusCode).toBe(200);
    expect(env.store.current().raw.relayNetworks).toEqual(['192.0.2.0/24', '198.51.100.0/24']);
  });

  test('add honours If-Match', async () => {
    const res = await call('POST', '/api/v1/rules/accepted-domains', { value: 'example.org' }, { 'if-match': '"stale"' });
    expect(res.statusCode).toBe(412);
    expect(env.store.current().raw.acceptedDomains).not.toContain('example.org');
  });

  test('a sender rule with an existing id but other content → 409', async () => {
    const rule = { id: 'spam', match: ['@spam.test'], action: 'reject' };
    expect((await call('POST', '/api/v1/rules/senders', { value: rule })).statusCode).toBe(200);
    const clash = await call('POST', '/api/v1/rules/senders', { value: { ...rule, action: 'defer' } });
    expect(clash.statusCode).toBe(409);
    expect(clash.json()).toMatchObject({ code: 'RG_ERR_RULES_DUPLICATE_ID' });
  });

  test.each([
    { name: 'missing value', body: {}, field: "'value'" },
    { name: 'extra key', body: { value: '10.0.0.0/8', comment: 'x' }, field: "'comment'" },
    { name: 'value of the wrong type', body: { value: ['10.0.0.0/8'] }, field: 'body/value' },
    { name: 'value with bad characters', body: { value: 'ten.0.0.0/8' }, field: 'body/value' },
  ])('400 for $name', async ({ body, field }) => {
    const res = await call('POST', '/api/v1/rules/relay-networks', body);
    expect(res.statusCode).toBe(400);
    expect((res.json() as { message: string }).message).toContain(field);
  });

  test('a list item the compiler refuses → 400 naming the section', async () => {
    const res = await call('POST', '/api/v1/rules/relay-networks', { value: '0.0.0.0/0' });
    expect(res.statusCode).toBe(400);
    expect((res.json() as { message: string }).message).toContain('relay-networks');
  });

  test.each(['2002::/16', '::ffff:0:0/96', '64:ff9b::/96', '2001::/32', '2001::/16', '::/0', '::/64'])(
    'POST relay network %s (an IPv6 transition prefix or a supernet of one) → 400 RG_ERR_RULES_OPEN_RELAY, nothing changed',
    async (value) => {
      const before = env.store.current().version;
      const res = await call('POST', '/api/v1/rules/relay-networks', { value });
      expect(res.statusCode).toBe(400);
      expect(res.json()).toMatchObject({ code: 'RG_ERR_RULES_OPEN_RELAY' });
      expect(env.store.current().version).toBe(before);
    },
  );

  test('POST or DELETE on an object section → 400', async () => {
    expect((await call('POST', '/api/v1/rules/policy', { value: 1 })).statusCode).toBe(400);
    const del = await call('DELETE', '/api/v1/rules/limits/x');
    expect(del.statusCode).toBe(400);
    expect(del.json()).toMatchObject({ code: 'RG_ERR_ADMIN_NOT_A_LIST' });
  });

  test('DELETE a URL-encoded network: gone from snapshot and file', async () => {
    const res = await call('DELETE', `/api/v1/rules/relay-networks/${encodeURIComponent('192.0.2.0/24')}`);
    expect(res.statusCode).toBe(200);
    expect(res.headers.etag).toBe(env.store.getSection('relay-networks').etag);
    expect(env.store.current().raw.relayNetworks).toEqual([]);
    expect(await fileValue('relay-networks.yaml')).toEqual([]);
  });

  test('DELETE a sender rule by id', async () => {
    await call('POST', '/api/v1/rules/senders', { value: { id: 'spam', match: ['@spam.test'], action: 'reject' } });
    expect((await call('DELETE', '/api/v1/rules/senders/spam')).statusCode).toBe(200);
    expect(env.store.current().raw.senders).toEqual([]);
  });

  test('DELETE an absent item → 404', async () => {
    const res = await call('DELETE', `/api/v1/rules/accepted-domains/${encodeURIComponent('nowhere.example')}`);
    expect(res.statusCode).toBe(404);
    expect(res.json()).toMatchObject({ statusCode: 404, code: 'RG_ERR_RULES_ITEM_NOT_FOUND' });
  });
});

describe('history, rollback, audit', () => {
  test('a change appears in history; rollback restores the old rules and file', async () => {
    const v0 = env.store.current().version;
    await call('POST', '/api/v1/rules/relay-networks', { value: '198.51.100.0/24' });
    const hist = await call('GET', '/api/v1/rules/history');
    expect(hist.statusCode).toBe(200);
    const versions = (hist.json() as { versions: { id: string; actor: string; operation: string }[] }).versions;
    expect(versions[0]).toMatchObject({ id: env.store.current().version, actor: 'ops', operation: 'add' });
    expect(versions.map((v) => v.id)).toContain(v0);

    const rb = await call('POST', '/api/v1/rules/rollback', { version: v0 });
    expect(rb.statusCode).toBe(200);
    expect((rb.json() as { version: string }).version).toBe(v0);
    expect(env.store.current().version).toBe(v0);
    expect(await fileValue('relay-networks.yaml')).toEqual(['192.0.2.0/24']);
  });

  test('rollback to an unknown version → 404; a malformed one → 400', async () => {
    expect((await call('POST', '/api/v1/rules/rollback', { version: 'abcdef0123456789' })).statusCode).toBe(404);
    const bad = await call('POST', '/api/v1/rules/rollback', { version: '../etc' });
    expect(bad.statusCode).toBe(400);
    expect((bad.json() as { message: string }).message).toContain('body/version');
  });

  test('POST /rules/reload picks up a hand edit; an invalid file → 400 naming file and line, rules in force unchanged', async () => {
    const { writeFile } = await import('node:fs/promises');
    const before = env.store.current().version;
    await writeFile(join(env.dir, 'accepted-domains.yaml'), '- example.com\n- hand-edited.example\n');
    const ok = await call('POST', '/api/v1/rules/reload');
    expect(ok.statusCode).toBe(200);
    const v1 = (ok.json() as { version: string }).version;
    expect(v1).not.toBe(before);
    expect(env.store.getSection('accepted-domains').value).toContain('hand-edited.example');
    expect(env.store.audit(1)[0]).toMatchObject({ operation: 'reload', section: 'accepted-domains' });

    await writeFile(join(env.dir, 'accepted-domains.yaml'), '- example.com\n- [unterminated\n');
    const bad = await call('POST', '/api/v1/rules/reload');
    expect(bad.statusCode).toBe(400);
    const body = bad.json() as { code: string; errors: Array<{ file?: string; line?: number }> };
    expect(body.code).toBe('RG_ERR_RULES_INVALID');
    expect(body.errors[0]?.file).toContain('accepted-domains.yaml');
    expect(body.errors[0]?.line).toBeGreaterThanOrEqual(2);
    expect(env.store.current().version).toBe(v1);
    expect(env.store.getSection('accepted-domains').value).toContain('hand-edited.example');
  });

  test('audit: newest first, limited, with before and after', async () => {
    await call('POST', '/api/v1/rules/accepted-domains', { value: 'one.example' });
    await call('POST', '/api/v1/rules/accepted-domains', { value: 'two.example' });
    const res = await call('GET', '/api/v1/audit?limit=1');
    expect(res.statusCode).toBe(200);
    const entries = (res.json() as { entries: { actor: string; after: string[]; before: string[] }[] }).entries;
    expect(entries).toHaveLength(1);
    expect(entries[0]?.after).toContain('two.example');
    expect(entries[0]?.before).not.toContain('two.example');
    expect(entries[0]?.actor).toBe('ops');
    expect((await call('GET', '/api/v1/audit')).json()).toMatchObject({ entries: [{}, {}] });
    expect((await call('GET', '/api/v1/audit?limit=ten')).statusCode).toBe(400);
  });
});
