/**
 * Issue 8 acceptance, LDAP mode, through the real guard: a private slapd seeded with AD-like
 * entries (proxyAddresses SMTP:/smtp:, mail). Known and alias addresses pass and are delivered;
 * unknown ones get 550 5.1.1 and never reach the backend; repeats are served from the cache
 * without a query (counted); a slow or stopped directory yields 451 4.4.3, never 550; unknown
 * recipients feed the harvest ban. Fails (does not skip) when slapd is not installed.
 * All of it in both backend modes: per-client, and pooled (the guard greets and answers EHLO
 * itself and lends a pre-opened backend session from MAIL to the reply to end-of-data), where what
 * the backend saw is searched across all its connections: a refused recipient reaches none of them.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { RecipientValidator } from '../../src/directory/recipient-validator.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { MODES, withMode, since } from '../helpers/modes.js';
import { Dialog } from '../helpers/dialog.js';
import { until, withTimeout } from '../helpers/with-timeout.js';
import { SLAPD_ROOT_DN, SLAPD_ROOT_PW, SLAPD_SUFFIX, startSlapd, type Slapd } from '../helpers/slapd.js';

const PASSWORD_ENV = 'RG_TEST_LDAP_BIND_PASSWORD';
const LOOKUP_TIMEOUT_MS = 1_000;

let slapd: Slapd;
let backend: RecordingBackend;

beforeAll(async () => {
  slapd = await startSlapd();
  backend = await startRecordingBackend();
}, 30_000);

afterAll(async () => {
  await backend?.close();
  await slapd?.close();
});

const forwardedRcpts = () => backend.lines().filter((l) => /^RCPT TO:/i.test(l)).map((l) => l.toLowerCase());

for (const { mode, config: modeConfig } of MODES) describe(`LDAP mode against slapd (${mode} mode)`, () => {
  const pooled = mode === 'pooled';
  let g: StartedGuard;

  beforeAll(async () => {
    g = await startGuard({
      backendPort: backend.port,
      env: { [PASSWORD_ENV]: SLAPD_ROOT_PW },
      rules: {
        acceptedDomains: ['example.test'],
        recipientValidation: {
          default: 'off',
          domains: { 'example.test': 'ldap' },
          ldap: {
            url: slapd.url,
            bindDn: SLAPD_ROOT_DN,
            bindPasswordEnv: PASSWORD_ENV,
            baseDn: SLAPD_SUFFIX,
            timeout: `${LOOKUP_TIMEOUT_MS}ms`,
            positiveTtl: '10m',
            negativeTtl: '2m',
            cacheSize: 100,
          },
        },
        limits: {
          enabled: true,
          prefixV4: 24,
          prefixV6: 64,
          limits: [{ id: 'unknown-recipient-per-ip', event: 'unknown-recipient', key: 'ip', limit: 3, window: '10m', action: 'ban', ban: '1h' }],
        },
      },
      config: withMode(modeConfig, { timeouts: { drain: '1s' } }),
    });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(pooled);
  }, 30_000);

  afterAll(async () => {
    await g?.stop();
  });

  const validator = () => g.guard.services.validator as unknown as RecipientValidator;

  async function lookups(source: 'ldap' | 'cache' | 'list', result: 'known' | 'unknown' | 'error'): Promise<number> {
    const m = await g.guard.metrics.recipientLookups.get();
    return m.values.find((v) => v.labels.source === source && v.labels.result === result)?.value ?? 0;
  }

  async function open(from: string): Promise<Dialog> {
    const d = await Dialog.connect(g.port, { localAddress: from });
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO client.test')).code).toBe(250);
    expect((await d.cmd('MAIL FROM:<sender@outside.test>')).code).toBe(250);
    return d;
  }

  /** RCPT each address; "code" for an accepted one, "code enhanced" for a refusal. */
  async function rcpts(d: Dialog, addresses: string[]): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const a of addresses) {
      const r = await d.cmd(`RCPT TO:<${a}>`, 5_000);
      out[a] = r.code < 400 ? String(r.code) : `${r.code} ${r.lines[0]?.split(' ')[0] ?? ''}`;
    }
    return out;
  }

  /** The RCPT lines the backend received since `seen` was taken, across all its connections, lower-cased and sorted. */
  const rcptLines = (seen: () => string[]) => seen().filter((l) => /^RCPT TO:/i.test(l)).map((l) => l.toLowerCase()).sort();

  test('primary SMTP:, alias smtp: and mail pass (any case) and are delivered; unknown get 550 5.1.1, never forwarded', async () => {
    const seen = since(backend);
    const d = await open('127.0.0.9');
    expect(await rcpts(d, ['alice@example.test', 'ALLY@Example.Test', 'nobody@example.test', 'Bob@EXAMPLE.test', 'dave@example.test'])).toEqual({
      'alice@example.test': '250',
      'ALLY@Example.Test': '250',
      'nobody@example.test': '550 5.1.1',
      'Bob@EXAMPLE.test': '250',
      'dave@example.test': '550 5.1.1', // only a SIP: proxy address: not a mailbox
    });
    expect((await d.cmd('DATA')).code).toBe(354);
    const before = backend.messages.length;
    expect((await d.cmd('Subject: ldap\r\n\r\nhello directory\r\n.')).code).toBe(250);
    await withTimeout(backend.waitForMessages(before + 1), 5_000, 'message');
    expect(backend.messages.at(-1)!.rcptTo.map((r) => r.toLowerCase()).sort()).toEqual(['alice@example.test', 'ally@example.test', 'bob@example.test']);
    expect(forwardedRcpts().filter((l) => l.includes('nobody@') || l.includes('dave@'))).toEqual([]);
    expect(rcptLines(seen)).toEqual(['rcpt to:<alice@example.test>', 'rcpt to:<ally@example.test>', 'rcpt to:<bob@example.test>']);
    d.close();
  });

  test('the cache serves a repeat without a query (relay_guard_recipient_lookups_total{source="cache"})', async () => {
    const seen = since(backend);
    const d = await open('127.0.0.12');
    expect(await rcpts(d, ['carol-unknown@example.test'])).toEqual({ 'carol-unknown@example.test': '550 5.1.1' }); // first: a query
    const queries = validator().cacheStats.ldapQueries;
    const knownHits = await lookups('cache', 'known');
    const unknownHits = await lookups('cache', 'unknown');
    const ldapKnown = await lookups('ldap', 'known');
    expect(await rcpts(d, ['alice@example.test', 'Alice@Example.Test', 'carol-unknown@example.test'])).toEqual({
      'alice@example.test': '250',
      'Alice@Example.Test': '250',
      'carol-unknown@example.test': '550 5.1.1', // negative answers are cached too
    });
    expect(validator().cacheStats.ldapQueries).toBe(queries);
    expect(await lookups('cache', 'known')).toBe(knownHits + 2);
    expect(await lookups('cache', 'unknown')).toBe(unknownHits + 1);
    expect(await lookups('ldap', 'known')).toBe(ldapKnown);
    // As Prometheus scrapes it.
    const text = await g.guard.metrics.register.getSingleMetricAsString('relay_guard_recipient_lookups_total');
    expect(text).toContain(`relay_guard_recipient_lookups_total{source="cache",result="known"} ${knownHits + 2}`);
    expect(rcptLines(seen)).toEqual(['rcpt to:<alice@example.test>', 'rcpt to:<alice@example.test>']);
    d.close();
  });

  test('harvest: unknown recipients from one client → ban → the next connection gets 554 before the backend', async () => {
    const HARVESTER = '127.0.0.31';
    const seen = since(backend);
    const d = await open(HARVESTER);
    const guesses = ['aaron', 'abby', 'adam'].map((n) => `${n}@example.test`);
    for (const a of guesses) expect(await rcpts(d, [a])).toEqual({ [a]: '550 5.1.1' });
    const banned = await d.cmd('RCPT TO:<adele@example.test>', 5_000);
    expect(banned.code, banned.text).toBe(421);
    await d.waitClosed();
    // Pooled: the pool may still be topping up after the harvester's MAIL borrowed a session.
    const pool = g.guard.services.pool;
    if (pool) await until(() => pool.total === pool.live, 5_000, 'no pooled session being opened');
    const before = backend.connections.length;
    const next = await Dialog.connect(g.port, { localAddress: HARVESTER });
    const r = await next.reply();
    expect(r.code, r.text).toBe(554);
    await next.waitClosed();
    expect(backend.connections.length).toBe(before);
    expect(forwardedRcpts().filter((l) => /aaron|abby|adam|adele/.test(l))).toEqual([]);
    expect(rcptLines(seen)).toEqual([]);
  });

  test('a frozen directory yields 451 4.4.3 within the lookup timeout, never 550', async () => {
    const seen = since(backend);
    const d = await open('127.0.0.13');
    await slapd.pause();
    try {
      const started = Date.now();
      expect(await rcpts(d, ['frozen-1@example.test'])).toEqual({ 'frozen-1@example.test': '451 4.4.3' });
      expect(Date.now() - started).toBeLessThan(LOOKUP_TIMEOUT_MS + 2_000);
    } finally {
      slapd.resume();
    }
    expect(rcptLines(seen)).toEqual([]);
    d.close();
  });

  test('a stopped directory yields 451 4.4.3 (never 550); cached answers still serve; it recovers when slapd is back', async () => {
    const errorsBefore = await lookups('ldap', 'error');
    const seen = since(backend);
    await slapd.stop();
    try {
      const d = await open('127.0.0.14');
      expect(await rcpts(d, ['eve@example.test', 'bob@example.test', 'nobody-else@example.test', 'alice@example.test', 'x1@example.test', 'x2@example.test'])).toEqual({
        'eve@example.test': '451 4.4.3',
        'bob@example.test': '250', // cached positive answer
        'nobody-else@example.test': '451 4.4.3',
        'alice@example.test': '250',
        // our own failures never count as unknown recipients: no harvest ban (limit 3)
        'x1@example.test': '451 4.4.3',
        'x2@example.test': '451 4.4.3',
      });
      expect(await lookups('ldap', 'error')).toBeGreaterThanOrEqual(errorsBefore + 2);
      expect(forwardedRcpts().filter((l) => l.includes('eve@') || l.includes('nobody-else@'))).toEqual([]);
      d.close();
    } finally {
      await slapd.start();
    }
    // The failures were not cached: with the directory back, the same addresses get real answers.
    const d = await open('127.0.0.14');
    expect(await rcpts(d, ['eve@example.test', 'nobody-else@example.test', 'ally@example.test'])).toEqual({
      'eve@example.test': '550 5.1.1',
      'nobody-else@example.test': '550 5.1.1',
      'ally@example.test': '250',
    });
    // Only the accepted recipients ever reached the backend.
    expect(rcptLines(seen)).toEqual(['rcpt to:<alice@example.test>', 'rcpt to:<ally@example.test>', 'rcpt to:<bob@example.test>']);
    d.close();
  });

  test('afterwards no client session is left (pooled: every pooled session idle) and a next message goes through with only its own envelope', async () => {
    await until(() => g.guard.services.registry.size === 0, 5_000, 'no client session left');
    const pool = g.guard.services.pool;
    if (pool) await until(() => pool.total === pool.idleCount && pool.idleCount >= 2, 5_000, 'every pooled session idle');
    const seen = since(backend);
    const d = await open('127.0.0.15');
    expect(await rcpts(d, ['bob@example.test', 'nobody@example.test'])).toEqual({ 'bob@example.test': '250', 'nobody@example.test': '550 5.1.1' });
    expect((await d.cmd('DATA')).code).toBe(354);
    const before = backend.messages.length;
    expect((await d.cmd(`Subject: after ${mode}\r\n\r\nlast\r\n.`)).code).toBe(250);
    await withTimeout(backend.waitForMessages(before + 1), 5_000, 'message');
    expect(backend.messages.slice(before).map((m) => ({ from: m.mailFrom, to: m.rcptTo.map((r) => r.toLowerCase()) }))).toEqual([{ from: 'sender@outside.test', to: ['bob@example.test'] }]);
    expect(rcptLines(seen)).toEqual(['rcpt to:<bob@example.test>']);
    expect((await d.cmd('QUIT')).code).toBe(221);
    await d.waitClosed();
  });
});
