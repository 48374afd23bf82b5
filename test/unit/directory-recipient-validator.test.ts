import { once } from 'node:events';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import {
  RecipientValidator,
  type ListReloadResult,
  type MinimalLogger,
  type RecipientValidatorOptions,
} from '../../src/directory/recipient-validator.js';
import type { RecipientValidationRules } from '../../src/directory/schema.js';
import { createMetrics, type Metrics } from '../../src/observability/metrics.js';

interface LogLine { level: string; obj: object; msg: string }
function memoryLogger(lines: LogLine[]): MinimalLogger {
  return {
    info: (obj, msg) => lines.push({ level: 'info', obj, msg }),
    warn: (obj, msg) => lines.push({ level: 'warn', obj, msg }),
    error: (obj, msg) => lines.push({ level: 'error', obj, msg }),
  };
}

/** The next 'listReloaded' event, or a rejection after a bounded wait. */
async function nextReload(v: RecipientValidator, ms = 5000): Promise<ListReloadResult> {
  const [res] = (await once(v, 'listReloaded', { signal: AbortSignal.timeout(ms) })) as [ListReloadResult];
  return res;
}

async function lookupCount(metrics: Metrics, source: string, result: string): Promise<number> {
  const m = await metrics.recipientLookups.get();
  return m.values.find((v) => v.labels.source === source && v.labels.result === result)?.value ?? 0;
}

/** A loopback port nobody listens on (connections are refused at once). */
async function closedPort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const addr = srv.address();
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  srv.close();
  await once(srv, 'close');
  return addr.port;
}

let dir: string;
let logs: LogLine[];
let metrics: Metrics;
let rules: RecipientValidationRules;
const validators: RecipientValidator[] = [];

function makeValidator(extra: Partial<RecipientValidatorOptions> = {}): RecipientValidator {
  const v = new RecipientValidator({ rulesDir: dir, rules: () => rules, metrics, log: memoryLogger(logs), watchDebounceMs: 20, ...extra });
  validators.push(v);
  return v;
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rg-validator-'));
  logs = [];
  metrics = createMetrics(new Registry(), { defaultMetrics: false });
  rules = { default: 'list', domains: { 'example.net': 'off', 'example.org': 'ldap' } };
});

afterEach(async () => {
  for (const v of validators.splice(0)) await v.close();
  await rm(dir, { recursive: true, force: true });
});

describe('mode()', () => {
  test('follows the rules, which may change live', () => {
    const v = makeValidator();
    expect(v.mode('example.com')).toBe('list');
    expect(v.mode('example.net')).toBe('off');
    expect(v.mode('example.org')).toBe('ldap');
    rules = { default: 'off', domains: {} };
    expect(v.mode('example.com')).toBe('off');
  });

  test('--recipients-file turns on list mode for every domain', () => {
    const v = makeValidator({ recipientsFile: join(dir, 'cli.txt') });
    expect(v.mode('example.com')).toBe('list');
    expect(v.mode('example.net')).toBe('list');
    expect(v.mode('example.org')).toBe('list');
  });
});

