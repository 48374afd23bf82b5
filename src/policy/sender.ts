/**
 * evaluateMail: the MAIL FROM restriction list, fixed order, first decisive answer wins:
 *   sender-rules:<id>  custom rules of senders.yaml, in file order
 *   anti-spoofing      (policy.antiSpoofing) a sender in one of our domains from an untrusted client
 * The list ends in an implicit permit (ruleId "default-permit"): MAIL decides little; RCPT decides relay.
 */
import type { ReversePath } from '../smtp/path.js';
import type { RulesSnapshot } from './compile.js';
import type { SessionContext } from './context.js';
import { parseIp } from '../util/ip-address.js';
import { senderPatternMatches } from './sender-pattern.js';
import { trustFacts } from './trust.js';
import type { MailVerdict, TraceStep, Warning } from './verdict.js';

export const MAIL_DEFAULT_RULE_ID = 'default-permit';

export function evaluateMail(ctx: SessionContext, sender: ReversePath, rules: RulesSnapshot): MailVerdict {
  const trace: TraceStep[] = [];
  const warnings: Warning[] = [];
  const ip = parseIp(ctx.clientIp);

  for (const rule of rules.senderRules) {
    if (rule.clients !== undefined && !rule.clients.contains(ip)) continue;
    if (!rule.patterns.some((p) => senderPatternMatches(p, sender))) continue;
    const action = rule.reply.code >= 500 ? 'reject' : 'defer';
    if (rule.mode === 'warn') {
      trace.push({ ruleId: rule.ruleId, result: 'warn', note: 'sender matched (warn mode)' });
      warnings.push({ ruleId: rule.ruleId, reply: rule.reply });
      continue;
    }
    trace.push({ ruleId: rule.ruleId, result: action, note: 'sender matched' });
    return { action, ruleId: rule.ruleId, reply: rule.reply, trace, warnings };
  }
  if (rules.senderRules.length > 0 && trace.length === 0) trace.push({ ruleId: 'sender-rules', result: 'dunno', note: 'no sender rule matched' });

  if (!rules.antiSpoofing) {
    trace.push({ ruleId: 'anti-spoofing', result: 'dunno', note: 'off' });
  } else if (sender.kind === 'null') {
    // RFC 5321 §4.5.5: bounces have the null reverse-path; there is nothing to spoof.
    trace.push({ ruleId: 'anti-spoofing', result: 'dunno', note: 'null sender' });
  } else if (!rules.acceptedDomains.has(sender.mailbox.domain)) {
    trace.push({ ruleId: 'anti-spoofing', result: 'dunno', note: 'sender domain not ours' });
  } else if (trustFacts(ctx, rules).trusted) {
    trace.push({ ruleId: 'anti-spoofing', result: 'dunno', note: 'trusted client' });
  } else {
    const s = rules.settings['anti-spoofing'];
    const action = s.reply.code >= 500 ? 'reject' : 'defer';
    const note = 'sender domain is ours and client is not trusted';
    if (s.mode === 'warn') {
      trace.push({ ruleId: 'anti-spoofing', result: 'warn', note });
      warnings.push({ ruleId: 'anti-spoofing', reply: s.reply });
    } else {
      trace.push({ ruleId: 'anti-spoofing', result: action, note });
      return { action, ruleId: 'anti-spoofing', reply: s.reply, trace, warnings };
    }
  }

  trace.push({ ruleId: MAIL_DEFAULT_RULE_ID, result: 'permit' });
  return { action: 'accept', ruleId: MAIL_DEFAULT_RULE_ID, trace, warnings };
}
