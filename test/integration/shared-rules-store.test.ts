/**
 * SharedRulesStore on its own (one process, a real redis-server or none): where a guard's rules come
 * from when Redis cannot be reached at start, and what a write, a reload and the fleet view answer
 * meanwhile. The fleet behaviour across processes is in fleet-rules-store.test.ts.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { createMetrics, type Metrics } from '../../src/observability/metrics.js';
import type { MinimalLogger } from '../../src/rules/rules-store.js';
import { SharedRulesStore } from '../../src/rules/shared-rules-store.js';
import { freePort } from '../helpers/free-port.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';

type Line = { level: string; o: Record<string, unknown>; m: string };
const logger = (lines: Line[]): MinimalLogger => ({
  info: (o, m) => void lines.push({ level: 'info', o: o as Record<string, unknown>, m }),
  warn: (o, m) => void lines.push({ level: 'warn', o: o as Record<string, unknown>, m }),
  error: (o, m) => void lines.push({ level: 'error', o: o as Record<string, unknown>, m }),
});

let dir: string;
let lines: Line[];
let metrics: Metrics;
let registry: Registry;
const open: SharedRulesStore[] = [];
let redis: RedisServer | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rg-shared-'));
  lines = [];
  registry = new Registry();
  metrics = createMetrics(registry);
  await writeFile(join(dir, 'accepted-domains.yaml'), '- example.com\n');
  await writeFile(join(dir, 'relay-networks.yaml'), '- 198.51.100.0/24\n');
});

afterEach(async () => {
  for (const s of open.splice(0)) await s.close();
  await redis?.stop();
  redis = undefined;
  await rm(dir, { recursive: true, force: true });
});

async function start(url: string): Promise<SharedRulesStore> {
  const s = await SharedRulesStore.open({ url, guardName: 'g1', rulesDir: dir, cacheFile: join(dir, 'cache.json'), log: logger(lines), metrics, startTimeoutMs: 500 });
  open.push(s);
  return s;
}

async function gauge(name: string): Promise<number | undefined> {
  return (await registry.getSingleMetric(name)?.get())?.values[0]?.value;
}

describe('Redis unreachable at start', () => {
  test('no copy yet: the rules directory; writes and reloads answer 503 with the reason; the gauge and the fleet view say so', async () => {
    const s = await start(`redis://127.0.0.1:${await freePort()}`);
    expect(s.current().raw.relayNetworks).toEqual(['198.51.100.0/24']);
    expect(lines.some((l) => l.m.startsWith('rules store unreachable at start') && l.o['source'] === 'rules-dir')).toBe(true);
    const w = await s.addItem('relay-networks', '192.0.2.0/24', { actor: 'test' });
    expect(w).toMatchObject({ ok: false, status: 503, code: 'RG_ERR_RULES_STORE_UNAVAILABLE' });
    expect(w.ok ? '' : w.message).toMatch(/unreachable.*rules in force are kept/);
    expect((await s.reload('SIGHUP')).ok).toBe(false);
    await expect(s.history()).rejects.toMatchObject({ statusCode: 503, code: 'RG_ERR_RULES_STORE_UNAVAILABLE' });
    expect(await gauge('relay_guard_rules_store_up')).toBe(0);
    expect(await s.fleet()).toMatchObject({ shared: true, store: { up: false }, guards: [{ name: 'g1', self: true, storeUp: false }] });
  });

  test('a damaged last-known-good copy is refused (logged) and the rules directory is used', async () => {
    await writeFile(join(dir, 'cache.json'), '{"v":1,"rev":3,"version":"x","raw":{}}\n');
    const s = await start(`redis://127.0.0.1:${await freePort()}`);
    expect(s.current().raw.relayNetworks).toEqual(['198.51.100.0/24']);
    expect(lines.some((l) => l.level === 'error' && l.m.startsWith('last-known-good rules copy refused'))).toBe(true);
  });

  test('the copy written while Redis answered is the one a later start uses, and the store is seeded once', async () => {
    redis = await startRedisServer();
    const first = await start(redis.url);
    expect((await first.addItem('relay-networks', '192.0.2.0/24', { actor: 'test' })).ok).toBe(true);
    const versions = await first.history();
    expect(versions.map((v) => v.operation)).toEqual(['add', 'seed']);
    await first.close();
    open.splice(0);
    await redis.stop();
    const again = await start(redis.url);
    expect(again.current().raw.relayNetworks).toEqual(['198.51.100.0/24', '192.0.2.0/24']);
    expect(lines.some((l) => l.m.startsWith('rules store unreachable at start') && l.o['source'] === 'last-known-good')).toBe(true);
  });
});
