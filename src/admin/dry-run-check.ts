/**
 * POST /api/v1/check: a dry run of one transaction (connect, MAIL FROM, one RCPT TO) through the
 * same code as a live session: the ban at connect, the codec's parse of the MAIL and RCPT lines,
 * then the envelope judge (src/policy/judge.ts: judgeMail, judgeRcpt with the directory port).
 * Rate limits are not consulted (they are state, not policy); the answer names the limit event the
 * verdict would feed. `priorTransactions` / `priorRecipients` say where the session would stand.
 * The answer says which rule decided and every rule consulted: "why was this refused?".
 */
import type { BackendCapabilities } from '../backend/capabilities.js';
import { Type, type Static } from '@sinclair/typebox';
import type { Config, ListenerConfig } from '../config/schema.js';
import { maxMessageBytes } from '../config/load-config.js';
import type { BanList } from '../limits/bans.js';
import type { RulesSnapshot } from '../policy/compile.js';
import type { SessionContext } from '../policy/context.js';
import { commandSyntaxVerdict, dsnAllowedFor, judgeMail, judgeRcpt, type EnvelopeContext, type RcptServicesPort, type RecipientDirectory } from '../policy/judge.js';
import type { MailVerdict, PolicyRefusal, RcptVerdict, TraceStep, Warning } from '../policy/verdict.js';
import { formatIp, parseIp, unmapIPv4 } from '../util/ip-address.js';
import { parseCommand } from '../smtp/command.js';
import { analyzeForwardPath, analyzeReversePath, mailboxAddress } from '../smtp/path.js';
import { BANNED } from '../smtp/replies.js';
import { replyText, type Reply } from '../smtp/reply.js';
import { AdminError } from './errors.js';
import type { DnsblScorer } from '../dnsbl/dnsbl-scorer.js';
import type { PolicyServices } from '../policy-service/policy-services.js';
import { isTrusted } from '../policy/relay.js';
import { randomBytes } from 'node:crypto';

const ONE_LINE = '^[^\\r\\n\\x00]*$';

export const CheckRequestSchema = Type.Object(
  {
    clientIp: Type.String({ minLength: 1, maxLength: 64, description: 'Client address as the guard would see it (after PROXY protocol)' }),
    helo: Type.Optional(Type.String({ maxLength: 255, pattern: ONE_LINE })),
    authUser: Type.Optional(Type.String({ minLength: 1, maxLength: 255, pattern: ONE_LINE, description: 'Authenticated user name, if the client authenticated' })),
    mailFrom: Type.String({ maxLength: 1024, pattern: ONE_LINE, description: 'MAIL FROM argument, parameters included: "<a@b.test>", "a@b.test", "<>", "<a@b.test> SIZE=1000"' }),
    rcptTo: Type.String({ maxLength: 1024, pattern: ONE_LINE, description: 'RCPT TO argument, parameters included: "<a@b.test>", "a@b.test", "<a@b.test> NOTIFY=NEVER"' }),
    listener: Type.Optional(Type.String({ maxLength: 64, description: 'Listener name (default: the first listener)' })),
    priorTransactions: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000000, description: 'Transactions the session has already started (smtp.maxTransactions)' })),
    priorRecipients: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000000, description: 'Recipients already forwarded in this transaction (smtp.maxRecipients)' })),
    askPolicyServices: Type.Optional(
      Type.Boolean({ description: 'Ask the RCPT-stage policy services too (default false: a greylisting service would record the triplet as an attempt)' }),
    ),
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
  /** The limit event the deciding verdict feeds in a live session (message, recipient, relay-denied, unknown-recipient). */
  limitEvent?: string;
  /** Set when a ban refuses the client at connect. */
  ban?: { target: string; reason: string; expiresAt?: string };
  /** The DNS lists' score at connect (asked for real; answers may come from the cache). */
  dnsbl?: { score: number; threshold: number; refused: boolean; answers: Array<{ zone: string; result: string; weight: number; records: string[]; cached: boolean }> };
  /** Policy services at the RCPT stage: asked (askPolicyServices) with their answers, or only named. */
  policyServices?: { asked: boolean; services: string[]; answers?: Array<{ service: string; action?: string; failure?: string }>; dataStage: string[] };
}

