/**
 * What a policy service's `action=` means (Postfix access(5) actions, as SMTPD_POLICY_README says a
 * policy server may answer), and how the answers of several services at one stage add up to one
 * verdict (Postfix's restriction-list rules: the first OK, REJECT or DEFER ends the list; DEFER_IF_*
 * wait for what comes after; PREPEND and DUNNO go on). Pure: no I/O.
 *
 * The services are only asked once the guard's own verdict accepted: nothing a service answers can
 * let a client relay that the guard refused (an OK ends the services' list, not the guard's).
 */
import type { TraceStep } from '../policy/verdict.js';
import { reply, type Reply } from '../smtp/reply.js';
import type { ProtocolState } from './policy-request.js';

export type PolicyAction =
  | { kind: 'ok' }
  | { kind: 'dunno' }
  | { kind: 'reject'; code: number; enhanced: string; text: string; explicit?: true }
  | { kind: 'defer'; code: number; enhanced: string; text: string; explicit?: true }
  | { kind: 'defer_if_permit'; text: string }
  | { kind: 'defer_if_reject'; text: string }
  | { kind: 'prepend'; header: string }
  | { kind: 'unknown'; text: string };

/** The `action` metric label for an action (closed set). */
export function actionLabel(a: PolicyAction): string {
  if ((a.kind === 'reject' || a.kind === 'defer') && a.explicit) return a.kind === 'reject' ? 'code_5xx' : 'code_4xx';
  return a.kind;
}

/** Longest header line a PREPEND may add (RFC 5322 §2.1.1: 998 characters). */
export const MAX_HEADER_BYTES = 998;

const ENHANCED = /^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?:\s+|$)/;

/** Split an optional leading enhanced status code off a text, forcing its class to the reply's. */
function splitEnhanced(text: string, cls: '4' | '5', fallback: string): { enhanced: string; text: string } {
  const m = ENHANCED.exec(text);
  if (!m) return { enhanced: fallback, text };
  return { enhanced: `${cls}.${m[2]}.${m[3]}`, text: text.slice(m[0].length) };
}

/** Printable ASCII only in texts the client will read (the reply codec writes latin1 lines). */
function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, '?').slice(0, 400).trim();
}

/**
 * Parse an action (case-insensitive keyword, then optional text). Anything the guard does not
 * implement (HOLD, DISCARD, FILTER, REDIRECT, restriction names, garbage) is `unknown`: logged,
 * then treated as DUNNO.
 */
export function parsePolicyAction(raw: string): PolicyAction {
  const s = raw.trim();
  const m = /^(\S+)(?:\s+([\s\S]*))?$/.exec(s);
  if (!m) return { kind: 'unknown', text: printable(s) };
  const word = m[1]!;
  const rest = printable(m[2] ?? '');
  const kw = word.toUpperCase();
  switch (kw) {
    case 'OK':
      return { kind: 'ok' };
    case 'DUNNO':
      return { kind: 'dunno' };
    case 'REJECT': {
      // access(5): access_map_reject_code (554), 5.7.1, "Access denied" when no text is given.
      const e = splitEnhanced(rest, '5', '5.7.1');
      return { kind: 'reject', code: 554, enhanced: e.enhanced, text: e.text || 'Access denied' };
    }
    case 'DEFER': {
      // access_map_defer_code (450), 4.7.1.
      const e = splitEnhanced(rest, '4', '4.7.1');
      return { kind: 'defer', code: 450, enhanced: e.enhanced, text: e.text || 'Try again later' };
    }
    case 'DEFER_IF_PERMIT':
      return { kind: 'defer_if_permit', text: rest };
    case 'DEFER_IF_REJECT':
      return { kind: 'defer_if_reject', text: rest };
    case 'PREPEND': {
      // "PREPEND headername: headervalue": a field name of printable ASCII but colon (RFC 5322 §2.2).
      const header = (m[2] ?? '').replace(/[\r\n]+$/, '');
      if (header.length > MAX_HEADER_BYTES || !/^[\x21-\x39\x3b-\x7e]+:[\x20-\x7e\t]*$/.test(header)) return { kind: 'unknown', text: printable(s) };
      return { kind: 'prepend', header };
    }
  }
  if (/^[45][0-9][0-9]$/.test(word)) {
    const code = Number(word);
    const cls = word[0] as '4' | '5';
    const e = splitEnhanced(rest, cls, `${cls}.7.1`);
    return { kind: code >= 500 ? 'reject' : 'defer', code, enhanced: e.enhanced, text: e.text || (cls === '5' ? 'Access denied' : 'Try again later'), explicit: true };
  }
  return { kind: 'unknown', text: printable(s) };
}

/** One service's part in a stage: what it answered, or that it did not. */
export type ServiceAnswer =
  | { service: string; answered: true; action: PolicyAction; raw: string }
  | { service: string; answered: false; failure: string; onError: 'dunno' | 'tempfail' };

export type StageVerdict =
  | { action: 'accept'; prepend: string[]; trace: TraceStep[]; decidedBy?: string }
  | { action: 'reject' | 'defer'; reply: Reply; trace: TraceStep[]; decidedBy: string };

