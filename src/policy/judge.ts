/**
 * The envelope judge: every MAIL FROM and RCPT TO verdict, in one place, for the live session and
 * for POST /api/v1/check alike (one decision, written once, cannot drift).
 *
 * judgeMail, first decisive answer wins:
 *   helo-required          MAIL before HELO/EHLO                      503 5.5.1
 *   nested-mail            MAIL inside a transaction                  503 5.5.1
 *   auth-required          submission listener, no AUTH (RFC 6409 §4.3) 530 5.7.0
 *   too-many-transactions  smtp.maxTransactions reached               421 4.7.0 and close
 *   unsupported-parameter  a parameter we do not offer                555 5.5.4
 *   parameter-syntax       SIZE that is not a number (RFC 1870)       501 5.5.4
 *   message-too-large      SIZE over smtp.maxMessageBytes             552 5.3.4
 *   smtputf8-required      non-ASCII sender without SMTPUTF8 (RFC 6531 §3.4) 553 5.6.7
 *   evaluateMail           sender rules, anti-spoofing, default-permit (sender.ts)
 * judgeRcpt:
 *   mail-required          RCPT before MAIL                           503 5.5.1
 *   too-many-recipients    smtp.maxRecipients forwarded already       452 4.5.3
 *   unsupported-parameter  a parameter we do not offer                555 5.5.4
 *   smtputf8-required      non-ASCII recipient, MAIL without SMTPUTF8 553 5.6.7
 *   evaluateRcpt           postmaster, routing tricks, accepted domains, relay trust (relay.ts)
 *   postmaster             postmaster@<our domain> is never looked up (RFC 5321 §4.5.1)
 *   recipient lookup       the directory port, when the domain's validation is on (recipient.ts)
 *   policy-service:NAME    Postfix policy services, through their port, about an accepted recipient
 *                          only (their OK ends their list, never the guard's: no relay through them)
 * Syntax errors are the codec's (sender-syntax, recipient-syntax): commandSyntaxVerdict.
 *
 * Each judgement carries the verdict (rule id, reply, trace, warnings), what to forward (the
 * parameters kept) and the limit event it feeds. Policy does no I/O: the directory comes in as a
 * port, and judgeRcpt only awaits it when the verdict asks for a lookup.
 */
import { mailboxAddress, type EsmtpParam, type ForwardPath, type ReversePath } from '../smtp/path.js';
import type { Reply } from '../smtp/reply.js';
import {
  AUTH_REQUIRED, HELO_FIRST, MESSAGE_TOO_LARGE, NEED_MAIL, NESTED_MAIL, NON_ASCII_ADDRESS, SYNTAX_ERROR,
  TOO_MANY_RECIPIENTS, TOO_MANY_TRANSACTIONS, UNSUPPORTED_PARAMETER,
} from '../smtp/replies.js';
import type { RulesSnapshot } from './compile.js';
import type { SessionContext } from './context.js';
import { evaluateRecipientLookup } from './recipient.js';
import { evaluateRcpt, isTrusted } from './relay.js';
import { evaluateMail } from './sender.js';
import type { MailVerdict, PolicyRefusal, RcptVerdict, RecipientValidationMode, TraceStep } from './verdict.js';

/** Limit events an envelope verdict feeds (a subset of the limiter's events; policy names them, the limiter counts). */
export type EnvelopeLimitEvent = 'message' | 'recipient' | 'relay-denied' | 'unknown-recipient';

/** The directory, as policy sees it: "which validation for this domain?" and "is this recipient ours?". */
export interface RecipientDirectory {
  mode(domain: string): RecipientValidationMode;
  lookup(address: string, domain: string): Promise<{ result: 'known' | 'unknown' | 'error'; source: string; detail?: string }>;
}

/**
 * Postfix policy services (src/policy-service), as policy sees them: what they made of a recipient
 * the guard accepted. `undefined` from the port: none was asked (none configured for this client).
 */
export interface RcptServicesVerdict {
  readonly action: 'accept' | 'reject' | 'defer';
  readonly reply?: Reply;
  readonly trace: readonly TraceStep[];
  /** The service whose answer decided (rule id policy-service:NAME). */
  readonly decidedBy?: string | undefined;
  /** Header lines to add at the top of the message (PREPEND). */
  readonly prepend?: readonly string[];
}

export interface RcptServicesPort {
  ask(rcpt: string): Promise<RcptServicesVerdict | undefined>;
}

/** The guard's envelope settings (config smtp.*). */
export interface EnvelopeLimits {
  readonly maxRecipients: number;
  readonly maxTransactions: number;
  readonly maxMessageBytes: number;
}

