/**
 * Bans shared by several guards on one private redis-server (limits.store: redis, ban-sync.ts):
 * a ban made on one guard (admin API or rate limiter) is enforced by every guard within about a
 * second, a lift likewise, a guard started later knows the bans in force, a lift made while a
 * guard was down is not brought back from its bans file, hostile Redis data is ignored, and a
 * Redis outage changes nothing locally (resync when it is back).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { Ban } from '../../src/limits/bans.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';
import { Dialog } from '../helpers/dialog.js';

const TOKEN = 'ban-sync-test-token-0123456789abcdef';
/** "Within about a second": the bound every propagation is asserted against. */
const PROPAGATION_MS = 1_500;
const limits = {
  enabled: true,
  prefixV4: 24,
  prefixV6: 64,
  limits: [{ id: 'relay-denied-per-ip', event: 'relay-denied', key: 'ip', limit: 2, window: '10m', action: 'ban', ban: '1h' }],
};

let redis: RedisServer;
let backend: RecordingBackend;
let raw: Redis;
let a: StartedGuard;
let b: StartedGuard;
const extra: StartedGuard[] = [];
const tmpDirs: string[] = [];

async function startOne(config: Record<string, unknown> = {}): Promise<StartedGuard> {
  return startGuard({
    backendPort: backend.port,
    rules: { limits },
    env: { RELAY_GUARD_ADMIN_TOKEN: TOKEN },
    config: {
      timeouts: { drain: '1s' },
      admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false },
      limits: { store: 'redis', redisUrl: redis.url, maxEntries: 1000, ...config },
    },
  });
}

