import { mkdtempSync, readFileSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { BanError, BanList } from '../../src/limits/bans.js';
import { createMetrics } from '../../src/observability/metrics.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'rg-bans-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('BanList', () => {
  test('exact addresses match in canonical form, IPv4-mapped IPv6 included', () => {
    const bans = new BanList({ clock: new ManualClock() });
    bans.add({ target: '192.0.2.7', reason: 'test', source: 'manual' });
    bans.add({ target: '2001:DB8::0:1', reason: 'test', source: 'manual' });
    expect(bans.check('192.0.2.7')?.target).toBe('192.0.2.7');
    expect(bans.check('::ffff:192.0.2.7')?.target).toBe('192.0.2.7');
    expect(bans.check('2001:db8::1')?.target).toBe('2001:db8::1');
    expect(bans.check('192.0.2.8')).toBeUndefined();
    expect(bans.check('2001:db8::2')).toBeUndefined();
    expect(bans.check('not an ip')).toBeUndefined();
  });

  const cidrCases = [
    { name: 'IPv4 /24 inside', target: '198.51.100.0/24', ip: '198.51.100.255', hit: true },
    { name: 'IPv4 /24 outside', target: '198.51.100.0/24', ip: '198.51.101.0', hit: false },
    { name: 'IPv4 /24 via mapped IPv6', target: '198.51.100.0/24', ip: '::ffff:198.51.100.9', hit: true },
    { name: 'IPv4 /13 odd boundary inside', target: '10.8.0.0/13', ip: '10.15.255.255', hit: true },
    { name: 'IPv4 /13 odd boundary outside', target: '10.8.0.0/13', ip: '10.16.0.0', hit: false },
    { name: 'IPv6 /64 inside', target: '2001:db8:1:2::/64', ip: '2001:db8:1:2:ffff::1', hit: true },
    { name: 'IPv6 /64 outside', target: '2001:db8:1:2::/64', ip: '2001:db8:1:3::1', hit: false },
    { name: 'IPv4 network never matches IPv6', target: '0.0.0.0/0', ip: '2001:db8::1', hit: false },
  ];
  test.each(cidrCases)('CIDR: $name', ({ target, ip, hit }) => {
    const bans = new BanList({ clock: new ManualClock() });
    bans.add({ target, reason: 'r', source: 'manual', force: true });
    expect(bans.check(ip) !== undefined).toBe(hit);
  });

  test('CIDR targets are normalised; a /32 is a host', () => {
    const bans = new BanList({ clock: new ManualClock() });
    expect(bans.add({ target: '192.0.2.77/24', reason: 'r', source: 'manual' }).target).toBe('192.0.2.0/24');
    expect(bans.add({ target: '192.0.2.77/32', reason: 'r', source: 'manual' }).target).toBe('192.0.2.77');
    expect(bans.remove('192.0.2.1/24')).toBe(true);
    expect(bans.remove('192.0.2.0/24')).toBe(false);
  });

  test.each(['', 'example.com', '192.0.2.1/33', '192.0.2.1/-1', '::1/129', '300.1.1.1', '1.2.3.4/24/1', '192.0.2.1/ 8'])(
    'bad target %j throws BanError RG_ERR_BANS_BAD_TARGET',
    (target) => {
      const bans = new BanList({ clock: new ManualClock() });
      let err: unknown;
      try {
        bans.add({ target, reason: 'r', source: 'manual' });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(BanError);
      expect((err as BanError).code).toBe('RG_ERR_BANS_BAD_TARGET');
      expect((err as BanError).statusCode).toBe(400);
    },
  );

  test('bad duration is refused', () => {
    const bans = new BanList({ clock: new ManualClock() });
    expect(() => bans.add({ target: '192.0.2.1', durationMs: -5, reason: 'r', source: 'manual' })).toThrow(BanError);
  });

  test('bans expire by the injected clock and are pruned', () => {
    const clock = new ManualClock(0);
    const bans = new BanList({ clock });
    const b = bans.add({ target: '192.0.2.1', durationMs: 60_000, reason: 'r', source: 'automatic' });
    bans.add({ target: '192.0.3.0/24', durationMs: 30_000, reason: 'r', source: 'automatic' });
    expect(b.expiresAt).toBe(new Date(60_000).toISOString());
    clock.advance(29_999);
    expect(bans.check('192.0.3.3')).toBeDefined();
    clock.advance(1);
    expect(bans.check('192.0.3.3')).toBeUndefined();
    expect(bans.check('192.0.2.1')).toBeDefined();
    clock.advance(30_000);
    expect(bans.check('192.0.2.1')).toBeUndefined();
    expect(bans.list()).toEqual([]);
    expect(bans.size).toBe(0);
  });

  test('an automatic ban never replaces a manual one', () => {
    const bans = new BanList({ clock: new ManualClock() });
    bans.add({ target: '192.0.2.1', reason: 'by hand', source: 'manual' });
    const b = bans.add({ target: '192.0.2.1', durationMs: 1_000, reason: 'limit x', source: 'automatic' });
    expect(b).toMatchObject({ source: 'manual', reason: 'by hand' });
    expect(b.expiresAt).toBeUndefined();
  });

  test('manual bans survive a restart (new instance, same file); automatic ones do not', () => {
    const file = join(dir, 'bans.yaml');
    const clock = new ManualClock(1_000_000);
    const a = new BanList({ file, clock });
    a.add({ target: '203.0.113.0/24', reason: 'spam run', source: 'manual' });
    a.add({ target: '203.0.114.5', durationMs: 3_600_000, reason: 'harvest', source: 'manual' });
    a.add({ target: '203.0.115.5', durationMs: 3_600_000, reason: 'limit x', source: 'automatic' });
    expect(readdirSync(dir)).toEqual(['bans.yaml']); // no temp file left behind

    const b = new BanList({ file, clock });
    expect(b.list().map((x) => x.target).sort()).toEqual(['203.0.113.0/24', '203.0.114.5']);
    expect(b.check('203.0.113.9')?.reason).toBe('spam run');
    expect(b.check('203.0.115.5')).toBeUndefined();

    expect(b.remove('203.0.113.0/24')).toBe(true);
    clock.advance(3_600_000); // the timed one expires
    const c = new BanList({ file, clock });
    expect(c.list()).toEqual([]);
    expect(readFileSync(file, 'utf8')).not.toContain('203.0.113.0/24');
  });

  test('a corrupt ban file fails loudly', () => {
    const file = join(dir, 'bans.yaml');
    writeFileSync(file, 'bans: [ { target: "nonsense" } ]\n');
    expect(() => new BanList({ file, clock: new ManualClock() })).toThrow(BanError);
    writeFileSync(file, 'bans: {\n');
    expect(() => new BanList({ file, clock: new ManualClock() })).toThrowError(/not valid YAML/);
  });

  test('bounded: the oldest automatic ban is evicted; a list full of manual bans refuses more', () => {
    const bans = new BanList({ clock: new ManualClock(), maxEntries: 3 });
    bans.add({ target: '192.0.2.1', reason: 'm', source: 'manual' });
    bans.add({ target: '192.0.2.2', durationMs: 1_000, reason: 'a', source: 'automatic' });
    bans.add({ target: '192.0.2.3', durationMs: 1_000, reason: 'a', source: 'automatic' });
    bans.add({ target: '192.0.2.4', durationMs: 1_000, reason: 'a', source: 'automatic' });
    expect(bans.size).toBe(3);
    expect(bans.check('192.0.2.2')).toBeUndefined();
    expect(bans.check('192.0.2.4')).toBeDefined();
    bans.add({ target: '192.0.2.5', reason: 'm', source: 'manual' });
    bans.add({ target: '192.0.2.6', reason: 'm', source: 'manual' });
    expect(() => bans.add({ target: '192.0.2.7', reason: 'm', source: 'manual' })).toThrowError(expect.objectContaining({ code: 'RG_ERR_BANS_FULL' }));
  });

  test('bans_active gauge follows adds, removals and expiry', async () => {
    const metrics = createMetrics(new Registry(), { defaultMetrics: false });
    const clock = new ManualClock(0);
    const bans = new BanList({ clock, metrics });
    bans.add({ target: '192.0.2.1', reason: 'm', source: 'manual' });
    bans.add({ target: '192.0.2.2', durationMs: 10, reason: 'a', source: 'automatic' });
    const values = async () => Object.fromEntries((await metrics.bansActive.get()).values.map((v) => [v.labels.source, v.value]));
    expect(await values()).toEqual({ manual: 1, automatic: 1 });
    clock.advance(10);
    bans.list();
    expect(await values()).toEqual({ manual: 1, automatic: 0 });
    bans.remove('192.0.2.1');
    expect(await values()).toEqual({ manual: 0, automatic: 0 });
  });
});
