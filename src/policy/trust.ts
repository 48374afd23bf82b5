/**
 * Who is trusted to relay: a client in a relay network, an authenticated client, or a client on a
 * relay-allowed (internal) listener — unless its address is in a never-relay network, which
 * overrides all three.
 */
import type { SessionContext } from './context.js';
import type { RulesSnapshot } from './compile.js';
import { parseIp } from '../util/ip-address.js';

export interface TrustFacts {
  readonly inRelayNetwork: boolean;
  readonly inNeverRelayNetwork: boolean;
  readonly authenticated: boolean;
  readonly internalListener: boolean;
  /** (relay network or authenticated or internal listener) and not never-relay. */
  readonly trusted: boolean;
}

export function trustFacts(ctx: SessionContext, rules: RulesSnapshot): TrustFacts {
  // Asked a few times per command with the same (unchanging) context: the last answer is kept.
  if (last !== undefined && last.ctx === ctx && last.rules === rules) return last.facts;
  const facts = workOut(ctx, rules);
  last = { ctx, rules, facts };
  return facts;
}

let last: { readonly ctx: SessionContext; readonly rules: RulesSnapshot; readonly facts: TrustFacts } | undefined;

function workOut(ctx: SessionContext, rules: RulesSnapshot): TrustFacts {
  // An address that does not parse is in no network: not trusted by address, not exempted either.
  const networks = membership(ctx.clientIp, rules);
  const inRelayNetwork = (networks & IN_RELAY) !== 0;
  const inNeverRelayNetwork = (networks & IN_NEVER_RELAY) !== 0;
  // An authentication counts only when it grants relay (auth-grant.ts): a `pass` listener, a user
  // outside authRelayUsers or an unproven AUTH is no trust at all (no relay, no routing exemption).
  const authenticated = ctx.authUser !== undefined && ctx.authUser !== '' && ctx.authGrant?.relay !== false;
  const internalListener = ctx.listenerRelay === true;
  const trusted = (inRelayNetwork || authenticated || internalListener) && !inNeverRelayNetwork;
  return { inRelayNetwork, inNeverRelayNetwork, authenticated, internalListener, trusted };
}

const IN_RELAY = 1;
const IN_NEVER_RELAY = 2;
/** Network membership of client addresses, per rules snapshot: asked for every command, changes only with the rules. */
const memberships = new WeakMap<RulesSnapshot, Map<string, number>>();
const MEMBERSHIPS_MAX = 4096;

function membership(clientIp: string, rules: RulesSnapshot): number {
  let known = memberships.get(rules);
  if (!known) memberships.set(rules, (known = new Map()));
  let m = known.get(clientIp);
  if (m === undefined) {
    const ip = parseIp(clientIp);
    m = (rules.relayNetworks.contains(ip) ? IN_RELAY : 0) | (rules.neverRelayNetworks.contains(ip) ? IN_NEVER_RELAY : 0);
    if (known.size >= MEMBERSHIPS_MAX) known.clear();
    known.set(clientIp, m);
  }
  return m;
}
