/**
 * evaluateRecipientLookup: turn a directory lookup (for a recipient of an accepted domain whose
 * RCPT verdict said `validate`) into a verdict.
 *   known   → accept (recipient-validation)
 *   unknown → 550 5.1.1 User unknown (recipient-unknown; reply and mode overridable)
 *   error   → 451 4.4.3 (directory-unavailable): a fault on our side is temporary (STYLE §7.5.4)
 * A lookup verdict carries validate: 'off' — nothing is left to validate.
 */
import type { OverridableRuleId, RulesSnapshot } from './compile.js';
import type { RcptVerdict } from './verdict.js';

export function evaluateRecipientLookup(result: 'known' | 'unknown' | 'error', rules: RulesSnapshot): RcptVerdict {
  if (result === 'known') {
    return { action: 'accept', ruleId: 'recipient-validation', validate: 'off', trace: [{ ruleId: 'recipient-validation', result: 'permit', note: 'recipient known' }], warnings: [] };
  }
  const ruleId: OverridableRuleId = result === 'unknown' ? 'recipient-unknown' : 'directory-unavailable';
  const note = result === 'unknown' ? 'recipient unknown' : 'directory lookup failed';
  const s = rules.settings[ruleId];
  const action = s.reply.code >= 500 ? 'reject' : 'defer';
  if (s.mode === 'warn') {
    return {
      action: 'accept', ruleId: 'recipient-validation', validate: 'off',
      trace: [{ ruleId, result: 'warn', note }, { ruleId: 'recipient-validation', result: 'permit', note: 'warn mode' }],
      warnings: [{ ruleId, reply: s.reply }],
    };
  }
  return { action, ruleId, reply: s.reply, trace: [{ ruleId, result: action, note }], warnings: [] };
}
