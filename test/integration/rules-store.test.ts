import { once } from 'node:events';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { parse } from 'yaml';
import { createMetrics, type Metrics } from '../../src/observability/metrics.js';
import type { RulesSnapshot } from '../../src/policy/compile.js';
import { evaluateRcpt } from '../../src/policy/relay.js';
import { RulesLoadError, RulesStore, type MinimalLogger } from '../../src/rules/rules-store.js';
import { withTimeout } from '../helpers/with-timeout.js';
import { ctxOf, rcptOf } from '../unit/policy-fixtures.js';

type LogLine = { level: 'info' | 'warn' | 'error'; o: object; m: string };

function memoryLogger(lines: LogLine[]): MinimalLogger {
  return {
    info: (o, m) => void lines.push({ level: 'info', o, m }),
    warn: (o, m) => void lines.push({ level: 'warn', o, m }),
    error: (o, m) => void lines.push({ level: 'error', o, m }),
  };
}

let dir: string;
let logs: LogLine[];
let registry: Registry;
let metrics: Metrics;
const stores: RulesStore[] = [];

async function openStore(opts: { watch?: boolean; historyLimit?: number } = {}): Promise<RulesStore> {
  const s = await RulesStore.open(dir, { log: memoryLogger(logs), metrics, ...opts });
  stores.push(s);
  return s;
}

async function reloadCount(result: 'success' | 'error'): Promise<number> {
  const m = await registry.getSingleMetric('relay_guard_rules_reloads_total')?.get();
  return m?.values.find((v) => v.labels.result === result)?.value ?? 0;
}

const relays = (s: RulesSnapshot, ip: string): boolean => evaluateRcpt(ctxOf({ client: ip }), rcptOf('a@far.test'), s).action === 'accept';

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rg-rules-'));
  logs = [];
  registry = new Registry();
  metrics = createMetrics(registry);
  await writeFile(join(dir, 'accepted-domains.yaml'), '# ours\n- example.com\n- "*.example.net"\n');
  await writeFile(join(dir, 'relay-networks.yaml'), '# trusted\n- 198.51.100.0/24\n- 2001:db8::1\n');
});

afterEach(async () => {
  for (const s of stores.splice(0)) s.close();
  await rm(dir, { recursive: true, force: true });
});

