/**
 * Issue 19: a fleet of guards is one guard. Three relay-guard PROCESSES (the CLI, not one process
 * with three guards) share one real redis-server (--rules-store): a rule change through any guard's
 * admin API is a compare-and-set in Redis, published and applied by every guard within 1 s; history,
 * audit and rollback are fleet-wide; an outage never changes policy (last-known-good copy, 503 on
 * writes, gauge), the fleet converges when Redis returns, an emptied Redis is re-seeded from the
 * guards' copies, and a tampered entry is refused like a bad file.
 *
 * The steps share the fleet and run in order. Waits poll the admin APIs with bounded deadlines.
 */
import { cpSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { runCtl } from '../../src/cli/ctl.js';
import { Dialog } from '../helpers/dialog.js';
import { pollUntil, startGuardProcess, type GuardProcess } from '../helpers/guard-process.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';

const RELAY_CLIENT = '127.0.0.2';
const RELAY_NET = '127.0.0.2/32';
const STORE_DOWN = 'RG_ERR_RULES_STORE_UNAVAILABLE';

let redis: RedisServer;
let aofDir: string;
let backend: RecordingBackend;
let seedDir: string;
const dirs: string[] = [];
const guards: Record<'a' | 'b' | 'c', GuardProcess> = {} as Record<'a' | 'b' | 'c', GuardProcess>;
let cli: Redis;

function rulesDirFor(name: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), `rg-fleet-${name}-`));
  cpSync(seedDir, dir, { recursive: true });
  dirs.push(dir);
  return dir;
}

async function start(name: 'a' | 'b' | 'c', rulesDir: string, ports?: { smtpPort: number; adminPort: number }): Promise<GuardProcess> {
  const g = await startGuardProcess({ name: `guard-${name}`, rulesDir, backendPort: backend.port, args: ['--rules-store', redis.url], ...(ports ?? {}) });
  guards[name] = g;
  return g;
}

/** RCPT to a foreign domain from the relay client through one guard: 250 relays, 550 refused. */
async function relayCode(g: GuardProcess): Promise<number> {
  const d = await Dialog.connect(g.smtpPort, { localAddress: RELAY_CLIENT });
  try {
    await d.reply();
    await d.cmd('EHLO relay.test');
    await d.cmd('MAIL FROM:<app@example.com>');
    return (await d.cmd('RCPT TO:<someone@elsewhere.test>')).code;
  } finally {
    d.close();
  }
}

async function relayNetworks(g: GuardProcess): Promise<string[]> {
  return ((await g.api('GET', '/rules/relay-networks')).body as { value: string[] }).value;
}

/** Wait until every guard lists (or no longer lists) the relay network; the time the slowest took. */
async function everyGuard(want: boolean, ms: number): Promise<number> {
  const times = await Promise.all(Object.values(guards).map((g) => pollUntil(async () => (await relayNetworks(g)).includes(RELAY_NET) === want, ms, `${g.name} relay-networks ${want ? 'has' : 'lacks'} ${RELAY_NET}`, 10)));
  return Math.max(...times);
}