/** What the judge knows beyond the session's facts: the guard's settings and what the backend offers. */
export interface EnvelopeContext {
  readonly session: SessionContext;
  readonly limits: EnvelopeLimits;
  /** The backend takes SMTPUTF8 (RFC 6531): the parameter passes and non-ASCII addresses may follow it. */
  readonly backendSmtputf8: boolean;
  /** DSN parameters (RFC 3461: RET, ENVID, NOTIFY, ORCPT) pass for this client. */
  readonly dsnAllowed: boolean;
}

/** config smtp.dsn: who may use DSN (RFC 3461) through the guard. */
export type DsnSetting = 'trusted' | 'all' | 'off';

/**
 * Whether DSN is advertised to this client and its parameters (RET, ENVID, NOTIFY, ORCPT) are
 * forwarded (Postfix DSN_README: a stranger's NOTIFY=SUCCESS makes the backend mail a receipt to a
 * forged sender — backscatter). `trusted`: relay-trusted clients only (relay network, internal
 * listener, or an AUTH that grants relay), never a never-relay address.
 */
export function dsnAllowedFor(setting: DsnSetting, ctx: SessionContext, rules: RulesSnapshot): boolean {
  if (setting === 'off') return false;
  if (setting === 'all') return true;
  return isTrusted(ctx, rules);
}

/** Where the session stands when MAIL arrives. */
export interface MailState {
  readonly heloGiven: boolean;
  readonly inTransaction: boolean;
  /** Transactions already started in this session. */
  readonly transactions: number;
}

/** Where the transaction stands when RCPT arrives. */
export interface RcptState {
  /** The MAIL of this transaction (undefined: none yet). */
  readonly mailFrom: ReversePath | undefined;
  /** MAIL carried SMTPUTF8. */
  readonly smtputf8: boolean;
  /** Recipients forwarded to the backend in this transaction. */
  readonly recipients: number;
}

export interface MailJudgement {
  readonly verdict: MailVerdict;
  /** On accept: the parameters to forward, the declared SIZE (0 if none), SMTPUTF8 asked. */
  readonly params: readonly EsmtpParam[];
  readonly declaredSize: number;
  readonly smtputf8: boolean;
  /** The limit event this MAIL feeds (accepted MAIL: 'message'). */
  readonly limit: EnvelopeLimitEvent | undefined;
}

export interface RcptJudgement {
  readonly verdict: RcptVerdict;
  /** On accept: the parameters to forward. */
  readonly params: readonly EsmtpParam[];
  /** The recipient as text ('postmaster' for <postmaster>), for logs. */
  readonly rcpt: string;
  /** The directory was asked: its answer and where it came from. */
  readonly lookup: { result: 'known' | 'unknown' | 'error'; source: string } | undefined;
  readonly limit: EnvelopeLimitEvent | undefined;
  /** Header lines policy services asked to PREPEND for this recipient. */
  readonly prepend?: readonly string[];
}

/** ESMTP parameters that pass, by command (the keywords the guard advertises). */
const DSN_MAIL_PARAMS = new Set(['RET', 'ENVID']);
const DSN_RCPT_PARAMS = new Set(['NOTIFY', 'ORCPT']);
/** Refusals that are relay attempts: they feed the relay-denied limit and the relay denial count. */
export const RELAY_RULES: ReadonlySet<string> = new Set(['relay-denied', 'routing-tricks', 'encapsulated-address', 'auth-unproven']);

// eslint-disable-next-line no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;

function isAscii(s: string): boolean {
  return !NON_ASCII.test(s);
}

/** A refusal decided by the judge itself (not a rule file): its rule id, the reply and why. */
function refused(ruleId: string, r: Reply, note: string): PolicyRefusal {
  const action = r.code >= 500 ? 'reject' : 'defer';
  return { action, ruleId, reply: r, trace: [{ ruleId, result: action, note }], warnings: [] };
}

/** A MAIL or RCPT line the codec could not parse: the same rule id live and in /check. */
export function commandSyntaxVerdict(verb: 'MAIL' | 'RCPT', r: Reply, note: string): PolicyRefusal {
  return refused(verb === 'MAIL' ? 'sender-syntax' : 'recipient-syntax', r, note);
}

function mailRefusal(ruleId: string, r: Reply, note: string): MailJudgement {
  return { verdict: refused(ruleId, r, note), params: [], declaredSize: 0, smtputf8: false, limit: undefined };
}