describe('RulesStore load', () => {
  test('loads the files; missing files are empty or default sections', async () => {
    const s = await openStore();
    const snap = s.current();
    expect(snap.raw.acceptedDomains).toEqual(['example.com', '*.example.net']);
    expect(snap.raw.neverRelayNetworks).toEqual([]);
    expect(snap.raw.senders).toEqual([]);
    expect(snap.acceptedDomains.has('x.example.net')).toBe(true);
    expect(relays(snap, '198.51.100.9')).toBe(true);
    expect(relays(snap, '2001:db8::2')).toBe(false);
    expect(s.getSection('relay-networks')).toEqual({ value: ['198.51.100.0/24', '2001:db8::1'], etag: expect.stringMatching(/^"[0-9a-f]{16}"$/) });
    expect(() => s.getSection('nope')).toThrow(/unknown rules section/);
    expect(s.history()).toHaveLength(1);
  });

  test('command-line overlay adds entries to snapshots, never to files or sections', async () => {
    const s = await RulesStore.open(dir, { log: memoryLogger(logs), overlay: { acceptedDomains: ['flag.example'], relayNetworks: ['203.0.113.0/24'] } });
    stores.push(s);
    expect(relays(s.current(), '203.0.113.9')).toBe(true);
    expect(s.current().acceptedDomains.has('flag.example')).toBe(true);
    expect(s.getSection('relay-networks').value).toEqual(['198.51.100.0/24', '2001:db8::1']);
    expect(s.current().raw.relayNetworks).toEqual(['198.51.100.0/24', '2001:db8::1']);
    await s.addItem('relay-networks', '192.0.2.0/24', { actor: 't' });
    expect(relays(s.current(), '203.0.113.9')).toBe(true);
    expect(parse(await readFile(join(dir, 'relay-networks.yaml'), 'utf8'))).toEqual(['198.51.100.0/24', '2001:db8::1', '192.0.2.0/24']);
    const bad = (await RulesStore.open(dir, { log: memoryLogger(logs), overlay: { relayNetworks: ['0.0.0.0/0'] } }).catch((x: unknown) => x)) as RulesLoadError;
    expect(bad).toBeInstanceOf(RulesLoadError);
    expect(bad.message).toMatch(/command line.*would let any client relay.*from the command line/);
  });

  test('a bad file at start throws RulesLoadError naming file, line and key (schema)', async () => {
    await writeFile(join(dir, 'relay-networks.yaml'), '# trusted\n- 198.51.100.0/24\n- not a network\n');
    const e = await RulesStore.open(dir, { log: memoryLogger(logs) }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(RulesLoadError);
    const err = e as RulesLoadError;
    expect(err.file).toBe(join(dir, 'relay-networks.yaml'));
    expect(err.line).toBe(3);
    expect(err.key).toBe('/1');
    expect(err.message).toContain('relay-networks.yaml:3');
  });

  test('a compile error at start is located too (open relay, with the reason)', async () => {
    await writeFile(join(dir, 'relay-networks.yaml'), '- 198.51.100.0/24\n\n- 0.0.0.0/0\n');
    const err = (await RulesStore.open(dir, { log: memoryLogger(logs) }).catch((x: unknown) => x)) as RulesLoadError;
    expect(err).toBeInstanceOf(RulesLoadError);
    expect(err.errors[0]).toMatchObject({ code: 'RG_ERR_RULES_OPEN_RELAY', section: 'relay-networks', line: 3, path: '/1' });
    expect(err.message).toMatch(/would let any client relay/);
  });

  test.each(['2002::/16', '2001::/32', '64:ff9b::/96', '::ffff:0:0/96', '2001::/16'])(
    'a relay network file with the IPv6 transition prefix %s is refused at start, like /0 (issue 16 item 8)',
    async (net) => {
      await writeFile(join(dir, 'relay-networks.yaml'), `- 198.51.100.0/24\n- ${net}\n`);
      const err = (await RulesStore.open(dir, { log: memoryLogger(logs) }).catch((x: unknown) => x)) as RulesLoadError;
      expect(err).toBeInstanceOf(RulesLoadError);
      expect(err.errors[0]).toMatchObject({ code: 'RG_ERR_RULES_OPEN_RELAY', section: 'relay-networks', line: 2, path: '/1' });
      expect(err.message).toMatch(/would let any client relay/);
    },
  );

  test('YAML syntax errors name the line; unknown keys are refused', async () => {
    await writeFile(join(dir, 'policy.yaml'), 'antiSpoofing: true\nrules:\n  relay-denied: {mode: [\n');
    const e1 = (await RulesStore.open(dir, { log: memoryLogger(logs) }).catch((x: unknown) => x)) as RulesLoadError;
    expect(e1.errors[0]).toMatchObject({ code: 'RG_ERR_RULES_YAML', section: 'policy' });
    expect(e1.line).toBeGreaterThanOrEqual(3);
    await writeFile(join(dir, 'policy.yaml'), 'antiSpoofing: true\nantiSpoffing: false\n');
    const e2 = (await RulesStore.open(dir, { log: memoryLogger(logs) }).catch((x: unknown) => x)) as RulesLoadError;
    expect(e2.errors[0]?.code).toBe('RG_ERR_RULES_INVALID');
    expect(e2.message).toContain('policy.yaml');
  });
});

describe('RulesStore changes', () => {
  test('replaceSection persists atomically, swaps the snapshot and emits change', async () => {
    const s = await openStore();
    const before = s.current();
    const { etag } = s.getSection('relay-networks');
    const changed = once(s, 'change');
    const r = await s.replaceSection('relay-networks', ['198.51.100.0/24', '203.0.113.0/24'], { ifMatch: etag, actor: 'token:ops' });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    const [emitted] = (await withTimeout(changed, 2000, 'change event')) as [RulesSnapshot];
    expect(emitted).toBe(r.snapshot);
    expect(s.current()).toBe(r.snapshot);
    expect(r.etag).not.toBe(etag);
    expect(r.etag).toBe(s.getSection('relay-networks').etag);
    expect(relays(before, '203.0.113.5')).toBe(false); // old snapshot unchanged (sessions keep theirs)
    expect(relays(s.current(), '203.0.113.5')).toBe(true);
    const text = await readFile(join(dir, 'relay-networks.yaml'), 'utf8');
    expect(parse(text)).toEqual(['198.51.100.0/24', '203.0.113.0/24']);
    expect(text.startsWith('#')).toBe(true);
    expect((await readdir(dir)).filter((n) => n.includes('.tmp'))).toEqual([]);
    expect(await registry.getSingleMetric('relay_guard_rules_changes_total')?.get()).toMatchObject({
      values: [expect.objectContaining({ labels: { section: 'relay-networks', operation: 'replace' }, value: 1 })],
    });
  });

  test('a rule set that opens the relay is refused with 400 and changes nothing', async () => {
    const s = await openStore();
    const version = s.current().version;
    const r = await s.replaceSection('accepted-domains', ['*.com'], { actor: 't' });
    expect(r).toMatchObject({ ok: false, status: 400, code: 'RG_ERR_RULES_OPEN_RELAY' });
    expect(!r.ok && r.message).toMatch(/public suffix/);
    const r2 = await s.replaceSection('policy', { rules: { 'relay-denied': { mode: 'warn' } } }, { actor: 't' });
    expect(r2).toMatchObject({ ok: false, status: 400, code: 'RG_ERR_RULES_OPEN_RELAY' });
    expect(s.current().version).toBe(version);
    expect(parse(await readFile(join(dir, 'accepted-domains.yaml'), 'utf8'))).toEqual(['example.com', '*.example.net']);
    expect(s.audit()).toEqual([]);
  });

  test('schema errors are 400 and name the field', async () => {
    const s = await openStore();
    const r = await s.replaceSection('senders', [{ id: 'x', match: ['@a.test'], action: 'drop' }], { actor: 't' });
    expect(r).toMatchObject({ ok: false, status: 400, code: 'RG_ERR_RULES_INVALID' });
    expect(!r.ok && r.message).toContain('/0/action');
    const r2 = await s.addItem('relay-networks', 42, { actor: 't' });
    expect(r2).toMatchObject({ ok: false, status: 400 });
    expect(!r2.ok && r2.message).toContain('value');
  });

  test('add and remove items: idempotent add, 404 on a missing item, 409 on an id clash', async () => {
    const s = await openStore();
    const a1 = await s.addItem('never-relay-networks', '198.51.100.66', { actor: 't' });
    expect(a1.ok).toBe(true);
    expect(relays(s.current(), '198.51.100.66')).toBe(false);
    const v = s.current().version;
    const a2 = await s.addItem('never-relay-networks', '198.51.100.66', { actor: 't' });
    expect(a2).toMatchObject({ ok: true, version: v });
    expect(s.audit()).toHaveLength(1);
    // the same item in another spelling is the same item
    const rm1 = await s.removeItem('never-relay-networks', '198.51.100.66/32', { actor: 't' });
    expect(rm1.ok).toBe(true);
    expect(s.current().raw.neverRelayNetworks).toEqual([]);
    expect(await s.removeItem('never-relay-networks', '198.51.100.66', { actor: 't' })).toMatchObject({ ok: false, status: 404, code: 'RG_ERR_RULES_ITEM_NOT_FOUND' });
    expect(await s.removeItem('accepted-domains', 'EXAMPLE.com.', { actor: 't' })).toMatchObject({ ok: true });
    expect(s.current().raw.acceptedDomains).toEqual(['*.example.net']);

    const rule = { id: 'spam', match: ['@spam.test'], action: 'reject' };
    expect((await s.addItem('senders', rule, { actor: 't' })).ok).toBe(true);
    expect(await s.addItem('senders', { ...rule, action: 'defer' }, { actor: 't' })).toMatchObject({ ok: false, status: 409 });
    expect((await s.removeItem('senders', 'spam', { actor: 't' })).ok).toBe(true);
    expect(await s.addItem('policy', { x: 1 }, { actor: 't' })).toMatchObject({ ok: false, status: 400, code: 'RG_ERR_RULES_NOT_A_LIST' });
    expect(await s.addItem('nope', 'x', { actor: 't' })).toMatchObject({ ok: false, status: 404, code: 'RG_ERR_RULES_UNKNOWN_SECTION' });
  });

  test('audit entries record actor, section, operation, before, after and version', async () => {
    const s = await openStore();
    await s.addItem('relay-networks', '203.0.113.0/24', { actor: 'token:alice' });
    await s.replaceSection('policy', { antiSpoofing: true }, { actor: 'token:bob' });
    const entries = s.audit();
    expect(entries).toHaveLength(2);
    expect(entries[0]).toMatchObject({ actor: 'token:bob', section: 'policy', operation: 'replace', after: { antiSpoofing: true }, version: s.current().version });
    expect(entries[1]).toMatchObject({
      actor: 'token:alice', section: 'relay-networks', operation: 'add',
      before: ['198.51.100.0/24', '2001:db8::1'], after: ['198.51.100.0/24', '2001:db8::1', '203.0.113.0/24'],
    });
    expect(s.audit(1)).toHaveLength(1);
    const lines = (await readFile(join(dir, '.audit.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { actor: string });
    expect(lines.map((l) => l.actor)).toEqual(['token:alice', 'token:bob']);
    // audit and history survive a restart
    s.close();
    const again = await openStore();
    expect(again.audit()).toHaveLength(2);
    expect(again.current().version).toBe(s.current().version);
    expect(again.history()).toHaveLength(3);
  });

  test('history and rollback restore an earlier rule set, in memory and on disk', async () => {
    const s = await openStore();
    const first = s.current().version;
    await s.addItem('relay-networks', '203.0.113.0/24', { actor: 't' });
    await s.addItem('accepted-domains', 'example.org', { actor: 't' });
    expect(s.history().map((v) => v.operation)).toEqual(['add', 'add', 'load']);
    expect(relays(s.current(), '203.0.113.5')).toBe(true);
    const r = await s.rollback(first, { actor: 'token:ops' });
    expect(r).toMatchObject({ ok: true, version: first });
    expect(relays(s.current(), '203.0.113.5')).toBe(false);
    expect(parse(await readFile(join(dir, 'relay-networks.yaml'), 'utf8'))).toEqual(['198.51.100.0/24', '2001:db8::1']);
    expect(parse(await readFile(join(dir, 'accepted-domains.yaml'), 'utf8'))).toEqual(['example.com', '*.example.net']);
    expect(s.audit().slice(0, 2).map((e) => [e.operation, e.section]).sort()).toEqual([['rollback', 'accepted-domains'], ['rollback', 'relay-networks']]);
    expect(s.history()[0]).toMatchObject({ id: first, operation: 'rollback', actor: 'token:ops' });
    expect(await s.rollback('0000000000000000', { actor: 't' })).toMatchObject({ ok: false, status: 404 });
  });

  test('only the last N versions are kept', async () => {
    const s = await openStore({ historyLimit: 3 });
    for (let i = 1; i <= 5; i++) await s.addItem('relay-networks', `203.0.113.${i}`, { actor: 't' });
    expect(s.history()).toHaveLength(3);
    expect(await readdir(join(dir, '.history'))).toHaveLength(3);
    expect(s.history()[0]?.id).toBe(s.current().version);
  });

  test('two writers with the same ETag: one wins, one gets 412, nothing is lost', async () => {
    const s = await openStore();
    const { value, etag } = s.getSection('relay-networks') as { value: string[]; etag: string };
    const [a, b] = await Promise.all([
      s.replaceSection('relay-networks', [...value, '203.0.113.1'], { ifMatch: etag, actor: 'writer-a' }),
      s.replaceSection('relay-networks', [...value, '203.0.113.2'], { ifMatch: etag, actor: 'writer-b' }),
    ]);
    const results = [a, b];
    expect(results.filter((r) => r.ok)).toHaveLength(1);
    expect(results.filter((r) => !r.ok)).toEqual([expect.objectContaining({ status: 412, code: 'RG_ERR_RULES_PRECONDITION_FAILED' })]);
    // the loser re-reads and retries: both additions survive
    const loserItem = a.ok ? '203.0.113.2' : '203.0.113.1';
    const fresh = s.getSection('relay-networks') as { value: string[]; etag: string };
    const retry = await s.replaceSection('relay-networks', [...fresh.value, loserItem], { ifMatch: fresh.etag, actor: 'loser' });
    expect(retry.ok).toBe(true);
    expect([...s.current().raw.relayNetworks].sort()).toEqual(['198.51.100.0/24', '2001:db8::1', '203.0.113.1', '203.0.113.2'].sort());
    expect([...(parse(await readFile(join(dir, 'relay-networks.yaml'), 'utf8')) as string[])].sort()).toEqual([...s.current().raw.relayNetworks].sort());
  });
});

describe('RulesStore reload', () => {
  test('an invalid file keeps the old snapshot, logs file and line, counts an error', async () => {
    const s = await openStore();
    const version = s.current().version;
    await writeFile(join(dir, 'relay-networks.yaml'), '- 198.51.100.0/24\n- 10.0.0.0/33\n');
    const r = await s.reload('SIGHUP');
    expect(r.ok).toBe(false);
    expect(r.errors?.[0]).toMatchObject({ code: 'RG_ERR_RULES_BAD_NETWORK', file: join(dir, 'relay-networks.yaml'), line: 2 });
    expect(s.current().version).toBe(version);
    expect(await reloadCount('error')).toBe(1);
    const line = logs.find((l) => l.m === 'rules reload failed');
    expect(line?.o).toMatchObject({ file: join(dir, 'relay-networks.yaml'), line: 2, reason: 'SIGHUP' });

    await writeFile(join(dir, 'relay-networks.yaml'), '- 198.51.100.0/24\n- 10.0.0.0/8\n');
    expect((await s.reload('SIGHUP')).ok).toBe(true);
    expect(relays(s.current(), '10.1.2.3')).toBe(true);
    expect(await reloadCount('success')).toBe(1);
    expect(s.audit()[0]).toMatchObject({ actor: 'file', operation: 'reload', section: 'relay-networks' });
  });

  test('a hand edit is picked up by the watcher; own writes are not reloaded', async () => {
    const s = await openStore({ watch: true });
    const events: RulesSnapshot[] = [];
    s.on('change', (snap: RulesSnapshot) => events.push(snap));
    await s.addItem('accepted-domains', 'example.org', { actor: 'api' });
    expect(events).toHaveLength(1);
    const changed = once(s, 'change');
    await writeFile(join(dir, 'never-relay-networks.yaml'), '- 198.51.100.66\n');
    await withTimeout(changed, 5000, 'change after a hand edit');
    expect(relays(s.current(), '198.51.100.66')).toBe(false);
    expect(relays(s.current(), '198.51.100.67')).toBe(true);
    expect(s.current().acceptedDomains.has('example.org')).toBe(true);
    expect(events).toHaveLength(2);
    expect(s.audit().filter((e) => e.operation === 'reload').map((e) => e.section)).toEqual(['never-relay-networks']);
  });

  test('a broken hand edit is logged and ignored by the watcher', async () => {
    const s = await openStore({ watch: true });
    const version = s.current().version;
    const failed = once(s, 'reloadError');
    await writeFile(join(dir, 'accepted-domains.yaml'), '- "*"\n');
    const [errors] = (await withTimeout(failed, 5000, 'reloadError event')) as [Array<{ code: string; line?: number }>];
    expect(errors[0]).toMatchObject({ code: 'RG_ERR_RULES_OPEN_RELAY', line: 1 });
    expect(await reloadCount('error')).toBeGreaterThanOrEqual(1);
    expect(s.current().version).toBe(version);
    expect(logs.some((l) => l.m === 'rules reload failed' && (l.o as { code?: string }).code === 'RG_ERR_RULES_OPEN_RELAY')).toBe(true);
  });
});