function gauge(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

beforeAll(async () => {
  aofDir = mkdtempSync(path.join(tmpdir(), 'rg-fleet-aof-'));
  redis = await startRedisServer({ aofDir });
  cli = new Redis(redis.url, { maxRetriesPerRequest: 1, retryStrategy: () => 200 });
  cli.on('error', () => undefined);
  backend = await startRecordingBackend();
  seedDir = mkdtempSync(path.join(tmpdir(), 'rg-fleet-seed-'));
  writeFileSync(path.join(seedDir, 'accepted-domains.yaml'), '- example.com\n');
  writeFileSync(path.join(seedDir, 'relay-networks.yaml'), '- 198.51.100.0/24\n');
  writeFileSync(path.join(seedDir, 'limits.yaml'), 'enabled: false\nprefixV4: 24\nprefixV6: 64\nlimits: []\n');
  // Three processes started together: exactly one seeds the empty store.
  await Promise.all((['a', 'b', 'c'] as const).map((n) => start(n, rulesDirFor(n))));
}, 180_000);

afterAll(async () => {
  await Promise.all(Object.values(guards).map((g) => g.stop('SIGKILL')));
  cli?.disconnect();
  await redis?.stop();
  await backend?.close();
  for (const d of [...dirs, seedDir, aofDir]) if (d) rmSync(d, { recursive: true, force: true });
});

// Generous per-test ceilings: guard processes start through tsx on a shared 2-core machine.
describe.sequential('three guard processes, one Redis rules store', { timeout: 120_000 }, () => {
  test('the empty store is seeded once from the rules directory; the fleet lists three live guards, none behind', async () => {
    const history = (await guards.b.api('GET', '/rules/history')).body as { versions: Array<{ operation: string; guard: string }> };
    expect(history.versions.filter((v) => v.operation === 'seed')).toHaveLength(1);
    await pollUntil(async () => ((await guards.a.api('GET', '/fleet')).body as { guards: unknown[] }).guards.length === 3, 10_000, 'three heartbeats');
    const fleet = (await guards.a.api('GET', '/fleet')).body as { shared: boolean; store: { up: boolean; rev: number }; guards: Array<{ name: string; behind: boolean; rev: number }> };
    expect(fleet.shared).toBe(true);
    expect(fleet.store.up).toBe(true);
    expect(fleet.guards.map((g) => g.name)).toEqual(['guard-a', 'guard-b', 'guard-c']);
    expect(fleet.guards.every((g) => !g.behind && g.rev === fleet.store.rev)).toBe(true);
    for (const g of Object.values(guards)) expect(await relayCode(g)).toBe(550);
  });

  test('a relay network added through A makes the client relay through B and C within 1 s; a removal stops it everywhere', async () => {
    const add = await guards.a.api('POST', '/rules/relay-networks', { value: RELAY_NET });
    expect(add.status).toBe(200);
    const took = await everyGuard(true, 1_000);
    expect(took).toBeLessThan(1_000);
    expect(await relayCode(guards.b)).toBe(250);
    expect(await relayCode(guards.c)).toBe(250);

    const del = await guards.b.api('DELETE', `/rules/relay-networks/${encodeURIComponent(RELAY_NET)}`);
    expect(del.status).toBe(200);
    expect(await everyGuard(false, 1_000)).toBeLessThan(1_000);
    for (const g of Object.values(guards)) expect(await relayCode(g)).toBe(550);
  });

  test('two writers with one ETag through A and B: exactly one 200 and one 412, nothing lost', async () => {
    const { headers } = await guards.c.api('GET', '/rules/relay-networks');
    const etag = headers.get('etag')!;
    const [ra, rb] = await Promise.all([
      guards.a.api('POST', '/rules/relay-networks', { value: '203.0.113.10/32' }, { 'if-match': etag }),
      guards.b.api('POST', '/rules/relay-networks', { value: '203.0.113.20/32' }, { 'if-match': etag }),
    ]);
    expect([ra.status, rb.status].sort()).toEqual([200, 412]);
    const loser = ra.status === 412 ? { g: guards.a, net: '203.0.113.10/32', r: ra } : { g: guards.b, net: '203.0.113.20/32', r: rb };
    expect(loser.r.body).toMatchObject({ code: 'RG_ERR_RULES_PRECONDITION_FAILED' });
    // The loser fetches again and retries: both changes end up everywhere.
    // (its guard applies the winner's change by pub/sub; a fetch before that still carries the old ETag)
    const winner = ra.status === 200 ? ra : rb;
    const winnerEtag = winner.headers.get('etag') ?? (winner.body as { etag?: string }).etag;
    let fresh = '';
    await pollUntil(async () => {
      fresh = (await loser.g.api('GET', '/rules/relay-networks')).headers.get('etag')!;
      return fresh !== etag && (winnerEtag === undefined || fresh === winnerEtag);
    }, 5_000, 'the loser sees the winner\'s change');
    expect((await loser.g.api('POST', '/rules/relay-networks', { value: loser.net }, { 'if-match': fresh })).status).toBe(200);
    for (const g of Object.values(guards)) {
      await pollUntil(async () => {
        const nets = await relayNetworks(g);
        return nets.includes('203.0.113.10/32') && nets.includes('203.0.113.20/32');
      }, 1_000, `${g.name} has both networks`);
    }
    const audit = (await guards.c.api('GET', '/audit?limit=5')).body as { entries: Array<{ operation: string; guard: string; actor: string }> };
    expect(audit.entries.slice(0, 2).map((e) => e.guard).sort()).toEqual(['guard-a', 'guard-b']);
  });

  test('history and rollback through C restore the refusal on all three; the audit says who and from which guard', async () => {
    const before = ((await guards.c.api('GET', '/rules/history')).body as { versions: Array<{ id: string }> }).versions[0]!.id;
    expect((await guards.a.api('POST', '/rules/relay-networks', { value: RELAY_NET })).status).toBe(200);
    await everyGuard(true, 1_000);
    expect(await relayCode(guards.c)).toBe(250);
    const history = (await guards.c.api('GET', '/rules/history')).body as { versions: Array<{ id: string; guard: string; operation: string }> };
    expect(history.versions[0]).toMatchObject({ guard: 'guard-a', operation: 'add' });
    const rb = await guards.c.api('POST', '/rules/rollback', { version: before });
    expect(rb.status).toBe(200);
    expect(await everyGuard(false, 1_000)).toBeLessThan(1_000);
    for (const g of Object.values(guards)) expect(await relayCode(g)).toBe(550);
    const audit = (await guards.a.api('GET', '/audit?limit=1')).body as { entries: Array<{ operation: string; guard: string; section: string }> };
    expect(audit.entries[0]).toMatchObject({ operation: 'rollback', guard: 'guard-c', section: 'relay-networks' });
  });

  test('Redis killed: every guard keeps enforcing, writes get 503 with the reason, the gauge shows it; a guard restarted meanwhile starts from its last-known-good copy', async () => {
    expect((await guards.b.api('POST', '/rules/relay-networks', { value: RELAY_NET })).status).toBe(200);
    await everyGuard(true, 1_000);
    await redis.stop({ abrupt: true });
    for (const g of Object.values(guards)) {
      await pollUntil(async () => gauge(await g.metrics(), 'relay_guard_rules_store_up') === 0, 10_000, `${g.name} store_up 0`);
      expect(await relayCode(g)).toBe(250); // the last rules, still enforced
    }
    const w = await guards.a.api('POST', '/rules/relay-networks', { value: '192.0.2.0/24' });
    expect(w.status).toBe(503);
    expect(w.body).toMatchObject({ code: STORE_DOWN });
    expect(w.body.message).toMatch(/unreachable/);
    expect((await guards.b.api('GET', '/rules/history')).status).toBe(503);

    // C restarts during the outage, on the same ports and rules directory (its copy is there).
    const ports = { smtpPort: guards.c.smtpPort, adminPort: guards.c.adminPort };
    const dirC = dirs[2]!;
    await guards.c.stop();
    expect(readdirSync(dirC)).toContain('.rules-store-cache.json');
    const c = await start('c', dirC, ports);
    expect(c.output()).toMatch(/rules store unreachable at start/);
    expect(await relayNetworks(c)).toContain(RELAY_NET); // not in its rules directory: from the copy
    expect(await relayCode(c)).toBe(250);
  });

  test('Redis back: the three converge and writes work again', async () => {
    await redis.start();
    for (const g of Object.values(guards)) {
      await pollUntil(async () => gauge(await g.metrics(), 'relay_guard_rules_store_up') === 1, 10_000, `${g.name} store_up 1`);
    }
    await pollUntil(async () => {
      const f = (await guards.c.api('GET', '/fleet')).body as { guards: Array<{ behind: boolean }> };
      return f.guards.length === 3 && f.guards.every((g) => !g.behind);
    }, 10_000, 'three guards, none behind');
    expect((await guards.c.api('POST', '/rules/relay-networks', { value: '192.0.2.0/24' })).status).toBe(200);
    for (const g of Object.values(guards)) await pollUntil(async () => (await relayNetworks(g)).includes('192.0.2.0/24'), 1_000, `${g.name} has 192.0.2.0/24`);
  });

  test('Redis restarted empty: the store is re-seeded from the guards\' copies, never emptied', async () => {
    const latest = await relayNetworks(guards.a);
    await redis.stop();
    for (const f of readdirSync(aofDir)) rmSync(path.join(aofDir, f), { recursive: true, force: true });
    await redis.start();
    await pollUntil(async () => (await cli.get('relay-guard:rules:doc').catch(() => null)) !== null, 10_000, 're-seeded store');
    const doc = JSON.parse((await cli.get('relay-guard:rules:doc'))!) as { operation: string; raw: { relayNetworks: string[] }; guard: string };
    expect(doc.operation).toBe('seed');
    expect([...doc.raw.relayNetworks].sort()).toEqual([...latest].sort());
    for (const g of Object.values(guards)) {
      expect([...(await relayNetworks(g))].sort()).toEqual([...latest].sort());
      expect(await relayCode(g)).toBe(250);
    }
    const history = (await guards.b.api('GET', '/rules/history')).body as { versions: Array<{ operation: string }> };
    expect(history.versions.filter((v) => v.operation === 'seed')).toHaveLength(1);
  });

  test('a tampered or invalid entry in Redis is refused like a bad file: old rules kept, logged, the fleet shows every guard behind', async () => {
    const rev = Number(await cli.get('relay-guard:rules:rev'));
    const doc = JSON.parse((await cli.get('relay-guard:rules:doc'))!) as { raw: { relayNetworks: string[] }; rev: number };
    // Hand-edited in Redis: an open relay, with neither a matching version nor a valid rule set.
    doc.raw.relayNetworks = ['0.0.0.0/0'];
    doc.rev = rev + 1;
    await cli.multi().set('relay-guard:rules:doc', JSON.stringify(doc)).set('relay-guard:rules:rev', String(rev + 1)).publish('relay-guard:rules:changed', String(rev + 1)).exec();
    for (const g of Object.values(guards)) {
      await pollUntil(async () => g.logs().some((l) => l['msg'] === 'rules store entry refused: the rules in force are kept'), 5_000, `${g.name} refusal logged`);
      expect(await relayNetworks(g)).not.toContain('0.0.0.0/0');
      expect(await relayCode(g)).toBe(250); // still the old rule set (127.0.0.2/32 trusted)
      const d = await Dialog.connect(g.smtpPort, { localAddress: '127.0.0.9' });
      await d.reply();
      await d.cmd('EHLO x.test');
      await d.cmd('MAIL FROM:<a@elsewhere.test>');
      expect((await d.cmd('RCPT TO:<v@elsewhere.test>')).code).toBe(550);
      d.close();
      await pollUntil(async () => gauge(await g.metrics(), 'relay_guard_rules_store_behind') === 1, 5_000, `${g.name} behind gauge`);
    }
    await pollUntil(async () => gauge(await guards.a.metrics(), 'relay_guard_fleet_guards\\{state="behind"\\}') === 3, 10_000, 'three guards behind in the fleet gauge');

    // Not JSON at all: refused too.
    await cli.multi().set('relay-guard:rules:doc', '{"v":1,').set('relay-guard:rules:rev', String(rev + 2)).publish('relay-guard:rules:changed', String(rev + 2)).exec();
    await pollUntil(async () => guards.b.logs().some((l) => l['msg'] === 'rules store entry refused: the rules in force are kept' && l['code'] === 'RG_ERR_RULES_STORE_INVALID'), 5_000, 'invalid JSON refused');

    // A change through the API repairs the store on top of the rules in force.
    expect((await guards.a.api('DELETE', `/rules/relay-networks/${encodeURIComponent('192.0.2.0/24')}`)).status).toBe(200);
    await pollUntil(async () => {
      const f = (await guards.b.api('GET', '/fleet')).body as { store: { valid: boolean }; guards: Array<{ behind: boolean }> };
      return f.store.valid && f.guards.every((g) => !g.behind);
    }, 5_000, 'fleet current again');
    for (const g of Object.values(guards)) expect(await relayNetworks(g)).not.toContain('192.0.2.0/24');
  });

  test('ctl rules export DIR / import DIR: one audited, validated change applied by every guard; ctl fleet lists them', async () => {
    const out: string[] = [];
    const err: string[] = [];
    const ctl = (g: GuardProcess, ...args: string[]) => runCtl(['--admin', `127.0.0.1:${g.adminPort}`, ...args], { stdout: (x) => void out.push(x), stderr: (x) => void err.push(x), env: {} });
    const git = mkdtempSync(path.join(tmpdir(), 'rg-fleet-git-'));
    dirs.push(git);
    expect(await ctl(guards.b, 'rules', 'export', git)).toBe(0);
    expect(readdirSync(git).sort()).toEqual(['accepted-domains.yaml', 'limits.yaml', 'never-relay-networks.yaml', 'policy.yaml', 'recipient-validation.yaml', 'relay-networks.yaml', 'senders.yaml']);
    // The team edits two files in git and pushes them through C.
    writeFileSync(path.join(git, 'accepted-domains.yaml'), '- example.com\n- example.org\n');
    writeFileSync(path.join(git, 'never-relay-networks.yaml'), '- 127.0.0.66/32\n');
    const auditBefore = ((await guards.a.api('GET', '/audit?limit=1000')).body as { entries: unknown[] }).entries.length;
    expect(await ctl(guards.c, 'rules', 'import', git)).toBe(0);
    expect(out.join('')).toMatch(/imported 7 sections/);
    for (const g of Object.values(guards)) {
      await pollUntil(async () => ((await g.api('GET', '/rules/accepted-domains')).body as { value: string[] }).value.includes('example.org'), 1_000, `${g.name} imported`);
    }
    const audit = ((await guards.a.api('GET', '/audit?limit=1000')).body as { entries: Array<{ operation: string; guard: string; section: string }> }).entries;
    expect(audit.length - auditBefore).toBe(2); // the two sections that changed, one change
    expect(audit.slice(0, 2).every((e) => e.operation === 'import' && e.guard === 'guard-c')).toBe(true);
    const history = (await guards.a.api('GET', '/rules/history')).body as { versions: Array<{ operation: string; sections: string[] }> };
    expect(history.versions[0]).toMatchObject({ operation: 'import' });
    expect([...history.versions[0]!.sections].sort()).toEqual(['accepted-domains', 'never-relay-networks']);

    // An open relay in git is refused by the guard; an empty file is refused before anything is sent.
    const version = ((await guards.a.api('GET', '/rules')).body as { version: string }).version;
    writeFileSync(path.join(git, 'relay-networks.yaml'), '- 0.0.0.0/0\n');
    err.length = 0;
    expect(await ctl(guards.a, 'rules', 'import', git)).toBe(1);
    expect(err.join('')).toMatch(/RG_ERR_RULES_OPEN_RELAY/);
    writeFileSync(path.join(git, 'relay-networks.yaml'), '');
    err.length = 0;
    expect(await ctl(guards.a, 'rules', 'import', git)).toBe(1);
    expect(err.join('')).toMatch(/relay-networks\.yaml is empty/);
    expect(((await guards.b.api('GET', '/rules')).body as { version: string }).version).toBe(version);

    // Heartbeats follow each applied change by a few milliseconds: poll (bounded) for none behind.
    let text = '';
    await pollUntil(async () => {
      out.length = 0;
      expect(await ctl(guards.a, 'fleet')).toBe(0);
      text = out.join('');
      return !/ yes /.test(text);
    }, 5_000, 'ctl fleet without a guard behind').catch((e: Error) => { throw new Error(`${e.message}: ${text}`); });
    expect(text).toMatch(/rules store redis:\/\/127\.0\.0\.1:\d+: up/);
    for (const n of ['guard-a *', 'guard-b', 'guard-c']) expect(text).toContain(n);
  });
});
