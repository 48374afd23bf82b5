/**
 * evaluateRcpt: the RCPT TO restriction list. Fixed order, first decisive answer wins (Postfix
 * smtpd_recipient_restrictions); "dunno" means no opinion. Unlike Postfix, the list ends in an
 * implicit refusal (relay-denied) for every domain we do not serve.
 *
 *   1 postmaster            <postmaster> is always accepted (RFC 5321 §4.5.1)
 *   2 routing-tricks        untrusted + source route / % / ! / @ in local part → 501 5.1.3
 *   3 encapsulated-address  untrusted + Exchange IMCEA<type>- local part → 550 5.7.1
 *   4 accepted-domains      a domain we serve → accept (validate says whether to look the user up)
 *   5 relay-networks        client in a relay network, not never-relay → accept
 *   6 authenticated         authenticated, not never-relay → accept
 *   7 internal-listener     relay-allowed listener, not never-relay → accept
 *   8 auth-unproven         the backend accepted an AUTH the guard could not prove → 451 4.7.0
 *   9 relay-denied          → 550 5.7.1 Relaying denied
 */
import { isDotAtom, routingTricks } from '../smtp/mailbox.js';
import type { ForwardPath } from '../smtp/path.js';
import type { RulesSnapshot, OverridableRuleId } from './compile.js';
import type { SessionContext } from './context.js';
import { canonicalDomain } from './domain-name.js';
import { trustFacts } from './trust.js';
import type { RcptVerdict, RecipientValidationMode, TraceStep, Warning } from './verdict.js';

export function isTrusted(ctx: SessionContext, rules: RulesSnapshot): boolean {
  return trustFacts(ctx, rules).trusted;
}

export function isAcceptedDomain(domain: string, rules: RulesSnapshot): boolean {
  return rules.acceptedDomains.has(domain);
}

/**
 * Hook for the directory: how recipients of an accepted domain are validated. Reads the
 * recipient-validation section in the shape `{ domains: { [domain]: mode }, default?: mode }`.
 */
export function recipientValidationMode(domain: string, rules: RulesSnapshot): RecipientValidationMode {
  const c = canonicalDomain(domain);
  const rv = rules.recipientValidation;
  return (c.ok ? rv.domains.get(c.domain) : undefined) ?? rv.default;
}

export function evaluateRcpt(ctx: SessionContext, rcpt: ForwardPath, rules: RulesSnapshot): RcptVerdict {
  const trace: TraceStep[] = [];
  const warnings: Warning[] = [];
  const facts = trustFacts(ctx, rules);
  const accept = (ruleId: string, validate: RecipientValidationMode, note?: string): RcptVerdict => {
    trace.push(note === undefined ? { ruleId, result: 'permit' } : { ruleId, result: 'permit', note });
    return { action: 'accept', ruleId, validate, trace, warnings };
  };
  /** A refusing rule fired: enforce → verdict; warn → recorded, evaluation goes on (undefined). */
  const refuse = (ruleId: OverridableRuleId, note: string): RcptVerdict | undefined => {
    const s = rules.settings[ruleId];
    const action = s.reply.code >= 500 ? 'reject' : 'defer';
    if (s.mode === 'warn' && ruleId !== 'relay-denied') {
      trace.push({ ruleId, result: 'warn', note });
      warnings.push({ ruleId, reply: s.reply });
      return undefined;
    }
    trace.push({ ruleId, result: action, note });
    return { action, ruleId, reply: s.reply, trace, warnings };
  };
  const dunno = (ruleId: string, note?: string): void => {
    trace.push(note === undefined ? { ruleId, result: 'dunno' } : { ruleId, result: 'dunno', note });
  };

  if (facts.inNeverRelayNetwork) {
    const wouldTrust = facts.inRelayNetwork || facts.authenticated || facts.internalListener;
    dunno('never-relay-networks', wouldTrust
      ? 'client is in a never-relay network: trust from relay network, authentication or listener removed'
      : 'client is in a never-relay network');
  }

  // 1. RFC 5321 §4.5.1: <postmaster> without a domain must be accepted.
  if (rcpt.kind === 'postmaster') return accept('postmaster', 'off');
  dunno('postmaster');

  // 2. Sender-specified routing, RFC 5321 §3.6.1 / Appendix C: never from untrusted clients.
  // The codec's detector (src/smtp/mailbox.ts) inspects the unquoted local part, so quoted and
  // escaped forms count too; encapsulation is judged separately by rule 3.
  const found = routingTricks(rcpt);
  const tricks: string[] = found.filter((t) => t !== 'encapsulated');
  // A local part that only a quoted-string can carry ("a b", "a>b", "a,b") is read differently by
  // naive backend parsers (DESIGN.md invariant 1): refused from untrusted clients as well.
  if (rcpt.kind === 'mailbox' && !isDotAtom(rcpt.mailbox.localPart) && !rcpt.mailbox.localPart.includes('@')) tricks.push('quoted-local-part');
  if (tricks.length > 0) {
    if (!facts.trusted) {
      const v = refuse('routing-tricks', `untrusted client; ${tricks.join(', ')}`);
      if (v) return v;
    } else {
      dunno('routing-tricks', `trusted client; ${tricks.join(', ')} allowed`);
    }
  } else {
    dunno('routing-tricks');
  }

  // 3. Exchange encapsulated addresses (IMCEASMTP-user+40other@ours): a relay attempt.
  if (found.includes('encapsulated')) {
    if (!facts.trusted) {
      const v = refuse('encapsulated-address', 'untrusted client; IMCEA encapsulated local part');
      if (v) return v;
    } else {
      dunno('encapsulated-address', 'trusted client; encapsulated local part allowed');
    }
  } else {
    dunno('encapsulated-address');
  }

  // 4. A domain we serve.
  const domain = rcpt.mailbox.domain;
  if (rules.acceptedDomains.has(domain)) return accept('accepted-domains', recipientValidationMode(domain, rules));
  dunno('accepted-domains', 'domain not served here');

  // 5–7. Trusted clients may relay.
  if (facts.inRelayNetwork && !facts.inNeverRelayNetwork) return accept('relay-networks', 'off');
  dunno('relay-networks', facts.inRelayNetwork ? 'overridden by never-relay-networks' : undefined);
  if (facts.authenticated && !facts.inNeverRelayNetwork) return accept('authenticated', 'off');
  const grant = ctx.authUser !== undefined && ctx.authUser !== '' ? ctx.authGrant : undefined;
  dunno('authenticated', facts.authenticated ? 'overridden by never-relay-networks' : grant?.relay === false ? `AUTH grants no relay: ${grant.reason}` : undefined);
  if (facts.internalListener && !facts.inNeverRelayNetwork) return accept('internal-listener', 'off');
  dunno('internal-listener', facts.internalListener ? 'overridden by never-relay-networks' : undefined);

  // 8. The backend said 235 but the guard could not prove it (issue 16): temporary, never a relay.
  // (A trace step only where an AUTH was refused relay: other traces stay as they were.)
  if (grant?.relay === false && grant.unproven && !facts.inNeverRelayNetwork) {
    const v = refuse('auth-unproven', grant.reason);
    if (v) return v;
  }

  // 9. Everything else: implicit default deny (never warn-only; compile.ts refuses that).
  return refuse('relay-denied', 'domain not served and client not trusted') as RcptVerdict;
}
