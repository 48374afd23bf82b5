/** relay-guard.yaml `dns`, `dnsbl` and `policyServices`: defaults filled, mistakes named by key and line. */
import { describe, expect, test } from 'vitest';
import { ConfigError, parseConfigText } from '../../src/config/load-config.js';

const parse = (yaml: string) => parseConfigText(yaml, 'relay-guard.yaml');
const keyOf = (yaml: string): string => {
  try {
    parse(yaml);
  } catch (err) {
    if (err instanceof ConfigError) return `${err.key}@${err.line}: ${err.detail}`;
    throw err;
  }
  return 'no error';
};

describe('dnsbl and policyServices in relay-guard.yaml', () => {
  test('defaults: weight 1, threshold 1; stage rcpt, timeout 10s, onError tempfail, trusted skip', () => {
    const c = parse('dnsbl:\n  lists:\n    - zone: zen.spamhaus.org\npolicyServices:\n  - address: 127.0.0.1:10023\n');
    expect(c.dnsbl).toMatchObject({ threshold: 1, lists: [{ zone: 'zen.spamhaus.org', weight: 1 }] });
    expect(c.policyServices[0]).toMatchObject({ stage: 'rcpt', timeout: '10s', onError: 'tempfail', trusted: 'skip', maxConnections: 4 });
    expect(c.dns.timeout).toBe('5s');
  });

  const bad = [
    { name: 'a bad A-record filter', yaml: 'dnsbl:\n  lists:\n    - zone: bl.test\n      match: 127.0.0.[9..2]\n', want: /^dnsbl\.lists\.0\.match@4: / },
    { name: 'an unknown listener', yaml: 'dnsbl:\n  listeners: [nope]\n  lists:\n    - zone: bl.test\n', want: /^dnsbl\.listeners\.0@2: no listener named "nope"/ },
    { name: 'a zone that is no DNS name', yaml: 'dnsbl:\n  lists:\n    - zone: "bl test"\n', want: /^dnsbl\.lists\.0\.zone/ },
    { name: 'a bad DNS server', yaml: 'dns:\n  servers: ["not an address"]\n  timeout: 1s\n', want: /^dns\.servers@2: / },
    { name: 'a policy service without a port', yaml: 'policyServices:\n  - address: 127.0.0.1\n', want: /^policyServices\.0\.address/ },
    { name: 'port 0', yaml: 'policyServices:\n  - address: 127.0.0.1:0\n', want: /^policyServices\.0\.address@2: / },
    { name: 'two services, one name', yaml: 'policyServices:\n  - address: 127.0.0.1:1\n    name: a\n  - address: 127.0.0.1:2\n    name: a\n', want: /^policyServices\.1@4: a second service named "a"/ },
    { name: 'an unknown onError', yaml: 'policyServices:\n  - address: 127.0.0.1:1\n    onError: ignore\n', want: /^policyServices\.0\.onError/ },
    { name: 'an unknown key', yaml: 'policyServices:\n  - address: 127.0.0.1:1\n    colour: red\n', want: /unknown key/ },
  ];
  test.each(bad)('$name', ({ yaml, want }) => {
    expect(keyOf(yaml)).toMatch(want);
  });
});
