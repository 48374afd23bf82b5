import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import {
  formatIp,
  formatIPv6,
  ipFromBytes,
  ipInNetwork,
  ipToBytes,
  maskIp,
  parseHostAddress,
  parseIPv6,
  parseIp,
  parseNetwork,
} from '../../src/util/ip-address.js';

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

describe('formatIPv6 with mappedAsDottedQuad (RFC 5952 §5)', () => {
  test.each([
    ['::ffff:c000:0201', '::ffff:192.0.2.1'],
    ['::FFFF:192.0.2.1', '::ffff:192.0.2.1'],
    ['::ffff:0:0', '::ffff:0.0.0.0'],
    // only ::ffff:0:0/96 is mapped: neighbours stay hex
    ['::fffe:c000:201', '::fffe:c000:201'],
    ['1::ffff:c000:201', '1::ffff:c000:201'],
    ['::c000:201', '::c000:201'],
    ['2001:DB8::1', '2001:db8::1'],
  ])('%s is written %s', (input, want) => {
    expect(formatIPv6(parseIPv6(input) ?? -1n, { mappedAsDottedQuad: true })).toBe(want);
  });

  test('without the option a mapped address stays hex', () => {
    expect(formatIPv6(parseIPv6('::ffff:192.0.2.1') ?? -1n)).toBe('::ffff:c000:201');
  });

  test('property: both forms parse back to the same value; hex form equals WHATWG URL serialisation', () => {
    fc.assert(fc.property(fc.oneof(fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }), fc.bigInt({ min: 0xffff00000000n, max: 0xffffffffffffn })), (v) => {
      const dotted = formatIPv6(v, { mappedAsDottedQuad: true });
      expect(parseIPv6(dotted)).toBe(v);
      const hex = formatIPv6(v);
      expect(new URL(`http://[${hex}]/`).hostname).toBe(`[${hex}]`);
    }));
  });
});

describe('parseHostAddress', () => {
  test.each([
    ['192.0.2.7', '192.0.2.7'],
    ['::ffff:192.0.2.7', '192.0.2.7'],
    ['[::1]', '::1'],
    ['fe80::1%eth0', 'fe80::1'],
    ['[fe80::1%25eth0]', 'fe80::1'],
    ['2001:DB8:0::1', '2001:db8::1'],
  ])('%s is host %s', (s, want) => {
    const a = parseHostAddress(s);
    expect(a && formatIp(a)).toBe(want);
  });
  test.each(['', '[1.2.3.4]', '1.2.3.4%eth0', '[::1', 'unix-socket', '1.2.3.4::', '1:2:3:4:5:1.2.3.4::', '01.2.3.4'])('refuses %s', (s) => {
    expect(parseHostAddress(s)).toBeUndefined();
  });
});

describe('bytes, masks and networks', () => {
  test('ipFromBytes / ipToBytes', () => {
    expect(ipFromBytes(Uint8Array.of(192, 0, 2, 1))).toEqual({ family: 4, value: 0xc0000201n });
    expect(ipFromBytes(new Uint8Array(16).fill(0xff))).toEqual({ family: 6, value: (1n << 128n) - 1n });
    expect(ipFromBytes(new Uint8Array(5))).toBeUndefined();
    expect([...ipToBytes({ family: 4, value: 0xc0000201n })]).toEqual([192, 0, 2, 1]);
  });

  test('property: bytes round-trip', () => {
    fc.assert(fc.property(fc.oneof(fc.uint8Array({ minLength: 4, maxLength: 4 }), fc.uint8Array({ minLength: 16, maxLength: 16 })), (b) => {
      const a = ipFromBytes(b);
      expect(a).toBeDefined();
      if (a) expect([...ipToBytes(a)]).toEqual([...b]);
    }));
  });

  test('maskIp clamps the prefix', () => {
    const a = parseIp('192.0.2.77');
    const b = parseIp('2001:db8:1:2:3:4:5:6');
    if (!a || !b) throw new Error('parse');
    expect(formatIp(maskIp(a, 24))).toBe('192.0.2.0');
    expect(formatIp(maskIp(a, 40))).toBe('192.0.2.77');
    expect(formatIp(maskIp(a, -3))).toBe('0.0.0.0');
    expect(formatIp(maskIp(a, 23.9))).toBe('192.0.2.0');
    expect(formatIp(maskIp(b, 48))).toBe('2001:db8:1::');
  });

  test('ipInNetwork: same family only, prefix bits compared', () => {
    const net = parseNetwork('198.51.100.0/23');
    if (!net.ok) throw new Error(net.reason);
    const at = (s: string): boolean => ipInNetwork(parseIp(s) ?? { family: 4, value: -1n }, net.network);
    expect(at('198.51.101.255')).toBe(true);
    expect(at('198.51.102.0')).toBe(false);
    expect(at('::ffff:198.51.100.1')).toBe(false);
    const all6 = parseNetwork('::/0');
    if (!all6.ok) throw new Error(all6.reason);
    expect(ipInNetwork(parseIp('2001:db8::1') ?? { family: 4, value: 0n }, all6.network)).toBe(true);
    expect(ipInNetwork(parseIp('192.0.2.1') ?? { family: 6, value: 0n }, all6.network)).toBe(false);
  });
});

describe('parsed addresses are remembered, never confused', () => {
  test('10 000 distinct addresses (and junk), parsed twice across cache overflows, give the same answers', () => {
    const texts = Array.from({ length: 10_000 }, (_, i) =>
      i % 4 === 0 ? `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` : i % 4 === 1 ? `2001:db8::${i.toString(16)}` : i % 4 === 2 ? `[::ffff:192.0.2.${i & 255}]` : `not-an-ip-${i}`,
    );
    const first = texts.map((t) => [parseIp(t), parseHostAddress(t)]);
    const second = texts.map((t) => [parseIp(t), parseHostAddress(t)]);
    expect(second).toEqual(first);
    expect(parseIp('10.0.0.4')).toEqual({ family: 4, value: 0x0a000004n });
    expect(parseHostAddress('[::ffff:192.0.2.7]')).toEqual({ family: 4, value: 0xc0000207n });
    expect(parseIp('not-an-ip-3')).toBeUndefined();
  });
});
