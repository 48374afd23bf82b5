/** DNS list pieces without I/O: postscreen's A-record filter and the reversed query name. */
import { describe, expect, test } from 'vitest';
import { DEFAULT_RECORD_FILTER, parseRecordFilter } from '../../src/dnsbl/record-filter.js';
import { queryName, reversedAddress } from '../../src/dnsbl/query-name.js';
import { compileLists } from '../../src/dnsbl/dnsbl-scorer.js';

describe('parseRecordFilter (postscreen syntax)', () => {
  const cases = [
    // single values and ranges
    { filter: '127.0.0.2', address: '127.0.0.2', want: true },
    { filter: '127.0.0.2', address: '127.0.0.3', want: false },
    { filter: '127.0.0.[2..11]', address: '127.0.0.2', want: true },
    { filter: '127.0.0.[2..11]', address: '127.0.0.11', want: true },
    { filter: '127.0.0.[2..11]', address: '127.0.0.12', want: false },
    { filter: '127.0.0.[2..11]', address: '127.0.0.1', want: false },
    // lists of values and ranges, in any octet
    { filter: '127.0.0.[17;18]', address: '127.0.0.18', want: true },
    { filter: '127.0.0.[17;18]', address: '127.0.0.19', want: false },
    { filter: '127.0.[2..15].[2..3]', address: '127.0.9.3', want: true },
    { filter: '127.0.[2..15].[2..3]', address: '127.0.1.3', want: false },
    { filter: '127.0.0.[2;4..6]', address: '127.0.0.5', want: true },
    // answers that are not IPv4 never match
    { filter: '127.0.0.2', address: '::1', want: false },
  ];
  test.each(cases)('$filter vs $address → $want', ({ filter, address, want }) => {
    const p = parseRecordFilter(filter);
    expect(p.ok).toBe(true);
    if (p.ok) expect(p.filter(address)).toBe(want);
  });

  test.each(['127.0.0', '127.0.0.256', '127.0.0.[2..]', '127.0.0.[11..2]', '127.0.0.[2', 'a.b.c.d', '127.0.0.2.1'])('refuses %s', (bad) => {
    expect(parseRecordFilter(bad).ok).toBe(false);
  });

  test('without a filter: any 127/8 answer except 127.255.255.x (a list saying "query refused")', () => {
    expect(DEFAULT_RECORD_FILTER('127.0.0.2')).toBe(true);
    expect(DEFAULT_RECORD_FILTER('127.0.0.20')).toBe(true);
    expect(DEFAULT_RECORD_FILTER('127.255.255.254')).toBe(false);
    expect(DEFAULT_RECORD_FILTER('10.0.0.2')).toBe(false);
  });

  test('a bad filter in the configuration names its entry', () => {
    expect(() => compileLists({ threshold: 1, cacheSize: 10, lists: [{ zone: 'a.test', weight: 1 }, { zone: 'b.test', weight: 1, match: '127.0.0.[9..2]' }] })).toThrow(/dnsbl\.lists\.1\.match/);
  });
});

describe('query names (RFC 5782 §2)', () => {
  test('IPv4 is reversed by octet', () => {
    expect(queryName('192.0.2.99', 'bl.test')).toBe('99.2.0.192.bl.test');
    expect(queryName('127.0.0.9', 'BL.Test.')).toBe('9.0.0.127.bl.test');
  });
  test('an IPv4-mapped IPv6 client is asked about as IPv4', () => {
    expect(reversedAddress('::ffff:192.0.2.1')).toBe('1.2.0.192');
  });
  test('IPv6 is reversed by nibble, all 32 of them', () => {
    expect(queryName('2001:db8:1:2:3:4:567:89ab', 'bl.test')).toBe('b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test');
  });
  test('no name for something that is not an address', () => {
    expect(queryName('not-an-ip', 'bl.test')).toBeUndefined();
  });
});
