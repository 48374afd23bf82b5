import { Registry } from 'prom-client';
import { describe, expect, test } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { BanList } from '../../src/limits/bans.js';
import { RateLimiter, type LimitSubject } from '../../src/limits/limiter.js';
import { MemoryLimitStore } from '../../src/limits/memory-store.js';
import { DEFAULT_LIMITS, type LimitRule, type LimitsRules } from '../../src/limits/schema.js';
import type { LimitStore } from '../../src/limits/store.js';
import { createMetrics } from '../../src/observability/metrics.js';

function setup(limits: LimitRule[], extra: Partial<LimitsRules> = {}, store?: LimitStore) {
  const clock = new ManualClock(0);
  const metrics = createMetrics(new Registry(), { defaultMetrics: false });
  const bans = new BanList({ clock, metrics });
  let rules: LimitsRules = { enabled: true, prefixV4: 24, prefixV6: 64, limits, ...extra };
  const limiter = new RateLimiter({ store: store ?? new MemoryLimitStore({ clock }), rules: () => rules, bans, clock, metrics });
  const hits = async (limit: string, action: string) =>
    (await metrics.limitHits.get()).values.find((v) => v.labels.limit === limit && v.labels.action === action)?.value ?? 0;
  return { clock, metrics, bans, limiter, hits, setRules: (r: LimitsRules) => (rules = r) };
}

const stranger: LimitSubject = { clientIp: '203.0.113.9', trusted: false };

async function repeat(limiter: RateLimiter, n: number, event: Parameters<RateLimiter['check']>[0], subject: LimitSubject) {
  const out = [];
  for (let i = 0; i < n; i++) out.push(await limiter.check(event, subject));
  return out;
}

