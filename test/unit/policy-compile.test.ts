import { describe, expect, test } from 'vitest';
import { compileRules } from '../../src/policy/compile.js';
import type { RawRules } from '../../src/rules/schemas.js';
import { evaluateRcpt } from '../../src/policy/relay.js';
import { BASE_RULES, ctxOf, rcptOf } from './policy-fixtures.js';

interface RefusalCase {
  name: string;
  rules: Partial<RawRules>;
  code: string;
  section: string;
  path?: string;
  message: RegExp;
}

const refusals: RefusalCase[] = [
  // open-relay guard (Postfix has_required)
  { name: 'relay-denied in warn mode', rules: { policy: { rules: { 'relay-denied': { mode: 'warn' } } } }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'policy', path: '/rules/relay-denied/mode', message: /relay-denied.*warn mode: any client could relay/ },
  { name: 'relay-denied with a 2xx reply', rules: { policy: { rules: { 'relay-denied': { reply: { code: 250, text: 'Ok' } } } } }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'policy', message: /not a 4xx or 5xx.*any client could relay/ },
  { name: 'routing-tricks in warn mode', rules: { policy: { rules: { 'routing-tricks': { mode: 'warn' } } } }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'policy', message: /routing-tricks.*backend would relay/ },
  { name: 'encapsulated-address in warn mode', rules: { policy: { rules: { 'encapsulated-address': { mode: 'warn' } } } }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'policy', message: /encapsulated-address.*Exchange.*relay/ },
  { name: 'accepted-domains "*"', rules: { acceptedDomains: ['example.com', '*'] }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'accepted-domains', path: '/1', message: /every domain/ },
  { name: 'accepted-domains "*.com"', rules: { acceptedDomains: ['*.com'] }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'accepted-domains', path: '/0', message: /public suffix "com"/ },
  { name: 'accepted-domains "*.co.uk"', rules: { acceptedDomains: ['*.CO.UK.'] }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'accepted-domains', message: /public suffix "co.uk"/ },
  { name: 'relay-networks 0.0.0.0/0', rules: { relayNetworks: ['0.0.0.0/0'] }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'relay-networks', path: '/0', message: /would let any client relay/ },
  { name: 'relay-networks ::/0', rules: { relayNetworks: ['10.0.0.0/8', '::/0'] }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'relay-networks', path: '/1', message: /wider than \/16 for IPv6/ },
  { name: 'relay-networks /7', rules: { relayNetworks: ['10.0.0.0/7'] }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'relay-networks', message: /wider than \/8 for IPv4/ },
  { name: 'relay-networks mapped ::ffff:0:0/96 is all of IPv4', rules: { relayNetworks: ['::ffff:0:0/96'] }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'relay-networks', message: /0\.0\.0\.0\/0/ },
  // IPv6 transition prefixes carry every IPv4 host: as wide as /0 (issue 16 item 8)
  ...[
    '2002::/16', '2002::/20', '2001::/32', '2001::/16', '2001:0:c000:201::/64', '64:ff9b::/96', '64:ff9b::/100', '64:ff9b::/64',
    '64:ff9b:1::/48', '64:ff9b:1::/96', '::/96', '::/64', '::ffff:0:0:0/96', '2000::/3', '::/1', '::ffff:0:0/100',
  ].map((net) => ({ name: `relay-networks transition ${net}`, rules: { relayNetworks: ['10.0.0.0/8', net] }, code: 'RG_ERR_RULES_OPEN_RELAY', section: 'relay-networks', path: '/1', message: /would let any client relay/ })),
  // plain mistakes
  { name: 'bad CIDR', rules: { relayNetworks: ['10.0.0.0/33'] }, code: 'RG_ERR_RULES_BAD_NETWORK', section: 'relay-networks', message: /prefix length/ },
  { name: 'host bits set', rules: { neverRelayNetworks: ['10.1.2.3/8'] }, code: 'RG_ERR_RULES_BAD_NETWORK', section: 'never-relay-networks', message: /did you mean 10\.0\.0\.0\/8/ },
  { name: 'not an address', rules: { relayNetworks: ['example.com'] }, code: 'RG_ERR_RULES_BAD_NETWORK', section: 'relay-networks', message: /not an IPv4 or IPv6 address/ },
  { name: 'leading zeros are refused', rules: { relayNetworks: ['010.0.0.1'] }, code: 'RG_ERR_RULES_BAD_NETWORK', section: 'relay-networks', message: /not an IPv4/ },
  { name: 'bad domain', rules: { acceptedDomains: ['exa mple.com'] }, code: 'RG_ERR_RULES_BAD_DOMAIN', section: 'accepted-domains', message: /not a valid domain/ },
  { name: 'bare IP as a domain', rules: { acceptedDomains: ['192.0.2.1'] }, code: 'RG_ERR_RULES_BAD_DOMAIN', section: 'accepted-domains', message: /address literal/ },
  { name: 'wildcard in the middle', rules: { acceptedDomains: ['a.*.example.com'] }, code: 'RG_ERR_RULES_BAD_DOMAIN', section: 'accepted-domains', message: /not a valid domain/ },
  { name: 'bad address literal', rules: { acceptedDomains: ['[300.0.0.1]'] }, code: 'RG_ERR_RULES_BAD_DOMAIN', section: 'accepted-domains', message: /address literal/ },
  { name: 'duplicate sender rule id', rules: { senders: [{ id: 'a', match: ['<>'], action: 'reject' }, { id: 'a', match: ['@x.test'], action: 'reject' }] }, code: 'RG_ERR_RULES_DUPLICATE_ID', section: 'senders', path: '/1/id', message: /duplicate rule id "a"/ },
  { name: 'bad sender pattern', rules: { senders: [{ id: 'a', match: ['nobody'], action: 'reject' }] }, code: 'RG_ERR_RULES_BAD_SENDER_PATTERN', section: 'senders', path: '/0/match/0', message: /not a sender pattern/ },
  { name: 'reject rule with a 4xx reply', rules: { senders: [{ id: 'a', match: ['<>'], action: 'reject', reply: { code: 450, text: 'later' } }] }, code: 'RG_ERR_RULES_BAD_REPLY', section: 'senders', message: /needs a 5xx/ },
  { name: 'enhanced code of the wrong class', rules: { policy: { rules: { 'anti-spoofing': { reply: { code: 550, enhanced: '4.7.1', text: 'x' } } } } }, code: 'RG_ERR_RULES_BAD_REPLY', section: 'policy', message: /does not match/ },
  { name: 'unknown rule id in policy', rules: { policy: { rules: { 'relay-deny': { mode: 'enforce' } } } }, code: 'RG_ERR_RULES_UNKNOWN_RULE', section: 'policy', message: /unknown rule "relay-deny"/ },
];