describe('list mode', () => {
  test('known, alias, catch-all and unknown; counted by source and result', async () => {
    await writeFile(join(dir, 'recipients.txt'), 'alice@example.com\nally@example.com\n@catchall.example\n');
    const v = makeValidator();
    await v.start();
    expect(await v.lookup('alice@example.com', 'example.com')).toEqual({ result: 'known', source: 'list' });
    expect(await v.lookup('Ally@example.com', 'example.com')).toEqual({ result: 'known', source: 'list' });
    expect(await v.lookup('x@catchall.example', 'catchall.example')).toEqual({ result: 'known', source: 'list' });
    expect(await v.lookup('mallory@example.com', 'example.com')).toEqual({ result: 'unknown', source: 'list' });
    expect(await lookupCount(metrics, 'list', 'known')).toBe(3);
    expect(await lookupCount(metrics, 'list', 'unknown')).toBe(1);
    expect(v.listSize).toBe(3);
  });

  test('list.file is relative to the rules directory', async () => {
    rules = { default: 'list', list: { file: 'other.txt' } };
    await writeFile(join(dir, 'other.txt'), 'bob@example.com\n');
    const v = makeValidator();
    await v.start();
    expect((await v.lookup('bob@example.com', 'example.com')).result).toBe('known');
  });

  test('a live change of list.file switches to the new file', async () => {
    rules = { default: 'list', list: { file: 'a.txt' } };
    await writeFile(join(dir, 'a.txt'), 'alice@example.com\n');
    await writeFile(join(dir, 'b.txt'), 'bob@example.com\n');
    const v = makeValidator();
    await v.start();
    expect((await v.lookup('alice@example.com', 'example.com')).result).toBe('known');
    rules = { default: 'list', list: { file: 'b.txt' } };
    const both = await Promise.all([v.lookup('alice@example.com', 'example.com'), v.lookup('bob@example.com', 'example.com')]);
    expect(both.map((r) => r.result)).toEqual(['unknown', 'known']);
  });

  test('a domain with validation off is known without a lookup', async () => {
    const v = makeValidator();
    const res = await v.lookup('anyone@example.net', 'example.net');
    expect(res.result).toBe('known');
  });

  test('start() fails loudly when the list is needed but missing; nothing is read when no domain uses it', async () => {
    await expect(makeValidator().start()).rejects.toThrow(/recipient list/);
    rules = { default: 'off', domains: { 'example.org': 'ldap' } };
    await expect(makeValidator().start()).resolves.toBeUndefined();
  });

  test('a list turned on live but missing gives error (451), never unknown (550)', async () => {
    rules = { default: 'off', domains: {} };
    const v = makeValidator();
    await v.start();
    rules = { default: 'off', domains: { 'example.com': 'list' } };
    const res = await v.lookup('alice@example.com', 'example.com');
    expect(res).toMatchObject({ result: 'error', source: 'list' });
    expect(await lookupCount(metrics, 'list', 'error')).toBe(1);
    // Creating the file is picked up by the watcher.
    const reloaded = nextReload(v);
    await writeFile(join(dir, 'recipients.txt'), 'alice@example.com\n');
    expect(await reloaded).toEqual({ ok: true, entries: 1 });
    expect((await v.lookup('alice@example.com', 'example.com')).result).toBe('known');
  });

  test('reloads when the file is rewritten, and when it is replaced by a rename', async () => {
    const file = join(dir, 'recipients.txt');
    await writeFile(file, 'alice@example.com\n');
    const v = makeValidator();
    await v.start();
    expect((await v.lookup('bob@example.com', 'example.com')).result).toBe('unknown');

    let reloaded = nextReload(v);
    await writeFile(file, 'alice@example.com\nbob@example.com\n');
    expect(await reloaded).toEqual({ ok: true, entries: 2 });
    expect((await v.lookup('bob@example.com', 'example.com')).result).toBe('known');

    // Editors and deploy tools write a temporary file and rename it over the old one.
    reloaded = nextReload(v);
    await writeFile(join(dir, '.recipients.tmp'), 'carol@example.com\n');
    await rename(join(dir, '.recipients.tmp'), file);
    expect(await reloaded).toEqual({ ok: true, entries: 1 });
    expect((await v.lookup('carol@example.com', 'example.com')).result).toBe('known');
    expect((await v.lookup('alice@example.com', 'example.com')).result).toBe('unknown');
  });

  test('a bad file is refused, logged with its line, and the previous list kept', async () => {
    const file = join(dir, 'recipients.txt');
    await writeFile(file, 'alice@example.com\n');
    const v = makeValidator();
    await v.start();
    const reloaded = nextReload(v);
    await writeFile(file, 'alice@example.com\nthis is not an address\n');
    const res = await reloaded;
    expect(res.ok).toBe(false);
    expect(res.error).toContain(`${file}:2:`);
    expect((await v.lookup('alice@example.com', 'example.com')).result).toBe('known');
    expect(logs.some((l) => l.level === 'error' && l.msg === 'recipient list not loaded')).toBe(true);
    const reloads = await metrics.rulesReloads.get();
    expect(reloads.values.find((x) => x.labels.result === 'error')?.value).toBe(1);
  });

  test('reloadList() re-reads on demand', async () => {
    const file = join(dir, 'recipients.txt');
    await writeFile(file, 'alice@example.com\n');
    const v = makeValidator({ watchDebounceMs: 60_000 }); // the watcher will not beat us to it
    await v.start();
    await writeFile(file, 'alice@example.com\nbob@example.com\n@example.org\n');
    expect(await v.reloadList()).toEqual({ ok: true, entries: 3 });
    expect((await v.lookup('bob@example.com', 'example.com')).result).toBe('known');
  });

  test('--recipients-file overrides list.file and the per-domain modes', async () => {
    const cli = join(dir, 'cli.txt');
    await writeFile(cli, 'dave@example.org\n');
    await writeFile(join(dir, 'recipients.txt'), 'alice@example.com\n');
    const v = makeValidator({ recipientsFile: cli });
    await v.start();
    expect(await v.lookup('dave@example.org', 'example.org')).toEqual({ result: 'known', source: 'list' });
    expect((await v.lookup('alice@example.com', 'example.com')).result).toBe('unknown');
  });
});