async function api(g: StartedGuard, method: string, route: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const addr = g.guard.adminAddress();
  if (!addr) throw new Error('admin not listening');
  const res = await fetch(`http://${addr.host}:${addr.port}/api/v1${route}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, json: await res.json() };
}

async function bansOf(g: StartedGuard): Promise<Ban[]> {
  const r = await api(g, 'GET', '/bans');
  expect(r.status).toBe(200);
  return (r.json as { bans: Ban[] }).bans;
}

/** Poll the guard's admin GET /bans until `cond` holds (bounded); returns the time it took. */
async function untilBans(g: StartedGuard, cond: (bans: Ban[]) => boolean, what: string, ms = PROPAGATION_MS): Promise<number> {
  const started = Date.now();
  for (let i = 0; ; i++) {
    if (cond(await bansOf(g))) return Date.now() - started;
    if (Date.now() - started > ms) throw new Error(`timed out after ${ms} ms (${i} polls) waiting for ${what}: ${JSON.stringify(await bansOf(g))}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
const has = (target: string) => (bans: Ban[]) => bans.some((x) => x.target === target);
const lacks = (target: string) => (bans: Ban[]) => !bans.some((x) => x.target === target);

/** Connect from `from`; the greeting's code (554 for a banned client, then the guard closes). */
async function greetingFrom(g: StartedGuard, from: string): Promise<number> {
  const d = await Dialog.connect(g.port, { localAddress: from });
  try {
    const r = await d.reply();
    if (r.code === 554) {
      expect(r.text).toContain('5.7.1');
      await d.waitClosed();
    }
    return r.code;
  } finally {
    d.close();
  }
}

async function errorsOf(g: StartedGuard): Promise<number> {
  return (await g.guard.metrics.limitStoreErrors.get()).values.find((v) => v.labels.store === 'redis')?.value ?? 0;
}

beforeAll(async () => {
  redis = await startRedisServer();
  backend = await startRecordingBackend();
  raw = new Redis(redis.url, { maxRetriesPerRequest: 1 });
  raw.on('error', () => undefined); // the outage test stops the server
  a = await startOne();
  b = await startOne();
});

afterAll(async () => {
  for (const g of [a, b, ...extra]) await g?.stop();
  raw?.disconnect();
  await backend?.close();
  await redis?.stop();
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

describe('bans shared through Redis', () => {
  test('a manual ban on guard A is enforced by guard B within a second; a lift on B frees the client on A', async () => {
    expect(await greetingFrom(b, '127.0.0.31')).toBe(220);
    const added = await api(a, 'POST', '/bans', { target: '127.0.0.31', duration: '1h', reason: 'incident 42' });
    expect(added.status).toBe(200);
    const took = await untilBans(b, has('127.0.0.31'), 'the ban on guard B');
    expect(took).toBeLessThan(PROPAGATION_MS);
    expect((await bansOf(b)).find((x) => x.target === '127.0.0.31')).toMatchObject({ source: 'manual', reason: 'incident 42' });
    expect(await greetingFrom(b, '127.0.0.31')).toBe(554);
    expect(await greetingFrom(a, '127.0.0.31')).toBe(554);
    // Its neighbour is still served by both.
    expect(await greetingFrom(b, '127.0.0.32')).toBe(220);
    // The key in Redis carries the time left.
    const ttl = await raw.pttl('relay-guard:ban:127.0.0.31');
    expect(ttl).toBeGreaterThan(3_500_000);
    expect(ttl).toBeLessThanOrEqual(3_600_000);

    const removed = await api(b, 'DELETE', `/bans/${encodeURIComponent('127.0.0.31')}`);
    expect(removed.status).toBe(200);
    await untilBans(a, lacks('127.0.0.31'), 'the lift on guard A');
    expect(await greetingFrom(a, '127.0.0.31')).toBe(220);
    expect(await raw.exists('relay-guard:ban:127.0.0.31')).toBe(0);
    // Each guard logs its own change only once (no echo: B did not re-apply or re-publish A's ban).
    expect(a.logs.filter((l) => l.msg === 'ban added')).toHaveLength(1);
    expect(b.logs.filter((l) => l.msg === 'ban added')).toHaveLength(0);
  });

  test('networks and permanent bans travel too (no expiry in Redis)', async () => {
    expect((await api(b, 'POST', '/bans', { target: '127.0.1.0/24', reason: 'botnet' })).status).toBe(200);
    await untilBans(a, has('127.0.1.0/24'), 'the network ban on guard A');
    expect((await bansOf(a)).find((x) => x.target === '127.0.1.0/24')?.expiresAt).toBeUndefined();
    expect(await raw.pttl('relay-guard:ban:127.0.1.0/24')).toBe(-1);
    expect(await greetingFrom(a, '127.0.1.9')).toBe(554);
    expect((await api(a, 'DELETE', `/bans/${encodeURIComponent('127.0.1.0/24')}`)).status).toBe(200);
    await untilBans(b, lacks('127.0.1.0/24'), 'the network lift on guard B');
    expect(await greetingFrom(b, '127.0.1.9')).toBe(220);
  });

  test('an automatic ban by the rate limiter on guard A shows up on guard B', async () => {
    const d = await Dialog.connect(a.port, { localAddress: '127.0.0.33' });
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO prober.test')).code).toBe(250);
    expect((await d.cmd('MAIL FROM:<probe@sender.test>')).code).toBe(250);
    for (let i = 0; i < 2; i++) expect((await d.cmd(`RCPT TO:<victim${i}@elsewhere.test>`)).code).toBe(550);
    expect((await d.cmd('RCPT TO:<victim9@elsewhere.test>')).code).toBe(421);
    await d.waitClosed();
    await untilBans(b, has('127.0.0.33'), 'the automatic ban on guard B');
    expect((await bansOf(b)).find((x) => x.target === '127.0.0.33')).toMatchObject({ source: 'automatic', reason: 'limit relay-denied-per-ip' });
    expect(await greetingFrom(b, '127.0.0.33')).toBe(554);
  });

  test('a guard started later knows the bans in force; a lift made while it was down is not brought back from its file', async () => {
    expect((await api(a, 'POST', '/bans', { target: '127.0.0.34', reason: 'permanent' })).status).toBe(200);
    await untilBans(b, has('127.0.0.34'), 'the ban on guard B');
    // Lifted on B: Redis keeps a tombstone.
    expect((await api(a, 'POST', '/bans', { target: '127.0.0.35', reason: 'soon lifted' })).status).toBe(200);
    await untilBans(b, has('127.0.0.35'), 'the second ban on guard B');
    expect((await api(b, 'DELETE', `/bans/${encodeURIComponent('127.0.0.35')}`)).status).toBe(200);
    await untilBans(a, lacks('127.0.0.35'), 'the lift on guard A');

    // The new guard's own bans file (written before it was down) still has .35, and .36 made offline.
    const dir = mkdtempSync(path.join(tmpdir(), 'rg-bansfile-'));
    tmpDirs.push(dir);
    const bansFile = path.join(dir, 'bans.yaml');
    writeFileSync(
      bansFile,
      stringify({
        bans: [
          { target: '127.0.0.35', reason: 'old', source: 'manual', createdAt: '2020-01-01T00:00:00.000Z' },
          { target: '127.0.0.36', reason: 'made while offline', source: 'manual', createdAt: new Date().toISOString() },
        ],
      }),
    );
    const c = await startOne({ bansFile });
    extra.push(c);
    // createGuard waited for the first sync: everything is known before the first client.
    const onC = (await bansOf(c)).map((x) => x.target);
    expect(onC).toEqual(expect.arrayContaining(['127.0.0.33', '127.0.0.34', '127.0.0.36']));
    expect(onC).not.toContain('127.0.0.35');
    expect(await greetingFrom(c, '127.0.0.34')).toBe(554);
    expect(await greetingFrom(c, '127.0.0.33')).toBe(554);
    expect(await greetingFrom(c, '127.0.0.35')).toBe(220);
    // The ban C made while offline now reaches the others.
    await untilBans(a, has('127.0.0.36'), 'the offline ban of guard C on guard A');
    expect(await greetingFrom(b, '127.0.0.36')).toBe(554);
  });

  test('hostile or malformed Redis data is ignored: nothing crashes, nothing wide is banned', async () => {
    const future = new Date(Date.now() + 3_600_000).toISOString();
    const entry = (target: string, extraFields: Record<string, unknown> = {}) =>
      JSON.stringify({ target, reason: 'x', source: 'manual', createdAt: new Date().toISOString(), expiresAt: future, ...extraFields });
    await raw.set('relay-guard:ban:0.0.0.0/0', entry('0.0.0.0/0'));
    await raw.set('relay-guard:ban:::/0', entry('::/0'));
    await raw.set('relay-guard:ban:::ffff:0.0.0.0/96', entry('::ffff:0.0.0.0/96'));
    await raw.set('relay-guard:ban:96.0.0.0/3', entry('96.0.0.0/3'));
    await raw.set('relay-guard:ban:127.0.0.40', 'not json {');
    await raw.set('relay-guard:ban:127.0.0.41', entry('127.0.0.0/8')); // key and value disagree
    await raw.set('relay-guard:ban:127.0.0.42', entry('127.0.0.42', { source: 'evil' }));
    await raw.set('relay-guard:ban:127.0.0.43', entry('127.0.0.43', { expiresAt: 'tomorrow' }));
    await raw.set('relay-guard:ban:127.0.0.44', entry('127.0.0.44', { reason: 'x'.repeat(1_000) }));
    await raw.set('relay-guard:ban:127.0.0.39', entry('127.0.0.39', { reason: 'x'.repeat(10_000) })); // over 4 KiB
    await raw.set('relay-guard:ban:127.0.0.45', '[1,2,3]');
    await raw.set('relay-guard:ban:127.0.0.46', 'null');
    await raw.hset('relay-guard:ban:127.0.0.47', 'target', '127.0.0.47'); // wrong type
    const events: unknown[] = [
      'garbage',
      { v: 1, origin: 'evil', op: 'add', ban: JSON.parse(entry('0.0.0.0/0')) as unknown },
      { v: 1, origin: 'evil', op: 'add', ban: JSON.parse(entry('::/1')) as unknown },
      { v: 1, origin: 'evil', op: 'add', ban: { target: { toString: 1 } } },
      { v: 1, origin: 'evil', op: 'add' },
      { v: 1, origin: 'evil', op: 'remove', target: 42 },
      { v: 2, origin: 'evil', op: 'add', ban: JSON.parse(entry('127.0.0.48')) as unknown },
      { v: 1, origin: 'evil', op: 'drop-all' },
      [1, 2],
      null,
    ];
    for (const e of events) await raw.publish('relay-guard:bans', typeof e === 'string' ? e : JSON.stringify(e));
    // A valid marker after them: once it arrives, every hostile event before it was handled (one channel, in order).
    await raw.publish('relay-guard:bans', JSON.stringify({ v: 1, origin: 'other-guard', op: 'add', ban: JSON.parse(entry('127.0.0.49')) as unknown }));
    await untilBans(b, has('127.0.0.49'), 'the marker ban on guard B');
    await untilBans(a, has('127.0.0.49'), 'the marker ban on guard A');

    // A guard started now loads through all the hostile keys.
    const d = await startOne();
    extra.push(d);
    for (const g of [a, b, d]) {
      const targets = (await bansOf(g)).map((x) => x.target);
      for (const bad of ['127.0.0.39', '0.0.0.0/0', '::/0', '::/1', '96.0.0.0/3', '127.0.0.0/8', '127.0.0.40', '127.0.0.41', '127.0.0.42', '127.0.0.43', '127.0.0.45', '127.0.0.46', '127.0.0.47', '127.0.0.48']) {
        expect(targets, `guard has ${bad}`).not.toContain(bad);
      }
      expect(await greetingFrom(g, '127.0.0.50')).toBe(220);
    }
    // A long reason is cut to 200 characters, not refused.
    const long = (await bansOf(d)).find((x) => x.target === '127.0.0.44');
    expect(long?.reason).toBe('x'.repeat(200));
    expect(d.logs.some((l) => l.msg === 'ban sync: ignored a malformed or refused ban from redis')).toBe(true);
  });

  test('Redis down: bans keep working locally, the fault is counted and warned once; back: the ban reaches the other guard', async () => {
    const errorsBefore = await errorsOf(a);
    await redis.stop({ abrupt: true });
    try {
      const started = Date.now();
      expect((await api(a, 'POST', '/bans', { target: '127.0.0.51', duration: '1h', reason: 'during outage' })).status).toBe(200);
      expect(Date.now() - started).toBeLessThan(1_000);
      expect(await greetingFrom(a, '127.0.0.51')).toBe(554);
      expect(await greetingFrom(a, '127.0.0.52')).toBe(220);
      expect(await errorsOf(a)).toBeGreaterThan(errorsBefore);
    } finally {
      await redis.start();
    }
    // The restarted server is empty (no persistence): the guards' resync refills it, A's outage ban included.
    await untilBans(b, has('127.0.0.51'), 'the outage ban on guard B after Redis returned', 10_000);
    expect(await greetingFrom(b, '127.0.0.51')).toBe(554);
    await until(async () => (await raw.exists('relay-guard:ban:127.0.0.34')) === 1, 10_000, 'the permanent ban back in Redis');
    expect(a.logs.filter((l) => l.msg === 'ban sync: redis unreachable, bans enforced locally until it answers')).toHaveLength(1);
    await until(async () => a.logs.some((l) => l.msg === 'ban sync recovered, bans resynchronised'), 10_000, 'the recovery log line');
  });
});

describe('Redis down when a guard starts', () => {
  test('the guard starts at once with its local bans; when Redis comes up, the ban made meanwhile is written to it', async () => {
    const late = await startRedisServer();
    await late.stop();
    let g: StartedGuard | undefined;
    let probe: Redis | undefined;
    try {
      const started = Date.now();
      g = await startGuard({
        backendPort: backend.port,
        rules: { limits },
        env: { RELAY_GUARD_ADMIN_TOKEN: TOKEN },
        config: {
          timeouts: { drain: '1s' },
          admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false },
          limits: { store: 'redis', redisUrl: late.url, maxEntries: 1000 },
        },
      });
      // A start that waited for Redis would never finish here (it is stopped); the bound only catches a start
      // that sits out connect retries. It is loose because a loaded 2-core CI machine took 5.8 s once.
      expect(Date.now() - started).toBeLessThan(15_000);
      expect(g.logs.filter((l) => l.msg === 'ban sync: redis unreachable, bans enforced locally until it answers')).toHaveLength(1);
      expect((await api(g, 'POST', '/bans', { target: '127.0.0.61', reason: 'offline' })).status).toBe(200);
      expect(await greetingFrom(g, '127.0.0.61')).toBe(554);
      await late.start();
      probe = new Redis(late.url, { maxRetriesPerRequest: 1 });
      probe.on('error', () => undefined);
      const p = probe;
      await until(async () => (await p.exists('relay-guard:ban:127.0.0.61')) === 1, 10_000, 'the offline ban in Redis');
      expect(JSON.parse((await p.get('relay-guard:ban:127.0.0.61')) ?? '{}')).toMatchObject({ target: '127.0.0.61', source: 'manual', reason: 'offline' });
    } finally {
      probe?.disconnect();
      await g?.stop();
      await late.stop();
    }
  });
});

/** Bounded poll of an async condition. */
async function until(cond: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  for (let i = 0; !(await cond()); i++) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms (${i} polls) waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