function mailParamAllowed(keyword: string, ctx: EnvelopeContext): boolean {
  if (keyword === 'SIZE' || keyword === 'BODY') return true;
  if (keyword === 'SMTPUTF8') return ctx.backendSmtputf8;
  return DSN_MAIL_PARAMS.has(keyword) && ctx.dsnAllowed;
}

export function judgeMail(ctx: EnvelopeContext, state: MailState, path: ReversePath, params: readonly EsmtpParam[], rules: RulesSnapshot): MailJudgement {
  if (!state.heloGiven) return mailRefusal('helo-required', HELO_FIRST, 'MAIL before HELO/EHLO');
  if (state.inTransaction) return mailRefusal('nested-mail', NESTED_MAIL, 'MAIL inside a transaction');
  // RFC 6409 §4.3: a submission listener wants AUTH first.
  if (ctx.session.listenerKind === 'submission' && ctx.session.authUser === undefined) return mailRefusal('auth-required', AUTH_REQUIRED, 'submission listener without AUTH');
  if (state.transactions >= ctx.limits.maxTransactions) return mailRefusal('too-many-transactions', TOO_MANY_TRANSACTIONS, `smtp.maxTransactions (${ctx.limits.maxTransactions}) reached`);
  let declaredSize = 0;
  let smtputf8 = false;
  for (const p of params) {
    if (!mailParamAllowed(p.keyword, ctx)) return mailRefusal('unsupported-parameter', UNSUPPORTED_PARAMETER, `MAIL parameter ${p.keyword} not offered`);
    if (p.keyword === 'BODY' && !/^(7BIT|8BITMIME)$/i.test(p.value ?? '')) return mailRefusal('unsupported-parameter', UNSUPPORTED_PARAMETER, 'BODY other than 7BIT or 8BITMIME');
    if (p.keyword === 'SIZE') {
      // RFC 1870 §3: size-value ::= 1*20DIGIT
      if (!/^[0-9]{1,20}$/.test(p.value ?? '')) return mailRefusal('parameter-syntax', SYNTAX_ERROR, 'SIZE is not a number');
      const size = Number(p.value);
      if (size > ctx.limits.maxMessageBytes) return mailRefusal('message-too-large', MESSAGE_TOO_LARGE, `declared SIZE over ${ctx.limits.maxMessageBytes} bytes`);
      declaredSize = size;
    }
    if (p.keyword === 'SMTPUTF8') smtputf8 = true;
  }
  // RFC 6531 §3.4: a non-ASCII address needs SMTPUTF8 on MAIL; a legacy backend would misread it.
  if (!smtputf8 && path.kind === 'mailbox' && !isAscii(mailboxAddress(path.mailbox))) {
    return mailRefusal('smtputf8-required', NON_ASCII_ADDRESS, 'non-ASCII sender without SMTPUTF8');
  }
  // The sender restrictions get the sender as their own argument: the session's facts need no copy.
  const verdict = evaluateMail(ctx.session, path, rules);
  if (verdict.action !== 'accept') return { verdict, params: [], declaredSize: 0, smtputf8: false, limit: undefined };
  return { verdict, params, declaredSize, smtputf8, limit: 'message' };
}

function rcptParamAllowed(keyword: string, ctx: EnvelopeContext): boolean {
  return DSN_RCPT_PARAMS.has(keyword) && ctx.dsnAllowed;
}

function rcptRefusal(ruleId: string, r: Reply, note: string, rcpt: string): RcptJudgement {
  return { verdict: refused(ruleId, r, note), params: [], rcpt, lookup: undefined, limit: undefined };
}

/** The limit event a RCPT verdict feeds: relay attempts, unknown recipients (harvesting), accepted recipients. */
export function rcptLimitEvent(v: RcptVerdict): EnvelopeLimitEvent | undefined {
  if (v.action === 'accept') return 'recipient';
  if (RELAY_RULES.has(v.ruleId)) return 'relay-denied';
  return v.ruleId === 'recipient-unknown' ? 'unknown-recipient' : undefined;
}

/**
 * The part of RCPT that needs no directory. `ask` is set when the verdict needs a lookup: pass the
 * directory's answer to completeRcpt (judgeRcpt does both).
 */
