/**
 * Verdict types of the policy engine and their one-line explanation (used by logs and /api/v1/check).
 * Postfix restriction-list results: permit, reject, defer, dunno (no opinion), plus warn
 * (warn_if_reject: a rejection recorded, evaluation continues).
 */
import { replyText, type Reply } from '../smtp/reply.js';

export type TraceStep = { ruleId: string; result: 'permit' | 'reject' | 'defer' | 'dunno' | 'warn'; note?: string };

/** A rule in warn mode that would have refused: what it would have answered. */
export type Warning = { ruleId: string; reply: Reply };

export type RecipientValidationMode = 'off' | 'list' | 'ldap';

export type RcptVerdict =
  | { action: 'accept'; ruleId: string; validate: RecipientValidationMode; trace: TraceStep[]; warnings: Warning[] }
  | { action: 'reject' | 'defer'; ruleId: string; reply: Reply; trace: TraceStep[]; warnings: Warning[] };

export type MailVerdict =
  | { action: 'accept'; ruleId: string; trace: TraceStep[]; warnings: Warning[] }
  | { action: 'reject' | 'defer'; ruleId: string; reply: Reply; trace: TraceStep[]; warnings: Warning[] };

/** A refusal, MAIL or RCPT alike. */
export type PolicyRefusal = { action: 'reject' | 'defer'; ruleId: string; reply: Reply; trace: TraceStep[]; warnings: Warning[] };

/** "reject by relay-denied: 550 5.7.1 Relaying denied [postmaster:dunno routing-tricks:dunno …]". */
export function explainVerdict(v: RcptVerdict | MailVerdict): string {
  const head = v.action === 'accept' ? `accept by ${v.ruleId}` : `${v.action} by ${v.ruleId}: ${replyText(v.reply)}`;
  const validate = 'validate' in v && v.action === 'accept' && v.validate !== 'off' ? ` (validate: ${v.validate})` : '';
  const warnings = v.warnings.length > 0 ? `; warnings: ${v.warnings.map((w) => `${w.ruleId} (${replyText(w.reply)})`).join(', ')}` : '';
  const trace = v.trace.map((s) => `${s.ruleId}:${s.result}`).join(' ');
  return `${head}${validate}${warnings} [${trace}]`;
}
