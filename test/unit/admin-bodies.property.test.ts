/**
 * Property: no request body, however wrong, makes the admin API answer 5xx (bad input is always a
 * 4xx or a valid answer), and every refusal is our JSON error shape.
 */
import fc from 'fast-check';
import type { FastifyInstance, InjectOptions } from 'fastify';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { buildAdminServer } from '../../src/admin/admin-server.js';
import { SECTION_NAMES } from '../../src/rules/schemas.js';
import { bearer, makeAdminDeps, RW_TOKEN, type AdminTestEnv } from '../helpers/admin-deps.js';

let env: AdminTestEnv;
let app: FastifyInstance;

beforeAll(async () => {
  env = await makeAdminDeps();
  app = await buildAdminServer(env.deps);
  await app.ready();
});

afterAll(async () => {
  await app.close();
  await env.cleanup();
});

const WRITE_ROUTES: { method: 'POST' | 'PUT'; url: string }[] = [
  ...SECTION_NAMES.map((s) => ({ method: 'PUT' as const, url: `/api/v1/rules/${s}` })),
  ...SECTION_NAMES.map((s) => ({ method: 'POST' as const, url: `/api/v1/rules/${s}` })),
  { method: 'PUT', url: '/api/v1/rules/no-such-section' },
  { method: 'POST', url: '/api/v1/rules/no-such-section' },
  { method: 'POST', url: '/api/v1/rules/rollback' },
  { method: 'POST', url: '/api/v1/check' },
  { method: 'POST', url: '/api/v1/bans' },
  { method: 'POST', url: '/api/v1/recipients/reload' },
];

/** Bodies: any JSON, objects with random keys, near-valid shapes with random values, raw text. */
const anyText = fc.string({ unit: 'binary', maxLength: 80 });
const nearValid = fc.oneof(
  fc.record({ value: fc.jsonValue() }),
  fc.record({ value: anyText }),
  fc.record({ value: fc.oneof(fc.ipV4(), fc.ipV6(), fc.domain()) }),
  fc.record({ version: anyText }),
  fc.record({ target: fc.oneof(fc.ipV4(), fc.ipV6()), duration: fc.constantFrom('1s', '1h', '0s'), reason: fc.string({ maxLength: 20 }) }),
  fc.record({ target: anyText, duration: fc.option(anyText, { nil: undefined }), reason: anyText }, { requiredKeys: ['target'] }),
  fc.record(
    { clientIp: fc.oneof(anyText, fc.ipV4(), fc.ipV6()), mailFrom: anyText, rcptTo: anyText, helo: anyText, authUser: anyText, listener: anyText },
    { requiredKeys: ['clientIp', 'mailFrom', 'rcptTo'] },
  ),
  fc.array(anyText, { maxLength: 5 }),
  fc.dictionary(anyText, fc.jsonValue(), { maxKeys: 4 }),
);
const body = fc.oneof(
  fc.jsonValue().map((v) => ({ raw: JSON.stringify(v) ?? 'null' })),
  fc.object().map((v) => ({ raw: JSON.stringify(v) })),
  nearValid.map((v) => ({ raw: JSON.stringify(v) })),
  anyText.map((s) => ({ raw: s })),
);

async function assertNo5xx(opts: InjectOptions): Promise<void> {
  const res = await app.inject(opts);
  expect(res.statusCode, `${opts.method ?? ''} ${String(opts.url)} ${String(opts.payload).slice(0, 200)} → ${res.body.slice(0, 300)}`).toBeLessThan(500);
  if (res.statusCode >= 400) {
    const err = res.json() as { statusCode: number; code: string; message: string };
    expect(err.statusCode).toBe(res.statusCode);
    expect(err.code).toMatch(/^RG_ERR_/);
    expect(typeof err.message).toBe('string');
  }
}

describe('random bodies never yield a 5xx', () => {
  test('POST and PUT routes, JSON and non-JSON bodies', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...WRITE_ROUTES), body, async (route, b) => {
        await assertNo5xx({ method: route.method, url: route.url, headers: { ...bearer(RW_TOKEN), 'content-type': 'application/json' }, payload: b.raw });
      }),
      { numRuns: 400 },
    );
  }, 120_000);

  test('DELETE routes with random URL-encoded values', async () => {
    const urls = [...SECTION_NAMES.map((s) => `/api/v1/rules/${s}/`), '/api/v1/rules/no-such-section/', '/api/v1/bans/', '/api/v1/sessions/'];
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...urls), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 80 }), async (prefix, value) => {
        await assertNo5xx({ method: 'DELETE', url: `${prefix}${encodeURIComponent(value)}`, headers: bearer(RW_TOKEN) });
      }),
      { numRuns: 200 },
    );
  }, 120_000);

  test('the dry run never fails on any address text', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.ipV4(), fc.ipV6()), anyText, anyText, async (ip, from, to) => {
        const res = await app.inject({ method: 'POST', url: '/api/v1/check', headers: bearer(RW_TOKEN), payload: { clientIp: ip, mailFrom: from, rcptTo: to } });
        expect(res.statusCode).toBeLessThan(500);
        if (res.statusCode === 200) expect(['accept', 'reject', 'defer']).toContain((res.json() as { verdict: string }).verdict);
      }),
      { numRuns: 300 },
    );
  }, 120_000);
});
