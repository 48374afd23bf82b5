/** Issue 16: what a backend-accepted AUTH is worth (pure: evaluateAuthGrant, authRelayUsers, the relay rule). */
import { describe, expect, test } from 'vitest';
import { compileRelayUsers, evaluateAuthGrant, type AuthGrantInput } from '../../src/policy/auth-grant.js';
import { evaluateRcpt } from '../../src/policy/relay.js';
import type { SessionContext } from '../../src/policy/context.js';
import { rcptOf, snapshotOf } from './policy-fixtures.js';

const base: AuthGrantInput = { listenerAuth: 'relay', user: 'alice', canaryAccepted: false };
const listed = compileRelayUsers(['alice', 'SVC-*', '*@example.com', 'u?']);

describe('evaluateAuthGrant', () => {
  const cases: Array<{ name: string; input: Partial<AuthGrantInput>; want: { relay: boolean; unproven?: boolean } }> = [
    // the listener decides first
    { name: 'relay listener, honest backend', input: {}, want: { relay: true } },
    { name: 'pass listener', input: { listenerAuth: 'pass' }, want: { relay: false, unproven: false } },
    { name: 'pass listener, even when proven', input: { listenerAuth: 'pass', verification: 'valid' }, want: { relay: false, unproven: false } },
    // the allow-list
    { name: 'listed exact name, any case', input: { user: 'ALICE', relayUsers: listed }, want: { relay: true } },
    { name: 'listed by glob', input: { user: 'svc-mailer', relayUsers: listed }, want: { relay: true } },
    { name: 'listed by domain glob', input: { user: 'bob@example.com', relayUsers: listed }, want: { relay: true } },
    { name: '? is one character', input: { user: 'u12', relayUsers: listed }, want: { relay: false, unproven: false } },
    { name: 'not listed', input: { user: 'bob', relayUsers: listed }, want: { relay: false, unproven: false } },
    { name: 'a dot in a pattern is literal', input: { user: 'bob@exampleXcom', relayUsers: listed }, want: { relay: false, unproven: false } },
    { name: 'empty list: anyone', input: { user: 'bob', relayUsers: compileRelayUsers([]) }, want: { relay: true } },
    // the canary and the guard's own proof
    { name: 'canary tripped', input: { canaryAccepted: true }, want: { relay: false, unproven: true } },
    { name: 'proven by ldap, canary tripped', input: { canaryAccepted: true, verification: 'valid' }, want: { relay: true } },
    { name: 'ldap refused', input: { verification: 'invalid' }, want: { relay: false, unproven: true } },
    { name: 'ldap down', input: { verification: 'error' }, want: { relay: false, unproven: true } },
    { name: 'mechanism without a password', input: { verification: 'unverifiable' }, want: { relay: false, unproven: true } },
    { name: 'not listed beats proof', input: { user: 'bob', relayUsers: listed, verification: 'valid' }, want: { relay: false, unproven: false } },
  ];
  test.each(cases)('$name', ({ input, want }) => {
    expect(evaluateAuthGrant({ ...base, ...input })).toMatchObject(want);
  });
});

describe('evaluateRcpt with an AUTH that grants no relay', () => {
  const rules = snapshotOf({ relayNetworks: ['192.0.2.0/24'] });
  const foreign = rcptOf('pal@elsewhere.test');
  const local = rcptOf('bob@example.com');
  const ctx = (over: Partial<SessionContext>): SessionContext => ({ clientIp: '203.0.113.9', listener: 'mx', listenerKind: 'mx', listenerRelay: false, tls: true, authUser: 'alice', ...over });

  test.each([
    { name: 'granted (no grant given: as before issue 16)', c: {}, rcpt: foreign, want: ['accept', 'authenticated'] },
    { name: 'granted by ldap', c: { authGrant: { relay: true, proof: 'ldap' } as const }, rcpt: foreign, want: ['accept', 'authenticated'] },
    { name: 'unproven → 451 auth-unproven', c: { authGrant: { relay: false, unproven: true, reason: 'canary' } as const }, rcpt: foreign, want: ['defer', 'auth-unproven'] },
    { name: 'pass → relay-denied', c: { authGrant: { relay: false, unproven: false, reason: 'listener auth is pass' } as const }, rcpt: foreign, want: ['reject', 'relay-denied'] },
    { name: 'unproven, local domain → accepted', c: { authGrant: { relay: false, unproven: true, reason: 'canary' } as const }, rcpt: local, want: ['accept', 'accepted-domains'] },
    { name: 'unproven, but in a relay network → relays by network', c: { clientIp: '192.0.2.7', authGrant: { relay: false, unproven: true, reason: 'canary' } as const }, rcpt: foreign, want: ['accept', 'relay-networks'] },
  ])('$name', ({ c, rcpt, want }) => {
    const v = evaluateRcpt(ctx(c), rcpt, rules);
    expect([v.action, v.ruleId]).toEqual(want);
    if (v.action === 'defer') expect(`${v.reply.code} ${v.reply.enhanced}`).toBe('451 4.7.0');
  });

  test('a routing trick from an unproven AUTH is refused like from a stranger', () => {
    const trick = rcptOf('pal%elsewhere.test@example.com');
    expect(evaluateRcpt(ctx({ authGrant: { relay: false, unproven: true, reason: 'canary' } }), trick, rules).ruleId).toBe('routing-tricks');
    expect(evaluateRcpt(ctx({}), trick, rules).action).toBe('accept');
  });
});