describe('ldap mode without a working directory', () => {
  test('no ldap settings gives error, not unknown', async () => {
    const v = makeValidator();
    const res = await v.lookup('alice@example.org', 'example.org');
    expect(res).toMatchObject({ result: 'error', source: 'ldap' });
  });

  test('a refused connection gives error quickly, is not cached, and is logged once', async () => {
    const port = await closedPort();
    rules = { default: 'off', domains: { 'example.org': 'ldap' }, ldap: { url: `ldap://127.0.0.1:${port}`, baseDn: 'dc=example,dc=org', timeout: '2s' } };
    const v = makeValidator();
    const t0 = performance.now();
    const first = await v.lookup('alice@example.org', 'example.org');
    const second = await v.lookup('alice@example.org', 'example.org');
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(first).toMatchObject({ result: 'error', source: 'ldap' });
    expect(second).toMatchObject({ result: 'error', source: 'ldap' });
    expect(v.cacheStats.size).toBe(0);
    expect(await lookupCount(metrics, 'ldap', 'error')).toBe(2);
    expect(logs.filter((l) => l.msg === 'recipient directory lookup failed')).toHaveLength(1);
  });

  test('a server that accepts but never answers gives error after the timeout', async () => {
    const sockets: Socket[] = [];
    const silent = createServer((s) => sockets.push(s));
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const addr = silent.address();
    if (addr === null || typeof addr === 'string') throw new Error('no port');
    try {
      rules = { default: 'ldap', ldap: { url: `ldap://127.0.0.1:${addr.port}`, baseDn: 'dc=x', timeout: '300ms' } };
      const v = makeValidator();
      const t0 = performance.now();
      const res = await v.lookup('alice@example.org', 'example.org');
      const elapsed = performance.now() - t0;
      expect(res).toMatchObject({ result: 'error', source: 'ldap' });
      expect(elapsed).toBeGreaterThanOrEqual(250);
      expect(elapsed).toBeLessThan(2000);
    } finally {
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });

  test('bindDn without a password is refused before any bind', async () => {
    const port = await closedPort();
    rules = { default: 'ldap', ldap: { url: `ldap://127.0.0.1:${port}`, baseDn: 'dc=x', bindDn: 'cn=a', bindPasswordEnv: 'RG_TEST_NO_SUCH_VAR' } };
    const v = makeValidator({ ldap: { env: {} } });
    const res = await v.lookup('alice@example.org', 'example.org');
    expect(res).toMatchObject({ result: 'error', source: 'ldap' });
  });
});
