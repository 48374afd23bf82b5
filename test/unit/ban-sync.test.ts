/**
 * The BanList side of ban sharing (ban-sync.ts): change listeners, and applyRemoteBan /
 * applyRemoteRemoval, which take untrusted data from other guards and tell nobody.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { BanList, SHARED_MIN_PREFIX, type BanChange } from '../../src/limits/bans.js';

const NOW = 1_700_000_000_000;
const iso = (ms: number) => new Date(ms).toISOString();

function list(): { bans: BanList; changes: BanChange[]; clock: ManualClock } {
  const clock = new ManualClock(NOW);
  const changes: BanChange[] = [];
  const bans = new BanList({ clock, onChange: (c) => changes.push(c) });
  return { bans, changes, clock };
}

describe('change listeners', () => {
  test('local add and remove are told, with the canonical target; expiry, no-ops and remote changes are not', () => {
    const { bans, changes, clock } = list();
    bans.add({ target: '192.0.2.77/24', durationMs: 60_000, reason: 'r', source: 'manual' });
    expect(changes).toEqual([{ op: 'add', ban: expect.objectContaining({ target: '192.0.2.0/24', source: 'manual', expiresAt: iso(NOW + 60_000) }) }]);
    // An automatic ban does not replace the manual one: nothing changed, nothing told.
    bans.add({ target: '192.0.2.0/24', durationMs: 1_000, reason: 'auto', source: 'automatic' });
    expect(changes).toHaveLength(1);
    expect(bans.remove('192.0.2.1/24')).toBe(true);
    expect(changes[1]).toEqual({ op: 'remove', target: '192.0.2.0/24', ban: expect.objectContaining({ target: '192.0.2.0/24' }) });
    expect(bans.remove('192.0.2.0/24')).toBe(false);
    bans.add({ target: '198.51.100.1', durationMs: 1_000, reason: 'r', source: 'automatic' });
    clock.advance(120_000);
    expect(bans.check('198.51.100.1')).toBeUndefined();
    bans.applyRemoteBan({ target: '203.0.113.5', reason: 'remote', source: 'manual', createdAt: iso(NOW) });
    bans.applyRemoteRemoval('203.0.113.5');
    expect(changes.map((c) => c.op)).toEqual(['add', 'remove', 'add']);
  });

  test('addChangeListener returns its unsubscribe; a throwing listener does not fail the change', () => {
    const { bans } = list();
    const seen: string[] = [];
    bans.addChangeListener(() => {
      throw new Error('boom');
    });
    const off = bans.addChangeListener((c) => seen.push(c.ban.target));
    expect(bans.add({ target: '192.0.2.1', reason: 'r', source: 'manual' }).target).toBe('192.0.2.1');
    off();
    bans.add({ target: '192.0.2.2', reason: 'r', source: 'manual' });
    expect(seen).toEqual(['192.0.2.1']);
    expect(bans.check('192.0.2.2')).toBeDefined();
  });
});

describe('applyRemoteBan', () => {
  test('a valid remote ban is enforced with its own dates', () => {
    const { bans } = list();
    const ban = bans.applyRemoteBan({ target: '2001:DB8::1', reason: 'remote', source: 'automatic', createdAt: iso(NOW - 5_000), expiresAt: iso(NOW + 5_000) });
    expect(ban).toEqual({ target: '2001:db8::1', reason: 'remote', source: 'automatic', createdAt: iso(NOW - 5_000), expiresAt: iso(NOW + 5_000) });
    expect(bans.check('2001:db8::1')?.reason).toBe('remote');
  });

  test('an automatic remote ban never replaces a manual local one; a manual one replaces an automatic one', () => {
    const { bans } = list();
    bans.add({ target: '192.0.2.1', reason: 'admin', source: 'manual' });
    expect(bans.applyRemoteBan({ target: '192.0.2.1', reason: 'auto', source: 'automatic', expiresAt: iso(NOW + 1_000) })?.reason).toBe('admin');
    bans.add({ target: '192.0.2.2', durationMs: 1_000, reason: 'auto', source: 'automatic' });
    bans.applyRemoteBan({ target: '192.0.2.2', reason: 'admin', source: 'manual' });
    expect(bans.check('192.0.2.2')).toMatchObject({ source: 'manual', reason: 'admin' });
  });

  const refused: Array<[string, unknown]> = [
    ['null', null],
    ['an array', ['192.0.2.1']],
    ['a string', '192.0.2.1'],
    ['no target', { reason: 'r', source: 'manual' }],
    ['a bad target', { target: 'example.com', source: 'manual' }],
    ['IPv4 /0', { target: '0.0.0.0/0', source: 'manual' }],
    ['IPv4 /7', { target: '0.0.0.0/7', source: 'manual' }],
    ['IPv6 /0', { target: '::/0', source: 'manual' }],
    ['IPv6 /15', { target: '2000::/15', source: 'manual' }],
    ['mapped IPv4 /0', { target: '::ffff:0.0.0.0/96', source: 'manual' }],
    ['6to4 2002::/16 (every IPv4 host)', { target: '2002::/16', source: 'manual' }],
    ['Teredo 2001::/32', { target: '2001::/32', source: 'manual' }],
    ['an unknown source', { target: '192.0.2.1', source: 'root' }],
    ['no source', { target: '192.0.2.1' }],
    ['a bad expiresAt', { target: '192.0.2.1', source: 'manual', expiresAt: 'soon' }],
    ['a numeric expiresAt', { target: '192.0.2.1', source: 'manual', expiresAt: NOW + 1_000 }],
    ['an expired ban', { target: '192.0.2.1', source: 'manual', expiresAt: iso(NOW) }],
  ];
  test.each(refused)('refuses %s without throwing', (_name, raw) => {
    const { bans } = list();
    expect(bans.applyRemoteBan(raw)).toBeUndefined();
    expect(bans.size).toBe(0);
    expect(bans.check('192.0.2.1')).toBeUndefined();
  });

  test('the narrowest refused and widest accepted networks', () => {
    const { bans } = list();
    expect(bans.applyRemoteBan({ target: `10.0.0.0/${SHARED_MIN_PREFIX[4]}`, source: 'manual' })?.target).toBe('10.0.0.0/8');
    expect(bans.applyRemoteBan({ target: `2a01::/${SHARED_MIN_PREFIX[6]}`, source: 'manual' })?.target).toBe('2a01::/16');
  });

  test('a reason is cut to 200 characters and control characters become spaces; a bad createdAt becomes now', () => {
    const { bans } = list();
    const ban = bans.applyRemoteBan({ target: '192.0.2.1', source: 'manual', reason: `a\r\nb\u0000c${'x'.repeat(500)}`, createdAt: 'yesterday' });
    expect(ban?.reason.startsWith('a b c')).toBe(true);
    expect(ban?.reason).toHaveLength(200);
    expect(ban?.createdAt).toBe(iso(NOW));
  });

  test('property: any JSON never throws and never bans more than a /8 (IPv4) or /16 (IPv6)', () => {
    const { bans } = list();
    const targetish = fc.oneof(
      fc.ipV4().chain((ip) => fc.integer({ min: -1, max: 40 }).map((n) => `${ip}/${n}`)),
      fc.ipV6().chain((ip) => fc.integer({ min: -1, max: 140 }).map((n) => `${ip}/${n}`)),
      fc.ipV4(),
      fc.string(),
    );
    const banish = fc.record(
      {
        target: fc.oneof(targetish, fc.anything()),
        source: fc.oneof(fc.constantFrom('manual', 'automatic'), fc.anything()),
        reason: fc.anything(),
        createdAt: fc.oneof(fc.date({ noInvalidDate: true }).map((d) => d.toISOString()), fc.anything()),
        expiresAt: fc.oneof(fc.constant(undefined), fc.integer({ min: -1e9, max: 1e9 }).map((d) => iso(NOW + d)), fc.anything()),
      },
      { requiredKeys: [] },
    );
    // Well-formed bans (of any width) so that a good share of runs gets past the validation.
    const wellFormed = fc.record({
      target: fc.oneof(fc.ipV4(), fc.ipV4().chain((ip) => fc.integer({ min: 0, max: 32 }).map((n) => `${ip}/${n}`))),
      source: fc.constantFrom('manual', 'automatic'),
      reason: fc.string({ maxLength: 40 }),
      createdAt: fc.constant(iso(NOW)),
      expiresAt: fc.integer({ min: 60_000, max: 1e9 }).map((d) => iso(NOW + d)),
    });
    let taken = 0;
    fc.assert(
      fc.property(fc.oneof(wellFormed, banish, fc.jsonValue()), (raw) => {
        const ban = bans.applyRemoteBan(raw);
        if (!ban) return;
        taken++;
        const slash = ban.target.indexOf('/');
        if (slash >= 0) {
          const prefix = Number(ban.target.slice(slash + 1));
          expect(prefix).toBeGreaterThanOrEqual(ban.target.includes(':') ? 16 : 8);
        }
        expect(bans.check(ban.target.split('/')[0] ?? '')).toBeDefined();
      }),
      { numRuns: 500 },
    );
    expect(taken).toBeGreaterThan(10); // the generator reaches valid bans, not only refusals
    // Whatever was taken, these were never banned.
    expect(bans.list().some((b) => b.target === '0.0.0.0/0' || b.target === '::/0')).toBe(false);
  });
});

describe('applyRemoteRemoval', () => {
  test('lifts exactly this target, quietly; junk is ignored', () => {
    const { bans, changes } = list();
    bans.add({ target: '192.0.2.0/24', reason: 'r', source: 'manual' });
    expect(bans.applyRemoteRemoval('192.0.2.9/24')).toBe(true);
    expect(bans.check('192.0.2.9')).toBeUndefined();
    expect(changes.map((c) => c.op)).toEqual(['add']);
    for (const junk of [undefined, null, 42, {}, 'example.com', '192.0.2.0/24']) expect(bans.applyRemoteRemoval(junk)).toBe(false);
  });
});