describe('RateLimiter actions', () => {
  test('tempfail: 450 4.7.1 after the limit, counted in limit_hits', async () => {
    const { limiter, hits } = setup([{ id: 'msg', event: 'message', key: 'ip', limit: 2, window: '1m', action: 'tempfail' }]);
    const d = await repeat(limiter, 3, 'message', stranger);
    expect(d.map((x) => x.action)).toEqual(['allow', 'allow', 'tempfail']);
    const last = d[2];
    expect(last).toMatchObject({ limitId: 'msg', reply: { code: 450, enhanced: '4.7.1' }, delayMs: 30_000 });
    expect(last && 'reply' in last && last.reply.close).toBeFalsy();
    expect(await hits('msg', 'tempfail')).toBe(1);
  });

  test('close: 421 4.7.0 with close', async () => {
    const { limiter } = setup([{ id: 'conn', event: 'connection', key: 'ip', limit: 1, window: '1m', action: 'close' }]);
    await limiter.check('connection', stranger);
    expect(await limiter.check('connection', stranger)).toMatchObject({ action: 'close', reply: { code: 421, enhanced: '4.7.0', close: true } });
  });

  test('tarpit: a delay, the event carries on', async () => {
    const { limiter, hits } = setup([{ id: 'slow', event: 'recipient', key: 'ip', limit: 1, window: '1m', action: 'tarpit', tarpit: '3s' }]);
    await limiter.check('recipient', stranger);
    expect(await limiter.check('recipient', stranger)).toMatchObject({ action: 'tarpit', limitId: 'slow', delayMs: 3_000 });
    expect(await hits('slow', 'tarpit')).toBe(1);
  });

  test('custom reply overrides code and text', async () => {
    const { limiter } = setup([
      { id: 'msg', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tempfail', reply: { code: 451, enhanced: '4.7.1', text: 'Slow down please' } },
    ]);
    await limiter.check('message', stranger);
    expect(await limiter.check('message', stranger)).toMatchObject({ reply: { code: 451, enhanced: '4.7.1', lines: ['Slow down please'] } });
  });

  test('ban: 421 close, adds an automatic ban; repeat offenders escalate ×2 up to maxBan', async () => {
    const { limiter, bans, clock, hits } = setup([
      { id: 'relay', event: 'relay-denied', key: 'ip', limit: 2, window: '10m', action: 'ban', ban: '1h', maxBan: '3h' },
    ]);
    const banned: number[] = [];
    for (let round = 0; round < 4; round++) {
      const d = await repeat(limiter, 3, 'relay-denied', stranger);
      const last = d[2];
      expect(last).toMatchObject({ action: 'ban', limitId: 'relay', reply: { code: 421, enhanced: '4.7.0', close: true } });
      if (last?.action === 'ban') banned.push(last.banMs ?? 0);
      const ban = bans.check(stranger.clientIp);
      expect(ban).toMatchObject({ source: 'automatic', reason: 'limit relay' });
      expect(Date.parse(ban?.expiresAt ?? '')).toBe(clock.now() + (last?.action === 'ban' ? last.banMs ?? 0 : 0));
      clock.advance(banned[banned.length - 1] ?? 0); // ban served, window long past
      expect(bans.check(stranger.clientIp)).toBeUndefined();
    }
    expect(banned).toEqual([3_600_000, 7_200_000, 10_800_000, 10_800_000]);
    expect(await hits('relay', 'ban')).toBe(4);
  });

  test('a prefix limit bans the whole prefix', async () => {
    const { limiter, bans } = setup([{ id: 'harvest', event: 'unknown-recipient', key: 'prefix', limit: 1, window: '1m', action: 'ban', ban: '1h' }]);
    await limiter.check('unknown-recipient', { clientIp: '198.51.100.1', trusted: false });
    expect((await limiter.check('unknown-recipient', { clientIp: '198.51.100.2', trusted: false })).action).toBe('ban');
    expect(bans.check('198.51.100.250')?.target).toBe('198.51.100.0/24');
  });

  test('the strongest refusal wins; every matching limit counts', async () => {
    const { limiter } = setup([
      { id: 'soft', event: 'auth-failure', key: 'ip', limit: 1, window: '1m', action: 'tempfail' },
      { id: 'hard', event: 'auth-failure', key: 'ip', limit: 1, window: '1m', action: 'ban', ban: '1m' },
    ]);
    await limiter.check('auth-failure', stranger);
    expect(await limiter.check('auth-failure', stranger)).toMatchObject({ action: 'ban', limitId: 'hard' });
  });
});

describe('RateLimiter keys and exemptions', () => {
  test('trusted networks and authenticated sessions skip exemptTrusted limits', async () => {
    const { limiter } = setup([{ id: 'msg', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tempfail', exemptTrusted: true }]);
    const trusted = { clientIp: '10.0.0.1', trusted: true };
    const authed = { clientIp: '203.0.113.50', trusted: false, authUser: 'alice' };
    expect((await repeat(limiter, 5, 'message', trusted)).every((d) => d.action === 'allow')).toBe(true);
    expect((await repeat(limiter, 5, 'message', authed)).every((d) => d.action === 'allow')).toBe(true);
    expect((await repeat(limiter, 2, 'message', stranger)).map((d) => d.action)).toEqual(['allow', 'tempfail']);
  });

  test('exemptTrusted defaults to true; false applies the limit to trusted clients', async () => {
    const { limiter } = setup([
      { id: 'default', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tempfail' },
      { id: 'strict', event: 'protocol-error', key: 'ip', limit: 1, window: '1m', action: 'close', exemptTrusted: false },
    ]);
    const trusted = { clientIp: '10.0.0.1', trusted: true };
    expect((await repeat(limiter, 3, 'message', trusted)).map((d) => d.action)).toEqual(['allow', 'allow', 'allow']);
    expect((await repeat(limiter, 2, 'protocol-error', trusted)).map((d) => d.action)).toEqual(['allow', 'close']);
  });

  test('per-user limits apply to authenticated sessions (compromised-account brake), keyed by user', async () => {
    const { limiter } = setup([{ id: 'user-msg', event: 'message', key: 'user', limit: 2, window: '1h', action: 'tempfail', exemptTrusted: true }]);
    const fromA = { clientIp: '203.0.113.1', trusted: false, authUser: 'Alice' };
    const fromB = { clientIp: '198.51.100.1', trusted: false, authUser: 'alice' };
    expect((await limiter.check('message', fromA)).action).toBe('allow');
    expect((await limiter.check('message', fromB)).action).toBe('allow');
    expect((await limiter.check('message', fromA)).action).toBe('tempfail');
    expect((await limiter.check('message', { ...fromA, authUser: 'bob' })).action).toBe('allow');
    // no user: the limit does not apply
    expect((await repeat(limiter, 3, 'message', stranger)).every((d) => d.action === 'allow')).toBe(true);
  });

  test('per-sender recipients: the null sender <> is one key (backscatter)', async () => {
    const { limiter } = setup([{ id: 'rcpt-sender', event: 'recipient', key: 'sender', limit: 3, window: '1h', action: 'tempfail' }]);
    const a = { clientIp: '203.0.113.1', trusted: false, sender: '' };
    const b = { clientIp: '198.51.100.1', trusted: false, sender: '<>' };
    expect((await limiter.check('recipient', a, 2)).action).toBe('allow');
    expect((await limiter.check('recipient', b)).action).toBe('allow');
    expect((await limiter.check('recipient', a)).action).toBe('tempfail');
    expect((await limiter.check('recipient', { ...a, sender: 'x@y.test' })).action).toBe('allow');
  });

  test('per-prefix counts IPv6 /64 neighbours together', async () => {
    const { limiter } = setup([{ id: 'p', event: 'connection', key: 'prefix', limit: 2, window: '1m', action: 'close' }]);
    expect((await limiter.check('connection', { clientIp: '2001:db8:1:1::1', trusted: false })).action).toBe('allow');
    expect((await limiter.check('connection', { clientIp: '2001:db8:1:1::2', trusted: false })).action).toBe('allow');
    expect((await limiter.check('connection', { clientIp: '2001:db8:1:1:ffff::3', trusted: false })).action).toBe('close');
    expect((await limiter.check('connection', { clientIp: '2001:db8:1:2::1', trusted: false })).action).toBe('allow');
  });

  test('disabled limits and disabled rules allow; a new snapshot applies at once', async () => {
    const { limiter, setRules } = setup([{ id: 'm', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tempfail', enabled: false }]);
    expect((await repeat(limiter, 3, 'message', stranger)).every((d) => d.action === 'allow')).toBe(true);
    setRules({ enabled: true, prefixV4: 24, prefixV6: 64, limits: [{ id: 'm2', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tempfail' }] });
    expect((await repeat(limiter, 2, 'message', stranger)).map((d) => d.action)).toEqual(['allow', 'tempfail']);
    setRules({ enabled: false, prefixV4: 24, prefixV6: 64, limits: [{ id: 'm2', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tempfail' }] });
    expect((await limiter.check('message', stranger)).action).toBe('allow');
  });

  test('a store fault allows and counts an internal error', async () => {
    const broken: LimitStore = { name: 'broken', take: () => Promise.reject(new Error('boom')), close: async () => {} };
    const { limiter, metrics } = setup([{ id: 'm', event: 'message', key: 'ip', limit: 1, window: '1m', action: 'tempfail' }], {}, broken);
    expect(await limiter.check('message', stranger)).toEqual({ action: 'allow' });
    expect((await metrics.internalErrors.get()).values.find((v) => v.labels.where === 'limits')?.value).toBe(1);
  });

  test('the shipped defaults never refuse a modest legitimate sender', async () => {
    const { limiter } = setup(DEFAULT_LIMITS.limits);
    const mta = { clientIp: '192.0.2.25', trusted: false, sender: 'news@example.org' };
    // 50 connections, each one message to 5 recipients, within a minute
    for (let i = 0; i < 50; i++) {
      const slot = limiter.acquireConnection(mta);
      expect(slot.allowed).toBe(true);
      expect((await limiter.check('connection', mta)).action).toBe('allow');
      expect((await limiter.check('message', mta)).action).toBe('allow');
      expect((await limiter.check('recipient', mta, 5)).action).toBe('allow');
      if (slot.allowed) slot.release();
    }
  });
});

describe('RateLimiter.acquireConnection', () => {
  const rules: LimitRule[] = [{ id: 'conc', event: 'concurrent', key: 'ip', limit: 2, action: 'close' }];

  test('counts open connections; release frees a slot and is idempotent', async () => {
    const { limiter, hits } = setup(rules);
    const a = limiter.acquireConnection(stranger);
    const b = limiter.acquireConnection(stranger);
    const c = limiter.acquireConnection(stranger);
    expect([a.allowed, b.allowed, c.allowed]).toEqual([true, true, false]);
    if (!c.allowed) expect(c.decision).toMatchObject({ action: 'close', limitId: 'conc', reply: { code: 421, enhanced: '4.7.0', close: true } });
    if (a.allowed) {
      a.release();
      a.release();
    }
    const d = limiter.acquireConnection(stranger);
    expect(d.allowed).toBe(true);
    expect(limiter.acquireConnection(stranger).allowed).toBe(false);
    if (b.allowed) b.release();
    if (d.allowed) d.release();
    expect(limiter.concurrentKeys).toBe(0);
    expect(await hits('conc', 'close')).toBe(2);
  });

  test('a refused connection takes no slot in any limit; trusted clients are exempt', () => {
    const { limiter } = setup([
      { id: 'per-ip', event: 'concurrent', key: 'ip', limit: 1, action: 'close' },
      { id: 'per-prefix', event: 'concurrent', key: 'prefix', limit: 2, action: 'close' },
    ]);
    const a = limiter.acquireConnection({ clientIp: '198.51.100.1', trusted: false });
    expect(limiter.acquireConnection({ clientIp: '198.51.100.1', trusted: false }).allowed).toBe(false);
    // the refusal above did not count against the prefix: one more neighbour fits
    expect(limiter.acquireConnection({ clientIp: '198.51.100.2', trusted: false }).allowed).toBe(true);
    expect(limiter.acquireConnection({ clientIp: '198.51.100.3', trusted: false }).allowed).toBe(false);
    expect(limiter.acquireConnection({ clientIp: '198.51.100.1', trusted: true }).allowed).toBe(true);
    expect(a.allowed).toBe(true);
  });

  test('the concurrency map is bounded', () => {
    const clock = new ManualClock(0);
    const limiter = new RateLimiter({
      store: new MemoryLimitStore(),
      rules: () => ({ enabled: true, prefixV4: 24, prefixV6: 64, limits: rules }),
      bans: new BanList({ clock }),
      clock,
      maxConcurrentKeys: 100,
    });
    for (let i = 0; i < 1_000; i++) expect(limiter.acquireConnection({ clientIp: `10.0.${i >> 8}.${i & 255}`, trusted: false }).allowed).toBe(true);
    expect(limiter.concurrentKeys).toBe(100);
  });

  test('concurrent with ban action bans the address', () => {
    const { limiter, bans } = setup([{ id: 'conc-ban', event: 'concurrent', key: 'ip', limit: 1, action: 'ban', ban: '5m' }]);
    limiter.acquireConnection(stranger);
    const r = limiter.acquireConnection(stranger);
    expect(r.allowed).toBe(false);
    if (!r.allowed) expect(r.decision).toMatchObject({ action: 'ban', banMs: 300_000 });
    expect(bans.check(stranger.clientIp)?.source).toBe('automatic');
  });
});