/** Postfix's smtpd_policy_service_default_action: the service could not be asked. */
export const POLICY_SERVICE_UNAVAILABLE = reply(451, '4.3.5', 'Server configuration problem');

/** Postfix words the refusal by stage: "<bob@x>: Recipient address rejected: text". */
function refusalText(stage: ProtocolState, subject: string, text: string): string {
  if (stage === 'RCPT') return `<${subject}>: Recipient address rejected: ${text}`;
  if (stage === 'DATA') return `<DATA>: Data command rejected: ${text}`;
  return text;
}

function refusalReply(stage: ProtocolState, subject: string, code: number, enhanced: string, text: string): Reply {
  // 421 and 521 close the connection (Postfix 2.3 / 2.6).
  const r = reply(code, enhanced, refusalText(stage, subject, text));
  return code === 421 || code === 521 ? { ...r, close: true } : r;
}

function deferIfText(text: string): { enhanced: string; text: string } {
  const e = splitEnhanced(text, '4', '4.7.1');
  return { enhanced: e.enhanced, text: e.text || 'Try again later' };
}

/**
 * The answers of one stage's services, in configuration order, as one verdict. `subject` is the
 * recipient (RCPT stage). The caller asks the services one after the other and stops asking once
 * an answer ends the stage (endsStage).
 */
export function evaluatePolicyAnswers(stage: ProtocolState, subject: string, answers: readonly ServiceAnswer[]): StageVerdict {
  const trace: TraceStep[] = [];
  const prepend: string[] = [];
  let ifPermit: { service: string; text: string } | undefined;
  let ifReject: { service: string; text: string } | undefined;
  const deferBy = (by: { service: string; text: string }, why: string): StageVerdict => {
    const e = deferIfText(by.text);
    trace.push({ ruleId: `policy-service:${by.service}`, result: 'defer', note: why });
    return { action: 'defer', reply: refusalReply(stage, subject, 450, e.enhanced, e.text), trace, decidedBy: by.service };
  };
  for (const a of answers) {
    const ruleId = `policy-service:${a.service}`;
    if (!a.answered) {
      if (a.onError === 'tempfail') {
        trace.push({ ruleId, result: 'defer', note: `no answer (${a.failure}): onError tempfail` });
        return { action: 'defer', reply: POLICY_SERVICE_UNAVAILABLE, trace, decidedBy: a.service };
      }
      trace.push({ ruleId, result: 'dunno', note: `no answer (${a.failure}): onError dunno` });
      continue;
    }
    const act = a.action;
    switch (act.kind) {
      case 'ok':
        if (ifPermit) return deferBy(ifPermit, `OK after DEFER_IF_PERMIT from ${ifPermit.service}`);
        trace.push({ ruleId, result: 'permit', note: 'action=OK (ends the policy services; the guard\'s own verdict stands)' });
        return { action: 'accept', prepend, trace, decidedBy: a.service };
      case 'dunno':
        trace.push({ ruleId, result: 'dunno', note: 'action=DUNNO' });
        continue;
      case 'unknown':
        trace.push({ ruleId, result: 'dunno', note: `unknown action ${JSON.stringify(act.text.slice(0, 80))}: treated as DUNNO` });
        continue;
      case 'prepend':
        prepend.push(act.header);
        trace.push({ ruleId, result: 'dunno', note: `PREPEND ${act.header.slice(0, 80)}` });
        continue;
      case 'defer_if_permit':
        ifPermit ??= { service: a.service, text: act.text };
        trace.push({ ruleId, result: 'dunno', note: `DEFER_IF_PERMIT ${act.text.slice(0, 80)}`.trimEnd() });
        continue;
      case 'defer_if_reject':
        ifReject ??= { service: a.service, text: act.text };
        trace.push({ ruleId, result: 'dunno', note: `DEFER_IF_REJECT ${act.text.slice(0, 80)}`.trimEnd() });
        continue;
      case 'reject':
        if (ifReject) return deferBy(ifReject, `${act.code} from ${a.service} after DEFER_IF_REJECT`);
        trace.push({ ruleId, result: 'reject', note: `action=${a.raw.slice(0, 120)}` });
        return { action: 'reject', reply: refusalReply(stage, subject, act.code, act.enhanced, act.text), trace, decidedBy: a.service };
      case 'defer':
        trace.push({ ruleId, result: 'defer', note: `action=${a.raw.slice(0, 120)}` });
        return { action: 'defer', reply: refusalReply(stage, subject, act.code, act.enhanced, act.text), trace, decidedBy: a.service };
    }
  }
  // The end of the list: the guard's own verdict (accept) is an implicit permit.
  if (ifPermit) return deferBy(ifPermit, `DEFER_IF_PERMIT from ${ifPermit.service}, and nothing refused`);
  return { action: 'accept', prepend, trace };
}

/** Does this answer end the stage (no further service is asked)? */
export function endsStage(a: ServiceAnswer): boolean {
  if (!a.answered) return a.onError === 'tempfail';
  return a.action.kind === 'ok' || a.action.kind === 'reject' || a.action.kind === 'defer';
}
