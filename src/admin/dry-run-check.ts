/**
 * POST /api/v1/check: a dry run of one transaction (connect, MAIL FROM, one RCPT TO) through the
 * same policy functions, in the same order, as a live session (src/session/session.ts): ban at
 * connect, submission without AUTH, evaluateMail, evaluateRcpt, then the directory lookup for an
 * accepted domain whose validation is on. Rate limits are not consulted (they are state, not policy).
 * The answer says which rule decided and every rule consulted: "why was this refused?".
 */
import { Type, type Static } from '@sinclair/typebox';
import type { Config, ListenerConfig } from '../config/schema.js';
import type { RecipientValidator } from '../directory/recipient-validator.js';
import type { BanList } from '../limits/bans.js';
import type { RulesSnapshot } from '../policy/compile.js';
import type { SessionContext } from '../policy/context.js';
import { formatIp, parseIp, unmapIPv4 } from '../smtp/ip-address.js';
import { evaluateRecipientLookup } from '../policy/recipient.js';
import { evaluateRcpt } from '../policy/relay.js';
import { evaluateMail } from '../policy/sender.js';
import type { MailVerdict, RcptVerdict, TraceStep, Warning } from '../policy/verdict.js';
import { analyzeForwardPath, analyzeReversePath, mailboxAddress } from '../smtp/path.js';
import { AUTH_REQUIRED, BAD_RECIPIENT_SYNTAX, BAD_SENDER_SYNTAX, BANNED } from '../smtp/replies.js';
import { replyText, type Reply } from '../smtp/reply.js';
import { AdminError } from './errors.js';

const ONE_LINE = '^[^\\r\\n\\x00]*$';

export const CheckRequestSchema = Type.Object(
  {
    clientIp: Type.String({ minLength: 1, maxLength: 64, description: 'Client address as the guard would see it (after PROXY protocol)' }),
    helo: Type.Optional(Type.String({ maxLength: 255, pattern: ONE_LINE })),
    authUser: Type.Optional(Type.String({ minLength: 1, maxLength: 255, pattern: ONE_LINE, description: 'Authenticated user name, if the client authenticated' })),
    mailFrom: Type.String({ maxLength: 1024, pattern: ONE_LINE, description: 'MAIL FROM argument: "<a@b.test>", "a@b.test" or "<>"' }),
    rcptTo: Type.String({ maxLength: 1024, pattern: ONE_LINE, description: 'RCPT TO argument: "<a@b.test>" or "a@b.test"' }),
    listener: Type.Optional(Type.String({ maxLength: 64, description: 'Listener name (default: the first listener)' })),
  },
  { additionalProperties: false },
);
export type CheckRequest = Static<typeof CheckRequestSchema>;

export type CheckVerdict = 'accept' | 'reject' | 'defer';

export interface CheckStepResult {
  verdict: CheckVerdict;
  ruleId: string;
  reply: string;
  trace: TraceStep[];
}

export interface CheckResponse {
  verdict: CheckVerdict;
  reply: string;
  ruleId: string;
  trace: TraceStep[];
  warnings: { ruleId: string; reply: string }[];
  mail: CheckStepResult;
  rcpt?: CheckStepResult;
  lookup?: { result: 'known' | 'unknown' | 'error'; source: string };
  /** Set when a ban refuses the client at connect. */
  ban?: { target: string; reason: string; expiresAt?: string };
}

export interface CheckDeps {
  config: Pick<Config, 'listeners'>;
  rules: { current(): RulesSnapshot };
  bans?: Pick<BanList, 'check'>;
  validator?: Pick<RecipientValidator, 'mode' | 'lookup'>;
}

const MAIL_ACCEPTED = '250 2.1.0 OK';
const RCPT_ACCEPTED = '250 2.1.5 OK';

/** Accept the argument as written after "MAIL FROM:", or a bare address (wrapped in <>). */
function asPathArgument(s: string): string {
  const t = s.trim();
  return t.includes('<') ? t : `<${t}>`;
}

function warningsOf(ws: readonly Warning[]): { ruleId: string; reply: string }[] {
  return ws.map((w) => ({ ruleId: w.ruleId, reply: replyText(w.reply) }));
}

function stepOf(v: MailVerdict | RcptVerdict, acceptText: string): CheckStepResult {
  return v.action === 'accept'
    ? { verdict: 'accept', ruleId: v.ruleId, reply: acceptText, trace: v.trace }
    : { verdict: v.action, ruleId: v.ruleId, reply: replyText(v.reply), trace: v.trace };
}