export interface CheckDeps {
  config: Pick<Config, 'listeners' | 'smtp'>;
  rules: { current(): RulesSnapshot };
  bans?: Pick<BanList, 'check'>;
  validator?: RecipientDirectory;
  dnsbl?: Pick<DnsblScorer, 'score' | 'scores'>;
  policyServices?: Pick<PolicyServices, 'asks' | 'names' | 'evaluate'>;
  /** The backend's SMTPUTF8/DSN as a live session last saw them; both assumed offered when unknown. */
  backendCaps?: Pick<BackendCapabilities, 'last'>;
}

const MAIL_ACCEPTED = '250 2.1.0 OK';
const RCPT_ACCEPTED = '250 2.1.5 OK';

/**
 * The argument as written after "MAIL FROM:" / "RCPT TO:"; a bare address is wrapped in <> (its
 * parameters stay after it), and an empty one is "<>".
 */
function asPathArgument(s: string): string {
  const t = s.trim();
  if (t.includes('<')) return t;
  const sp = t.indexOf(' ');
  return sp < 0 ? `<${t}>` : `<${t.slice(0, sp)}>${t.slice(sp)}`;
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

/** The codec's parse of a MAIL or RCPT line, as the live session parses it; a refusal carries its rule id. */
function parseEnvelopeLine(verb: 'MAIL' | 'RCPT', arg: string) {
  const parsed = parseCommand(Buffer.from(`${verb === 'MAIL' ? 'MAIL FROM:' : 'RCPT TO:'}${arg}`, 'utf8'));
  if (parsed.ok && (parsed.value.verb === 'MAIL' || parsed.value.verb === 'RCPT')) return { ok: true as const, value: parsed.value };
  if (parsed.ok) throw new Error('parseEnvelopeLine: unexpected verb');
  if (parsed.kind !== 'syntax') return { ok: false as const, refusal: refusal(parsed.kind, parsed.reply, 'the command line does not parse') };
  const why = verb === 'MAIL' ? analyzeReversePath(arg) : analyzeForwardPath(arg);
  const v: PolicyRefusal = commandSyntaxVerdict(verb, parsed.reply, why.ok ? 'address does not parse' : why.reason);
  return { ok: false as const, refusal: stepOf(v, '') };
}

export async function dryRunCheck(req: CheckRequest, deps: CheckDeps): Promise<CheckResponse> {
  const ip = parseIp(req.clientIp.trim());
  if (!ip) throw new AdminError('RG_ERR_ADMIN_VALIDATION', 'body/clientIp must be an IPv4 or IPv6 address');
  const clientIp = formatIp(unmapIPv4(ip));
  const listener = pickListener(deps.config.listeners, req.listener);
  const rules = deps.rules.current();
  const session: SessionContext = {
    clientIp,
    listener: listener.name,
    listenerKind: listener.kind,
    listenerRelay: listener.relay === 'allow',
    tls: false,
    ...(req.authUser !== undefined ? { authUser: req.authUser } : {}),
    ...(req.helo !== undefined ? { helo: req.helo } : {}),
  };
  const smtp = deps.config.smtp;
  const backendSeen = deps.backendCaps?.last();
  const ctx: EnvelopeContext = {
    session,
    limits: { maxRecipients: smtp.maxRecipients, maxTransactions: smtp.maxTransactions, maxMessageBytes: maxMessageBytes(deps.config) },
    // As a live session: what the backend's EHLO offered when a session last read it (both assumed
    // before any has); who may use DSN is policy.
    backendSmtputf8: backendSeen?.smtputf8 ?? true,
    dsnAllowed: (backendSeen?.dsn ?? true) && dsnAllowedFor(smtp.dsn ?? 'trusted', session, rules),
  };
  let atConnect: Partial<CheckResponse> = {};
  const final = (step: CheckStepResult, mail: CheckStepResult, extra: Partial<CheckResponse> = {}, warnings: Warning[] = []): CheckResponse => ({
    verdict: step.verdict,
    reply: step.reply,
    ruleId: step.ruleId,
    trace: step.trace,
    warnings: warningsOf(warnings),
    mail,
    ...atConnect,
    ...extra,
  });

  // Connect: a banned client never reaches MAIL.
  const ban = deps.bans?.check(clientIp);
  if (ban) {
    const step = refusal('ban', BANNED, `client banned (${ban.target}${ban.reason ? `: ${ban.reason}` : ''})`);
    return final(step, step, { ban: { target: ban.target, reason: ban.reason, ...(ban.expiresAt ? { expiresAt: ban.expiresAt } : {}) } });
  }

  // DNS lists at connect, as the session asks them (trusted clients and unscored listeners skip them).
  if (deps.dnsbl && deps.dnsbl.scores(listener) && !isTrusted(session, rules)) {
    const scored = await deps.dnsbl.score(clientIp);
    atConnect = { dnsbl: { score: scored.score, threshold: scored.threshold, refused: scored.refused, answers: scored.answers } };
    if (scored.refused && scored.reply) {
      const step: CheckStepResult = { verdict: 'reject', ruleId: 'dnsbl', reply: replyText(scored.reply), trace: scored.trace };
      return final(step, step);
    }
  }

  // MAIL FROM: the codec's parse, then the judge.
  const from = parseEnvelopeLine('MAIL', asPathArgument(req.mailFrom));
  if (!from.ok) return final(from.refusal, from.refusal);
  if (from.value.verb !== 'MAIL') throw new Error('unreachable');
  const m = judgeMail(ctx, { heloGiven: true, inTransaction: false, transactions: req.priorTransactions ?? 0 }, from.value.path, from.value.params, rules);
  const mail = stepOf(m.verdict, MAIL_ACCEPTED);
  if (m.verdict.action !== 'accept') return final(mail, mail, {}, m.verdict.warnings);

  // RCPT TO, and the policy services through the judge's port as in a live session — asked only
  // with askPolicyServices (a greylisting service records every triplet it is asked about).
  const to = parseEnvelopeLine('RCPT', asPathArgument(req.rcptTo));
  if (!to.ok) return final(to.refusal, mail, { rcpt: to.refusal }, m.verdict.warnings);
  if (to.value.verb !== 'RCPT') throw new Error('unreachable');
  const ps = deps.policyServices;
  const mailPath = from.value.path;
  const trusted = isTrusted({ ...session, mailFrom: mailPath }, rules);
  const services = ps ? ps.names('rcpt', trusted) : [];
  const dataStage = ps ? ps.names('data', trusted) : [];
  let answers: NonNullable<CheckResponse['policyServices']>['answers'];
  const port: RcptServicesPort | undefined =
    ps && req.askPolicyServices === true && services.length > 0
      ? {
          ask: async (rcptText: string) => {
            const pv = await ps.evaluate(
              'rcpt',
              {
                protocolState: 'RCPT',
                protocolName: 'ESMTP',
                heloName: req.helo,
                sender: mailPath.kind === 'null' ? '' : mailboxAddress(mailPath.mailbox),
                recipient: rcptText,
                recipientCount: 0,
                clientAddress: clientIp,
                saslUsername: req.authUser,
                instance: `check.${randomBytes(6).toString('hex')}`,
              },
              rcptText,
              trusted,
            );
            answers = pv.answers.map((a) => (a.answered ? { service: a.service, action: a.raw } : { service: a.service, failure: a.failure }));
            return pv;
          },
        }
      : undefined;
  const r = await judgeRcpt(ctx, { mailFrom: from.value.path, smtputf8: m.smtputf8, recipients: req.priorRecipients ?? 0 }, to.value.path, to.value.params, rules, deps.validator, port);
  let rcpt = stepOf(r.verdict, RCPT_ACCEPTED);
  let policy: CheckResponse['policyServices'];
  if (ps && (services.length > 0 || dataStage.length > 0) && (r.verdict.action === 'accept' || r.verdict.ruleId.startsWith('policy-service:'))) {
    policy = { asked: port !== undefined, services, ...(answers ? { answers } : {}), dataStage };
    if (!port && services.length > 0) rcpt = { ...rcpt, trace: [...rcpt.trace, { ruleId: 'policy-service', result: 'dunno', note: `not asked in a dry run (set askPolicyServices): ${services.join(', ')}` }] };
  }
  return final(
    rcpt,
    mail,
    { rcpt, ...(r.lookup ? { lookup: r.lookup } : {}), ...(r.limit ? { limitEvent: r.limit } : {}), ...(policy ? { policyServices: policy } : {}) },
    [...m.verdict.warnings, ...r.verdict.warnings],
  );
}