export function judgeRcptPolicy(
  ctx: EnvelopeContext, state: RcptState, path: ForwardPath, params: readonly EsmtpParam[], rules: RulesSnapshot, directory: Pick<RecipientDirectory, 'mode'> | undefined,
): RcptJudgement & { ask: { address: string; domain: string } | undefined } {
  const rcpt = path.kind === 'postmaster' ? 'postmaster' : mailboxAddress(path.mailbox);
  const early = (j: RcptJudgement) => ({ ...j, ask: undefined });
  if (state.mailFrom === undefined) return early(rcptRefusal('mail-required', NEED_MAIL, 'RCPT before MAIL', rcpt));
  if (state.recipients >= ctx.limits.maxRecipients) {
    return early(rcptRefusal('too-many-recipients', TOO_MANY_RECIPIENTS, `smtp.maxRecipients (${ctx.limits.maxRecipients}) reached`, rcpt));
  }
  for (const p of params) {
    if (!rcptParamAllowed(p.keyword, ctx)) return early(rcptRefusal('unsupported-parameter', UNSUPPORTED_PARAMETER, `RCPT parameter ${p.keyword} not offered`, rcpt));
  }
  if (!state.smtputf8 && !isAscii(rcpt)) return early(rcptRefusal('smtputf8-required', NON_ASCII_ADDRESS, 'non-ASCII recipient, MAIL without SMTPUTF8', rcpt));
  // The recipient restrictions do not look at the sender: the session's facts as they are.
  const verdict = evaluateRcpt(ctx.session, path, rules);
  if (verdict.action === 'accept' && verdict.ruleId === 'accepted-domains' && path.kind === 'mailbox' && directory && directory.mode(path.mailbox.domain) !== 'off') {
    // RFC 5321 §4.5.1: postmaster@<our domain> must be accepted, listed or not.
    if (path.mailbox.localPart.toLowerCase() === 'postmaster') {
      const exempt: RcptVerdict = {
        action: 'accept', ruleId: 'postmaster', validate: 'off', warnings: verdict.warnings,
        trace: [...verdict.trace, { ruleId: 'postmaster', result: 'permit', note: 'postmaster of our domain: never looked up (RFC 5321 §4.5.1)' }],
      };
      return { verdict: exempt, params, rcpt, lookup: undefined, limit: 'recipient', ask: undefined };
    }
    return { verdict, params, rcpt, lookup: undefined, limit: undefined, ask: { address: rcpt, domain: path.mailbox.domain } };
  }
  return { verdict, params: verdict.action === 'accept' ? params : [], rcpt, lookup: undefined, limit: rcptLimitEvent(verdict), ask: undefined };
}

/** The directory answered: the verdict it gives, with the policy part's trace and warnings before it. */
export function completeRcpt(j: RcptJudgement, res: { result: 'known' | 'unknown' | 'error'; source: string }, rules: RulesSnapshot): RcptJudgement {
  const looked = evaluateRecipientLookup(res.result, rules);
  const trace = [...j.verdict.trace, ...looked.trace];
  const warnings = [...j.verdict.warnings, ...looked.warnings];
  const verdict: RcptVerdict = { ...looked, trace, warnings };
  return { verdict, params: verdict.action === 'accept' ? j.params : [], rcpt: j.rcpt, lookup: { result: res.result, source: res.source }, limit: rcptLimitEvent(verdict) };
}

/**
 * The policy services answered about a recipient the guard accepted: their trace follows the judge's;
 * a refusal is theirs (rule policy-service:NAME, no limit event); an accept keeps the guard's verdict.
 */
export function completeRcptWithServices(j: RcptJudgement, s: RcptServicesVerdict): RcptJudgement {
  if (j.verdict.action !== 'accept') return j;
  const trace = [...j.verdict.trace, ...s.trace];
  if (s.action === 'accept' || !s.reply) return { ...j, verdict: { ...j.verdict, trace }, prepend: s.prepend ?? [] };
  const verdict: RcptVerdict = { action: s.action, ruleId: `policy-service:${s.decidedBy ?? 'unknown'}`, reply: s.reply, trace, warnings: j.verdict.warnings };
  return { verdict, params: [], rcpt: j.rcpt, lookup: j.lookup, limit: undefined };
}

export async function judgeRcpt(
  ctx: EnvelopeContext, state: RcptState, path: ForwardPath, params: readonly EsmtpParam[], rules: RulesSnapshot, directory: RecipientDirectory | undefined,
  services?: RcptServicesPort,
): Promise<RcptJudgement> {
  const first = judgeRcptPolicy(ctx, state, path, params, rules, directory);
  const j = first.ask === undefined || directory === undefined ? first : completeRcpt(first, await directory.lookup(first.ask.address, first.ask.domain), rules);
  if (services === undefined || j.verdict.action !== 'accept') return j;
  const asked = await services.ask(j.rcpt);
  return asked === undefined ? j : completeRcptWithServices(j, asked);
}