describe('compileRules refuses', () => {
  test.each(refusals)('$name', (c) => {
    const r = compileRules({ ...BASE_RULES, ...c.rules });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    const e = r.errors.find((x) => x.code === c.code);
    expect(e, JSON.stringify(r.errors)).toBeDefined();
    expect(e?.section).toBe(c.section);
    expect(e?.message).toMatch(c.message);
    if (c.path !== undefined) expect(e?.path).toBe(c.path);
  });
});

describe('compileRules accepts', () => {
  test.each([
    { name: 'narrow relay networks at the limit', rules: { relayNetworks: ['10.0.0.0/8', 'fd00::/16', '2a00::/16'] } },
    { name: 'transition prefixes narrow enough: IPv4 /8 or longer inside them', rules: { relayNetworks: ['2002:a00::/24', '64:ff9b::a00:0/104', '2001:0:c000:201::c0ff:fd00/120', '::1', '2002:c000:200::/40', '2001:db8::/32'] } },
    { name: 'wildcard of a registered domain under a ccTLD', rules: { acceptedDomains: ['*.example.co.uk', '*.example.de'] } },
    { name: 'never-relay may be as wide as you like', rules: { neverRelayNetworks: ['0.0.0.0/0', '::/0'] } },
    { name: 'recipient-unknown in warn mode', rules: { policy: { rules: { 'recipient-unknown': { mode: 'warn' as const } } } } },
    { name: 'empty rule set', rules: { acceptedDomains: [], relayNetworks: [], neverRelayNetworks: [], senders: [], policy: {} } },
  ])('$name', ({ rules }) => {
    const r = compileRules({ ...BASE_RULES, ...rules });
    expect(r.ok, JSON.stringify(!r.ok && r.errors)).toBe(true);
  });

  test('snapshot is frozen and its version is a content hash', () => {
    const a = compileRules(BASE_RULES);
    const b = compileRules(structuredClone(BASE_RULES));
    const c = compileRules({ ...BASE_RULES, acceptedDomains: ['other.test'] });
    if (!a.ok || !b.ok || !c.ok) throw new Error('compile failed');
    expect(a.snapshot.version).toMatch(/^[0-9a-f]{16}$/);
    expect(a.snapshot.version).toBe(b.snapshot.version);
    expect(a.snapshot.version).not.toBe(c.snapshot.version);
    expect(Object.isFrozen(a.snapshot)).toBe(true);
    expect(Object.isFrozen(a.snapshot.raw.acceptedDomains)).toBe(true);
    expect(() => (a.snapshot.raw.acceptedDomains as string[]).push('x.test')).toThrow();
  });

  test('the snapshot does not follow later changes to the input', () => {
    const raw = structuredClone(BASE_RULES);
    const r = compileRules(raw);
    if (!r.ok) throw new Error('compile failed');
    raw.relayNetworks.push('203.0.113.0/24');
    expect(evaluateRcpt(ctxOf({ client: '203.0.113.9' }), rcptOf('a@far.test'), r.snapshot).action).toBe('reject');
  });

  test('all errors are reported at once', () => {
    const r = compileRules({ ...BASE_RULES, acceptedDomains: ['*'], relayNetworks: ['0.0.0.0/0', 'nope'] });
    expect(r.ok).toBe(false);
    expect(!r.ok && r.errors.length).toBe(3);
  });
});
