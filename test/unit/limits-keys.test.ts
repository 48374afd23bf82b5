import { describe, expect, test } from 'vitest';
import { limiterKey } from '../../src/limits/keys.js';
import { formatIp as formatIpAddress, parseHostAddress as parseIpAddress } from '../../src/util/ip-address.js';

describe('limiterKey', () => {
  const cases = [
    // per address: canonical form, IPv4-mapped IPv6 counts as IPv4
    { name: 'IPv4 address', kind: 'ip', value: '192.0.2.7', want: 'ip:192.0.2.7' },
    { name: 'IPv4-mapped IPv6', kind: 'ip', value: '::ffff:192.0.2.7', want: 'ip:192.0.2.7' },
    { name: 'IPv4-mapped IPv6, hex form', kind: 'ip', value: '::FFFF:c000:0207', want: 'ip:192.0.2.7' },
    { name: 'IPv6 canonical (RFC 5952)', kind: 'ip', value: '2001:DB8:0:0:0:0:0:1', want: 'ip:2001:db8::1' },
    { name: 'IPv6 zone id dropped', kind: 'ip', value: 'fe80::1%eth0', want: 'ip:fe80::1' },
    { name: 'not an address is kept', kind: 'ip', value: 'unix-socket', want: 'ip:unix-socket' },
    // per prefix: IPv4 /24, IPv6 /64 by default
    { name: 'IPv4 /24', kind: 'prefix', value: '192.0.2.7', want: 'prefix:192.0.2.0/24' },
    { name: 'mapped IPv6 uses the IPv4 prefix', kind: 'prefix', value: '::ffff:192.0.2.200', want: 'prefix:192.0.2.0/24' },
    { name: 'IPv6 /64', kind: 'prefix', value: '2001:db8:1:2:aaaa:bbbb:cccc:dddd', want: 'prefix:2001:db8:1:2::/64' },
    // users and senders
    { name: 'user case-folded', kind: 'user', value: 'Alice@Example.COM', want: 'user:alice@example.com' },
    { name: 'sender case-folded', kind: 'sender', value: 'Bob@Example.com', want: 'sender:bob@example.com' },
    { name: 'null sender empty', kind: 'sender', value: '', want: 'sender:<>' },
    { name: 'null sender bracketed', kind: 'sender', value: '<>', want: 'sender:<>' },
    { name: 'bracketed sender', kind: 'sender', value: '<x@y.test>', want: 'sender:x@y.test' },
  ] as const;
  test.each(cases)('$name', ({ kind, value, want }) => {
    expect(limiterKey(kind, value, 24, 64)).toBe(want);
  });

  test('custom prefix lengths', () => {
    expect(limiterKey('prefix', '198.51.100.77', 16, 48)).toBe('prefix:198.51.0.0/16');
    expect(limiterKey('prefix', '2001:db8:abcd:1234::1', 16, 48)).toBe('prefix:2001:db8:abcd::/48');
  });

  test('long values are capped', () => {
    expect(limiterKey('user', 'a'.repeat(10_000), 24, 64).length).toBe('user:'.length + 320);
  });
});

describe('parseIpAddress', () => {
  test.each(['1.2.3', '1.2.3.4.5', '256.1.1.1', '01.2.3.4', '1::2::3', '12345::', 'g::1', '', '1.2.3.4/24', '1:2:3:4:5:6:7:8:9'])(
    'rejects %s',
    (s) => expect(parseIpAddress(s)).toBeUndefined(),
  );
  test.each([
    ['::', '::'],
    ['::1', '::1'],
    ['1:0:0:1:0:0:0:1', '1:0:0:1::1'],
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
    ['64:ff9b::192.0.2.33', '64:ff9b::c000:221'],
  ])('round-trips %s as %s', (s, want) => {
    const a = parseIpAddress(s);
    expect(a).toBeDefined();
    if (a) expect(formatIpAddress(a)).toBe(want);
  });
});
