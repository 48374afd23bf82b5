import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { formatIPv6, parseIPv6, parseIp, parseNetwork } from '../../src/smtp/ip-address.js';

describe('ip-address', () => {
  test.each([
    ['::', '::'], ['::1', '::1'], ['2001:DB8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], ['2001:db8:0:0:0:0:2:1', '2001:db8::2:1'],
    ['2001:db8::ffff:192.0.2.1', '2001:db8::ffff:c000:201'], ['1:0:0:2:0:0:0:3', '1:0:0:2::3'], ['1:0:2:3:4:5:6:7', '1:0:2:3:4:5:6:7'],
  ])('RFC 5952 form of %s is %s', (input, want) => {
    const v = parseIPv6(input);
    expect(v).toBeDefined();
    expect(formatIPv6(v ?? 0n)).toBe(want);
  });

  test.each(['1:2:3:4:5:6:7:8:9', '1::2::3', ':1', 'g::1', '1.2.3', '256.1.1.1', 'fe80::1%eth0', '', '::ffff:1.2.3.04'])('refuses %s', (s) => {
    expect(parseIp(s)).toBeUndefined();
  });

  test('bare IPv6 is /128, bare IPv4 is /32', () => {
    expect(parseNetwork('2001:db8::1')).toMatchObject({ ok: true, network: { family: 6, prefix: 128 } });
    expect(parseNetwork('192.0.2.1')).toMatchObject({ ok: true, network: { family: 4, prefix: 32 } });
  });

  test('property: format(parse(format(x))) is stable and parse inverts format', () => {
    fc.assert(fc.property(fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }), (v) => {
      const text = formatIPv6(v);
      expect(parseIPv6(text)).toBe(v);
      expect(parseIPv6(text.toUpperCase())).toBe(v);
    }));
  });

  test('property: arbitrary strings never throw', () => {
    fc.assert(fc.property(fc.string({ maxLength: 60 }), (s) => {
      parseIp(s);
      parseNetwork(s);
    }));
  });
});
