/** Builders shared by the policy tests: Mailbox / path / context values built directly. */
import { DEFAULT_LIMITS } from '../../src/limits/schema.js';
import { compileRules, type RulesSnapshot } from '../../src/policy/compile.js';
import type { RawRules } from '../../src/rules/schemas.js';
import type { SessionContext } from '../../src/policy/context.js';
import type { ForwardPath, Mailbox, ReversePath } from '../../src/smtp/path.js';

export const STRANGER = '203.0.113.9';

/** Accepted domains, relay networks and never-relay networks used by most cases. */
export const BASE_RULES: RawRules = {
  acceptedDomains: ['example.com', '*.example.net', '[192.0.2.1]', '[IPv6:2001:DB8::25]', 'Bücher.Example', 'trailing.example.', 'UPPER.Example'],
  relayNetworks: ['198.51.100.0/24', '2001:db8:1::/48', '2001:db8:9::1', '192.0.2.128/25'],
  neverRelayNetworks: ['198.51.100.66', '2001:db8:1:bad::/64'],
  senders: [],
  policy: {},
  limits: DEFAULT_LIMITS,
  recipientValidation: {},
};

export function snapshotOf(over: Partial<RawRules> = {}): RulesSnapshot {
  const r = compileRules({ ...BASE_RULES, ...over });
  if (!r.ok) throw new Error(`fixture rules do not compile: ${JSON.stringify(r.errors)}`);
  return r.snapshot;
}

export function mailbox(addr: string, quoted = false): Mailbox {
  const at = addr.lastIndexOf('@');
  const domain = addr.slice(at + 1);
  const domainKind = domain.startsWith('[IPv6:') ? 'ipv6' : domain.startsWith('[') ? 'ipv4' : 'name';
  return { localPart: addr.slice(0, at), quoted, domain, domainKind };
}

export function rcptOf(addr: string, opts: { quoted?: boolean; route?: string[] } = {}): ForwardPath {
  if (addr === 'postmaster') return { kind: 'postmaster' };
  return { kind: 'mailbox', mailbox: mailbox(addr, opts.quoted), sourceRoute: opts.route ?? [] };
}

export function senderOf(addr: string): ReversePath {
  if (addr === '<>') return { kind: 'null' };
  return { kind: 'mailbox', mailbox: mailbox(addr), sourceRoute: [] };
}

export function ctxOf(o: { client?: string; auth?: string; listenerRelay?: boolean } = {}): SessionContext {
  return {
    clientIp: o.client ?? STRANGER,
    listener: o.listenerRelay ? 'internal' : 'mx',
    listenerKind: 'mx',
    listenerRelay: o.listenerRelay ?? false,
    tls: false,
    ...(o.auth === undefined ? {} : { authUser: o.auth }),
  };
}