function refusal(ruleId: string, reply: Reply, note: string): CheckStepResult {
  const verdict: CheckVerdict = reply.code >= 500 ? 'reject' : 'defer';
  return { verdict, ruleId, reply: replyText(reply), trace: [{ ruleId, result: verdict, note }] };
}

function pickListener(listeners: readonly ListenerConfig[], name: string | undefined): ListenerConfig {
  const l = name === undefined ? listeners[0] : listeners.find((x) => x.name === name);
  if (!l) {
    throw new AdminError('RG_ERR_ADMIN_VALIDATION', name === undefined ? 'no listener configured' : `body/listener: no listener named ${JSON.stringify(name.slice(0, 64))}`);
  }
  return l;
}

export async function dryRunCheck(req: CheckRequest, deps: CheckDeps): Promise<CheckResponse> {
  const ip = parseIp(req.clientIp.trim());
  if (!ip) throw new AdminError('RG_ERR_ADMIN_VALIDATION', 'body/clientIp must be an IPv4 or IPv6 address');
  const clientIp = formatIp(unmapIPv4(ip));
  const listener = pickListener(deps.config.listeners, req.listener);
  const rules = deps.rules.current();
  const base: SessionContext = {
    clientIp,
    listener: listener.name,
    listenerKind: listener.kind,
    listenerRelay: listener.relay === 'allow',
    tls: false,
    ...(req.authUser !== undefined ? { authUser: req.authUser } : {}),
    ...(req.helo !== undefined ? { helo: req.helo } : {}),
  };
  const final = (step: CheckStepResult, mail: CheckStepResult, extra: Partial<CheckResponse> = {}, warnings: Warning[] = []): CheckResponse => ({
    verdict: step.verdict,
    reply: step.reply,
    ruleId: step.ruleId,
    trace: step.trace,
    warnings: warningsOf(warnings),
    mail,
    ...extra,
  });

  // Connect: a banned client never reaches MAIL.
  const ban = deps.bans?.check(clientIp);
  if (ban) {
    const step = refusal('ban', BANNED, `client banned (${ban.target}${ban.reason ? `: ${ban.reason}` : ''})`);
    return final(step, step, { ban: { target: ban.target, reason: ban.reason, ...(ban.expiresAt ? { expiresAt: ban.expiresAt } : {}) } });
  }

  // MAIL FROM (RFC 6409 §4.3: a submission listener wants AUTH first).
  if (listener.kind === 'submission' && req.authUser === undefined) {
    const step = refusal('auth-required', AUTH_REQUIRED, 'submission listener without AUTH');
    return final(step, step);
  }
  const from = analyzeReversePath(asPathArgument(req.mailFrom));
  if (!from.ok) {
    const step = refusal('sender-syntax', BAD_SENDER_SYNTAX, from.reason);
    return final(step, step);
  }
  const mailVerdict = evaluateMail(base, from.value.path, rules);
  const mail = stepOf(mailVerdict, MAIL_ACCEPTED);
  if (mailVerdict.action !== 'accept') return final(mail, mail, {}, mailVerdict.warnings);

  // RCPT TO
  const to = analyzeForwardPath(asPathArgument(req.rcptTo));
  if (!to.ok) {
    const step = refusal('recipient-syntax', BAD_RECIPIENT_SYNTAX, to.reason);
    return final(step, mail, { rcpt: step }, mailVerdict.warnings);
  }
  const path = to.value.path;
  const ctx: SessionContext = { ...base, mailFrom: from.value.path };
  let verdict: RcptVerdict = evaluateRcpt(ctx, path, rules);
  let trace = verdict.trace;
  let warnings = [...mailVerdict.warnings, ...verdict.warnings];
  let lookup: CheckResponse['lookup'];
  const validator = deps.validator;
  if (verdict.action === 'accept' && verdict.ruleId === 'accepted-domains' && path.kind === 'mailbox' && validator && validator.mode(path.mailbox.domain) !== 'off') {
    const res = await validator.lookup(mailboxAddress(path.mailbox), path.mailbox.domain);
    lookup = { result: res.result, source: res.source };
    const looked = evaluateRecipientLookup(res.result, rules);
    trace = [...trace, ...looked.trace];
    warnings = [...warnings, ...looked.warnings];
    verdict = looked;
  }
  const rcpt = { ...stepOf(verdict, RCPT_ACCEPTED), trace };
  return final(rcpt, mail, { rcpt, ...(lookup ? { lookup } : {}) }, warnings);
}
