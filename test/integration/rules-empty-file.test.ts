/**
 * Issue 16 item 5: a truncated rules file is not a new policy. A 0-byte, whitespace-only or
 * comment-only file is an error naming the file at start and keeps the rules in force on reload
 * (logged and counted like any bad edit); an explicit `[]` stays valid; a vanished file keeps the
 * rules; emptying accepted-domains through the admin API is 409 unless ?force=true. Real files,
 * a real RulesStore, the real admin server, and the real CLI process for the start case.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { buildAdminServer } from '../../src/admin/admin-server.js';
import { createMetrics, type Metrics } from '../../src/observability/metrics.js';
import { RulesLoadError, RulesStore, type MinimalLogger } from '../../src/rules/rules-store.js';
import { bearer, makeAdminDeps, RW_TOKEN } from '../helpers/admin-deps.js';
import { withTimeout } from '../helpers/with-timeout.js';

type LogLine = { level: string; o: Record<string, unknown>; m: string };
const memoryLogger = (lines: LogLine[]): MinimalLogger => ({
  info: (o, m) => void lines.push({ level: 'info', o: o as Record<string, unknown>, m }),
  warn: (o, m) => void lines.push({ level: 'warn', o: o as Record<string, unknown>, m }),
  error: (o, m) => void lines.push({ level: 'error', o: o as Record<string, unknown>, m }),
});

let dir: string;
let logs: LogLine[];
let registry: Registry;
let metrics: Metrics;
const stores: RulesStore[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rg-empty-'));
  logs = [];
  registry = new Registry();
  metrics = createMetrics(registry);
  await writeFile(join(dir, 'accepted-domains.yaml'), '- example.com\n');
  await writeFile(join(dir, 'relay-networks.yaml'), '- 198.51.100.0/24\n');
});

afterEach(async () => {
  for (const s of stores.splice(0)) s.close();
  await rm(dir, { recursive: true, force: true });
});

async function open(opts: { watch?: boolean } = {}): Promise<RulesStore> {
  const s = await RulesStore.open(dir, { log: memoryLogger(logs), metrics, ...opts });
  stores.push(s);
  return s;
}

async function reloadErrors(): Promise<number> {
  const m = await registry.getSingleMetric('relay_guard_rules_reloads_total')?.get();
  return m?.values.find((v) => v.labels.result === 'error')?.value ?? 0;
}

// The texts a truncated or emptied edit leaves behind.
const EMPTY_TEXTS = [
  { name: '0 bytes', text: '' },
  { name: 'whitespace only', text: '  \n\t\n\r\n' },
  { name: 'comments only', text: '# Domains this server accepts mail for\n   # (none yet)\n' },
  { name: 'BOM and a newline', text: '\uFEFF\n' },
];

describe('at start', () => {
  test.each(EMPTY_TEXTS)('$name accepted-domains.yaml is an error naming the file', async ({ text }) => {
    await writeFile(join(dir, 'accepted-domains.yaml'), text);
    const err = (await RulesStore.open(dir, { log: memoryLogger(logs), metrics }).catch((e: unknown) => e)) as RulesLoadError;
    expect(err).toBeInstanceOf(RulesLoadError);
    expect(err.code).toBe('RG_ERR_RULES_EMPTY_FILE');
    expect(err.file).toBe(join(dir, 'accepted-domains.yaml'));
    expect(err.message).toContain(join(dir, 'accepted-domains.yaml'));
    expect(err.message).toMatch(/write \[\] for an empty list/);
  });

  test('an empty object section (limits.yaml) is refused too', async () => {
    await writeFile(join(dir, 'limits.yaml'), '# limits\n');
    const err = (await RulesStore.open(dir, { log: memoryLogger(logs), metrics }).catch((e: unknown) => e)) as RulesLoadError;
    expect(err.code).toBe('RG_ERR_RULES_EMPTY_FILE');
    expect(err.file).toBe(join(dir, 'limits.yaml'));
  });

  test('an explicit [] is valid, and a missing file is the default', async () => {
    await writeFile(join(dir, 'relay-networks.yaml'), '# nobody relays\n[]\n');
    const s = await open();
    expect(s.current().raw.relayNetworks).toEqual([]);
    expect(s.current().raw.senders).toEqual([]); // senders.yaml does not exist
  });

  test('the relay-guard process exits 2 and names the empty file', async () => {
    await writeFile(join(dir, 'accepted-domains.yaml'), '');
    const proc = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--listen', '127.0.0.1:0', '--backend', '127.0.0.1:9', '--rules-dir', dir, '--no-admin'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    proc.stderr.on('data', (c: Buffer) => (err += c.toString()));
    proc.stdout.resume();
    const [code] = (await withTimeout(once(proc, 'exit'), 60_000, 'guard exit')) as [number];
    expect(code).toBe(2);
    expect(err).toContain(join(dir, 'accepted-domains.yaml'));
    expect(err).toMatch(/is empty/);
  }, 90_000);
});

describe('on reload', () => {
  test.each(EMPTY_TEXTS)('$name: the rules in force are kept, logged and counted', async ({ text }) => {
    const s = await open();
    const version = s.current().version;
    await writeFile(join(dir, 'accepted-domains.yaml'), text);
    const r = await s.reload('SIGHUP');
    expect(r.ok).toBe(false);
    expect(r.errors?.[0]).toMatchObject({ code: 'RG_ERR_RULES_EMPTY_FILE', file: join(dir, 'accepted-domains.yaml') });
    expect(s.current().version).toBe(version);
    expect(s.current().acceptedDomains.has('example.com')).toBe(true);
    expect(await reloadErrors()).toBe(1);
    expect(logs.find((l) => l.m === 'rules reload failed')?.o).toMatchObject({ code: 'RG_ERR_RULES_EMPTY_FILE', file: join(dir, 'accepted-domains.yaml'), reason: 'SIGHUP' });
    expect(s.audit()).toEqual([]);
  });

  test('the watcher sees a truncation and keeps the rules; a later good edit is applied', async () => {
    const s = await open({ watch: true });
    const version = s.current().version;
    const failed = once(s, 'reloadError');
    await writeFile(join(dir, 'accepted-domains.yaml'), '');
    const [errors] = (await withTimeout(failed, 5000, 'reloadError')) as [Array<{ code: string }>];
    expect(errors[0]?.code).toBe('RG_ERR_RULES_EMPTY_FILE');
    expect(s.current().version).toBe(version);
    const changed = once(s, 'change');
    await writeFile(join(dir, 'accepted-domains.yaml'), '- example.com\n- example.org\n');
    await withTimeout(changed, 5000, 'change');
    expect(s.current().acceptedDomains.has('example.org')).toBe(true);
  });

  test('an explicit [] on reload is applied', async () => {
    const s = await open();
    await writeFile(join(dir, 'relay-networks.yaml'), '[]\n');
    expect((await s.reload('SIGHUP')).ok).toBe(true);
    expect(s.current().raw.relayNetworks).toEqual([]);
  });

  test('a vanished file keeps the rules; writing it back reloads', async () => {
    const s = await open();
    const version = s.current().version;
    await unlink(join(dir, 'accepted-domains.yaml'));
    const r = await s.reload('SIGHUP');
    expect(r.ok).toBe(false);
    expect(r.errors?.[0]).toMatchObject({ code: 'RG_ERR_RULES_FILE_VANISHED', file: join(dir, 'accepted-domains.yaml') });
    expect(s.current().version).toBe(version);
    expect(await reloadErrors()).toBe(1);
    await writeFile(join(dir, 'accepted-domains.yaml'), '- example.com\n- example.net\n');
    expect((await s.reload('SIGHUP')).ok).toBe(true);
    expect(s.current().acceptedDomains.has('example.net')).toBe(true);
  });
});

describe('admin API', () => {
  test('emptying accepted-domains is 409 unless ?force=true; the file keeps its domains', async () => {
    const env = await makeAdminDeps();
    const app = await buildAdminServer(env.deps);
    try {
      const call = (method: 'PUT' | 'DELETE' | 'POST', url: string, payload?: unknown) =>
        app.inject({ method, url, headers: bearer(RW_TOKEN), ...(payload === undefined ? {} : { payload: payload as object }) });
      const put = await call('PUT', '/api/v1/rules/accepted-domains', []);
      expect(put.statusCode).toBe(409);
      expect(put.json()).toMatchObject({ code: 'RG_ERR_RULES_EMPTY_ACCEPTED_DOMAINS' });
      expect(put.json().message).toMatch(/force=true/);
      expect(env.store.current().raw.acceptedDomains).toEqual(['example.com', 'validated.example']);

      expect((await call('DELETE', '/api/v1/rules/accepted-domains/example.com')).statusCode).toBe(200);
      const last = await call('DELETE', '/api/v1/rules/accepted-domains/validated.example');
      expect(last.statusCode).toBe(409);
      expect(env.store.current().acceptedDomains.has('validated.example')).toBe(true);

      const forced = await call('DELETE', '/api/v1/rules/accepted-domains/validated.example?force=true');
      expect(forced.statusCode).toBe(200);
      expect(env.store.current().raw.acceptedDomains).toEqual([]);
      // Emptying relay-networks is an ordinary change.
      expect((await call('PUT', '/api/v1/rules/relay-networks', [])).statusCode).toBe(200);
    } finally {
      await app.close();
      await env.cleanup();
    }
  });
});
