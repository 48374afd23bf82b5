import { describe, expect, test } from 'vitest';
import type { RawRules } from '../../src/rules/schemas.js';
import { evaluateRcpt, isAcceptedDomain, isTrusted, recipientValidationMode } from '../../src/policy/relay.js';
import { explainVerdict } from '../../src/policy/verdict.js';
import { replyText } from '../../src/smtp/reply.js';
import { ctxOf, rcptOf, snapshotOf, STRANGER } from './policy-fixtures.js';

interface RelayCase {
  name: string;
  client?: string;
  auth?: string;
  listenerRelay?: boolean;
  rules?: Partial<RawRules>;
  rcpt: string;
  quoted?: boolean;
  route?: string[];
  want: 'accept' | 'reject' | 'defer';
  rule: string;
  reply?: string;
  validate?: 'off' | 'list' | 'ldap';
  traceHas?: string;
}

const TRUSTED = '198.51.100.7';
const NEVER = '198.51.100.66';

const cases: RelayCase[] = [
  // postmaster, RFC 5321 §4.5.1
  { name: '<postmaster> from a stranger', rcpt: 'postmaster', want: 'accept', rule: 'postmaster' },
  { name: '<postmaster> from a never-relay client', client: NEVER, rcpt: 'postmaster', want: 'accept', rule: 'postmaster' },
  { name: 'postmaster@ours goes through accepted-domains', rcpt: 'postmaster@example.com', want: 'accept', rule: 'accepted-domains' },
  { name: 'postmaster@elsewhere is relaying', rcpt: 'postmaster@far.test', want: 'reject', rule: 'relay-denied' },

  // accepted domains: exact, case, trailing dot, IDN
  { name: 'accepted domain', rcpt: 'bob@example.com', want: 'accept', rule: 'accepted-domains', validate: 'off' },
  { name: 'upper-case recipient domain', rcpt: 'bob@EXAMPLE.COM', want: 'accept', rule: 'accepted-domains' },
  { name: 'trailing dot on recipient', rcpt: 'bob@example.com.', want: 'accept', rule: 'accepted-domains' },
  { name: 'upper case and trailing dot', rcpt: 'bob@Example.Com.', want: 'accept', rule: 'accepted-domains' },
  { name: 'trailing dot in the rule file entry', rcpt: 'bob@trailing.example', want: 'accept', rule: 'accepted-domains' },
  { name: 'upper case in the rule file entry', rcpt: 'bob@upper.example', want: 'accept', rule: 'accepted-domains' },
  { name: 'IDN recipient in U-labels', rcpt: 'bob@bücher.example', want: 'accept', rule: 'accepted-domains' },
  { name: 'IDN recipient in A-labels', rcpt: 'bob@xn--bcher-kva.example', want: 'accept', rule: 'accepted-domains' },
  { name: 'IDN upper-case U-labels', rcpt: 'bob@BÜCHER.example', want: 'accept', rule: 'accepted-domains' },
  { name: 'look-alike IDN is another domain', rcpt: 'bob@bucher.example', want: 'reject', rule: 'relay-denied' },
  { name: 'local part case is irrelevant to the domain', rcpt: 'BOB@example.com', want: 'accept', rule: 'accepted-domains' },

  // subdomains never match by accident
  { name: 'unlisted subdomain', rcpt: 'bob@x.example.com', want: 'reject', rule: 'relay-denied', reply: '550 5.7.1 Relaying denied' },
  { name: 'suffix that is not a subdomain', rcpt: 'bob@evilexample.com', want: 'reject', rule: 'relay-denied' },
  { name: 'our domain as a prefix of theirs', rcpt: 'bob@example.com.evil.test', want: 'reject', rule: 'relay-denied' },
  { name: 'wildcard subdomain', rcpt: 'bob@mx.example.net', want: 'accept', rule: 'accepted-domains' },
  { name: 'wildcard deep subdomain', rcpt: 'bob@a.b.c.example.net', want: 'accept', rule: 'accepted-domains' },
  { name: 'wildcard does not accept the apex', rcpt: 'bob@example.net', want: 'reject', rule: 'relay-denied' },
  { name: 'wildcard with trailing dot and case', rcpt: 'bob@MX.Example.Net.', want: 'accept', rule: 'accepted-domains' },
  { name: 'wildcard base as a mere suffix', rcpt: 'bob@mxexample.net', want: 'reject', rule: 'relay-denied' },

  // address literals
  { name: 'listed IPv4 literal', rcpt: 'bob@[192.0.2.1]', want: 'accept', rule: 'accepted-domains' },
  { name: 'unlisted IPv4 literal', rcpt: 'bob@[192.0.2.2]', want: 'reject', rule: 'relay-denied' },
  { name: 'listed IPv6 literal (rule written upper case)', rcpt: 'bob@[IPv6:2001:db8::25]', want: 'accept', rule: 'accepted-domains' },
  { name: 'IPv6 literal written uncompressed', rcpt: 'bob@[IPv6:2001:0db8:0:0:0:0:0:25]', want: 'accept', rule: 'accepted-domains' },
  { name: 'unlisted IPv6 literal', rcpt: 'bob@[IPv6:2001:db8::26]', want: 'reject', rule: 'relay-denied' },
  { name: 'literal of a network we relay for is still not local', rcpt: 'bob@[198.51.100.7]', want: 'reject', rule: 'relay-denied' },

  // relay tricks from untrusted clients, even for our own domains
  { name: 'percent hack', rcpt: 'bob%evil.test@example.com', want: 'reject', rule: 'routing-tricks', reply: '501 5.1.3 Bad recipient address syntax' },
  { name: 'percent hack with trailing dot', rcpt: 'bob%evil.test.@example.com', want: 'reject', rule: 'routing-tricks' },
  { name: 'bang path', rcpt: 'evil.test!bob@example.com', want: 'reject', rule: 'routing-tricks' },
  { name: 'source route', rcpt: 'bob@evil.test', route: ['example.com'], want: 'reject', rule: 'routing-tricks' },
  { name: 'source route to our own domain', rcpt: 'bob@example.com', route: ['relay.test'], want: 'reject', rule: 'routing-tricks' },
  { name: 'quoted @ in local part', rcpt: 'bob@evil.test@example.com', quoted: true, want: 'reject', rule: 'routing-tricks' },
  { name: 'escaped @ in local part', rcpt: 'bob@evil.test@example.com', want: 'reject', rule: 'routing-tricks' },
  { name: 'quoted percent', rcpt: 'bob%evil.test@example.com', quoted: true, want: 'reject', rule: 'routing-tricks' },
  { name: 'quoted bang', rcpt: 'evil.test!bob@example.com', quoted: true, want: 'reject', rule: 'routing-tricks' },
  { name: 'percent hack to a foreign domain', rcpt: 'bob%evil.test@far.test', want: 'reject', rule: 'routing-tricks' },
  { name: 'percent hack to an IPv4 literal', rcpt: 'bob%evil.test@[192.0.2.1]', want: 'reject', rule: 'routing-tricks' },
  { name: 'encapsulated IMCEASMTP', rcpt: 'IMCEASMTP-bob+40evil.test@example.com', want: 'reject', rule: 'encapsulated-address', reply: '550 5.7.1 Relaying denied' },
  { name: 'encapsulated lower case imceasmtp', rcpt: 'imceasmtp-bob+40evil.test@example.com', want: 'reject', rule: 'encapsulated-address' },
  { name: 'encapsulated IMCEAEX', rcpt: 'IMCEAEX-_O=ORG_OU=X@example.com', want: 'reject', rule: 'encapsulated-address' },
  { name: 'encapsulated IMCEAX400', rcpt: 'IMCEAX400-c=US+3Ba=+20+3Bp=Org@example.com', want: 'reject', rule: 'encapsulated-address' },
  { name: 'encapsulated IMCEANOTES', rcpt: 'IMCEANOTES-bob+20evil@example.com', want: 'reject', rule: 'encapsulated-address' },
  { name: 'encapsulated with the hyphen hex-escaped', rcpt: 'IMCEASMTP+2Dbob+40evil.test@example.com', want: 'reject', rule: 'encapsulated-address' },
  { name: 'a user whose name merely starts with imce', rcpt: 'imcefan@example.com', want: 'accept', rule: 'accepted-domains' },
  { name: 'plus addressing is not a trick', rcpt: 'bob+tag@example.com', want: 'accept', rule: 'accepted-domains' },

  // trusted clients may use routing and relay
  { name: 'relay network relays', client: TRUSTED, rcpt: 'bob@far.test', want: 'accept', rule: 'relay-networks' },
  { name: 'relay network client may route', client: TRUSTED, rcpt: 'bob%far.test@example.com', want: 'accept', rule: 'accepted-domains', traceHas: 'routing-tricks' },
  { name: 'relay network client may use encapsulation', client: TRUSTED, rcpt: 'IMCEASMTP-bob+40far.test@example.com', want: 'accept', rule: 'accepted-domains' },
  { name: 'relay network client source route', client: TRUSTED, rcpt: 'bob@far.test', route: ['x.test'], want: 'accept', rule: 'relay-networks' },
  { name: 'second relay network (/25)', client: '192.0.2.200', rcpt: 'bob@far.test', want: 'accept', rule: 'relay-networks' },
  { name: 'just outside the /25', client: '192.0.2.127', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'just outside the /24', client: '198.51.101.1', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'authenticated client relays', auth: 'alice', rcpt: 'bob@far.test', want: 'accept', rule: 'authenticated' },
  { name: 'authenticated client may route', auth: 'alice', rcpt: 'bob%far.test@example.com', want: 'accept', rule: 'accepted-domains' },
  { name: 'empty auth user is not authenticated', auth: '', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'internal listener relays', listenerRelay: true, rcpt: 'bob@far.test', want: 'accept', rule: 'internal-listener' },
  { name: 'stranger is refused', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied', reply: '550 5.7.1 Relaying denied' },
  { name: 'unparseable client address is untrusted', client: 'unix:/tmp/sock', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },

  // never-relay overrides relay networks, authentication and listener
  { name: 'never-relay inside relay network', client: NEVER, rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied', traceHas: 'never-relay-networks' },
  { name: 'never-relay beats authentication', client: NEVER, auth: 'alice', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied', traceHas: 'never-relay-networks' },
  { name: 'never-relay beats internal listener', client: NEVER, listenerRelay: true, rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'never-relay client cannot route', client: NEVER, rcpt: 'bob%far.test@example.com', want: 'reject', rule: 'routing-tricks' },
  { name: 'never-relay client still reaches our domains', client: NEVER, rcpt: 'bob@example.com', want: 'accept', rule: 'accepted-domains' },
  { name: 'neighbour of a never-relay host still relays', client: '198.51.100.67', rcpt: 'bob@far.test', want: 'accept', rule: 'relay-networks' },

  // IPv6 clients and entries
  { name: 'IPv6 client in relay /48', client: '2001:db8:1:2::5', rcpt: 'bob@far.test', want: 'accept', rule: 'relay-networks' },
  { name: 'IPv6 client outside relay /48', client: '2001:db8:2::5', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'bare IPv6 entry matches itself', client: '2001:db8:9::1', rcpt: 'bob@far.test', want: 'accept', rule: 'relay-networks' },
  { name: 'bare IPv6 entry is /128, not /32', client: '2001:db8:9::2', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'bare IPv6 entry is /128 (same /32)', client: '2001:db8:ffff::1', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'IPv6 client written uncompressed', client: '2001:0db8:0009:0000:0000:0000:0000:0001', rcpt: 'bob@far.test', want: 'accept', rule: 'relay-networks' },
  { name: 'IPv6 never-relay /64 inside relay /48', client: '2001:db8:1:bad::9', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'bare IPv4 entry is /32', rules: { relayNetworks: ['203.0.113.10'] }, client: '203.0.113.11', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'bare IPv4 entry matches itself', rules: { relayNetworks: ['203.0.113.10'] }, client: '203.0.113.10', rcpt: 'bob@far.test', want: 'accept', rule: 'relay-networks' },
  { name: 'IPv4-mapped client matches IPv4 entry', client: '::ffff:198.51.100.7', rcpt: 'bob@far.test', want: 'accept', rule: 'relay-networks' },
  { name: 'IPv4-mapped client in hex form', client: '::ffff:c633:6407', rcpt: 'bob@far.test', want: 'accept', rule: 'relay-networks' },
  { name: 'IPv4-mapped never-relay client', client: '::ffff:198.51.100.66', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'IPv4-mapped stranger', client: `::ffff:${STRANGER}`, rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'IPv4 entry does not match an IPv6 client with the same bits', rules: { relayNetworks: ['0.0.0.1/32'] }, client: '::1', rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied' },
  { name: 'IPv4-mapped entry matches a plain IPv4 client', rules: { relayNetworks: ['::ffff:203.0.113.0/120'] }, client: '203.0.113.50', rcpt: 'bob@far.test', want: 'accept', rule: 'relay-networks' },

  // custom replies (RFC 2505 §2.6.1)
  {
    name: 'custom relay-denied reply', rules: { policy: { rules: { 'relay-denied': { reply: { code: 554, enhanced: '5.7.1', text: 'We do not relay' } } } } },
    rcpt: 'bob@far.test', want: 'reject', rule: 'relay-denied', reply: '554 5.7.1 We do not relay',
  },
  {
    name: 'relay-denied as a 4xx defers', rules: { policy: { rules: { 'relay-denied': { reply: { code: 454, enhanced: '4.7.1', text: 'Relay access denied' } } } } },
    rcpt: 'bob@far.test', want: 'defer', rule: 'relay-denied', reply: '454 4.7.1 Relay access denied',
  },
  {
    name: 'custom routing-tricks reply', rules: { policy: { rules: { 'routing-tricks': { reply: { code: 553, text: 'No routing here' } } } } },
    rcpt: 'bob%x.test@example.com', want: 'reject', rule: 'routing-tricks', reply: '553 No routing here',
  },

  // recipient validation hook
  { name: 'validation mode per domain', rules: { recipientValidation: { domains: { 'example.com': 'ldap' } } }, rcpt: 'bob@example.com', want: 'accept', rule: 'accepted-domains', validate: 'ldap' },
  { name: 'validation default', rules: { recipientValidation: { default: 'list' } }, rcpt: 'bob@mx.example.net', want: 'accept', rule: 'accepted-domains', validate: 'list' },
  { name: 'no validation for relayed mail', rules: { recipientValidation: { default: 'list' } }, client: TRUSTED, rcpt: 'bob@far.test', want: 'accept', rule: 'relay-networks', validate: 'off' },
];

describe('evaluateRcpt golden table', () => {
  test.each(cases)('$name', (c) => {
    const rules = snapshotOf(c.rules);
    const ctx = ctxOf({ ...(c.client === undefined ? {} : { client: c.client }), ...(c.auth === undefined ? {} : { auth: c.auth }), ...(c.listenerRelay ? { listenerRelay: true } : {}) });
    const route = c.route === undefined ? {} : { route: c.route };
    const v = evaluateRcpt(ctx, rcptOf(c.rcpt, { quoted: c.quoted ?? false, ...route }), rules);
    expect({ action: v.action, ruleId: v.ruleId }, explainVerdict(v)).toEqual({ action: c.want, ruleId: c.rule });
    expect(v.trace.at(-1)?.ruleId).toBe(c.rule);
    if (c.reply !== undefined) expect(v.action !== 'accept' && replyText(v.reply)).toBe(c.reply);
    if (c.validate !== undefined) expect(v.action === 'accept' && v.validate).toBe(c.validate);
    if (c.traceHas !== undefined) expect(v.trace.map((s) => s.ruleId)).toContain(c.traceHas);
  });

  test('the table is large enough to be a golden suite', () => {
    expect(cases.length).toBeGreaterThanOrEqual(60);
  });
});

describe('evaluateRcpt trace and helpers', () => {
  test('rules are consulted in the fixed order', () => {
    const v = evaluateRcpt(ctxOf(), rcptOf('bob@far.test'), snapshotOf());
    expect(v.trace.map((s) => s.ruleId)).toEqual([
      'postmaster', 'routing-tricks', 'encapsulated-address', 'accepted-domains', 'relay-networks', 'authenticated', 'internal-listener', 'relay-denied',
    ]);
    expect(explainVerdict(v)).toMatch(/^reject by relay-denied: 550 5\.7\.1 Relaying denied \[postmaster:dunno .*relay-denied:reject\]$/);
  });

  test('never-relay trace says that trust was removed', () => {
    const v = evaluateRcpt(ctxOf({ client: NEVER, auth: 'alice' }), rcptOf('bob@far.test'), snapshotOf());
    const step = v.trace.find((s) => s.ruleId === 'never-relay-networks');
    expect(step?.note).toMatch(/trust .* removed/);
    expect(v.trace.find((s) => s.ruleId === 'relay-networks')?.note).toBe('overridden by never-relay-networks');
  });

  test('a plain stranger has no never-relay step', () => {
    const v = evaluateRcpt(ctxOf(), rcptOf('bob@far.test'), snapshotOf());
    expect(v.trace.map((s) => s.ruleId)).not.toContain('never-relay-networks');
  });

  test('isTrusted / isAcceptedDomain / recipientValidationMode', () => {
    const rules = snapshotOf({ recipientValidation: { domains: { 'EXAMPLE.com.': 'list' }, default: 'off' } });
    expect(isTrusted(ctxOf({ client: TRUSTED }), rules)).toBe(true);
    expect(isTrusted(ctxOf({ client: NEVER }), rules)).toBe(false);
    expect(isTrusted(ctxOf({ auth: 'a' }), rules)).toBe(true);
    expect(isTrusted(ctxOf(), rules)).toBe(false);
    expect(isAcceptedDomain('Example.COM.', rules)).toBe(true);
    expect(isAcceptedDomain('not a domain', rules)).toBe(false);
    expect(recipientValidationMode('example.com', rules)).toBe('list');
    expect(recipientValidationMode('mx.example.net', rules)).toBe('off');
  });

  test('a malformed recipient-validation section means off', () => {
    const rules = snapshotOf({ recipientValidation: { domains: { 'example.com': 'bogus' }, default: 42 } as never });
    expect(recipientValidationMode('example.com', rules)).toBe('off');
  });
});
