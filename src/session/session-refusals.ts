/**
 * SessionRefusals: every refusal the session writes gets exactly one log line and one count by rule
 * id here (relay_guard_command_refusals_total{rule}; the line is 'command refused', 'sender
 * refused', 'rcpt refused', or a session refusal's own message such as 'client refused' or 'limit
 * hit'), and MAIL/RCPT verdicts — accepted or not, warn-mode rules included — are counted by rule
 * id. The admin console's ring of recent refusals gets what the log line says, no more.
 */
import type { ProtocolErrorKind, Reply } from '../smtp/reply.js';
import { replyText } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import { commandSyntaxVerdict, RELAY_RULES } from '../policy/judge.js';
import type { RcptVerdict, MailVerdict } from '../policy/verdict.js';
import { verbLabel, type Metrics } from '../observability/metrics.js';
import { HELD, type Outcome, type Refusal } from './outcome.js';
import { cap } from './session-summary.js';
import type { SmtpSession } from './session.js';

/** The rule id of a command the codec refused, by protocol error kind (kebab-case, as every rule id). */
const PROTOCOL_RULES: Partial<Record<ProtocolErrorKind, string>> = {
  line_too_long: 'line-too-long',
  bad_bytes: 'bad-bytes',
  unknown_verb: 'unknown-verb',
  syntax: 'command-syntax',
  bad_sequence: 'bad-sequence',
  http: 'http-request',
  tls_on_plain: 'tls-on-plain',
};

export class SessionRefusals {
  constructor(private readonly s: SmtpSession) {}

  /**
   * A refusal's one log line and its one count by rule id (plus the counters of its stage: the
   * protocol error kind, the refused verb, the MAIL/RCPT verdict). Refusals that are not a verb
   * handler's outcome (admission, limits, DATA) come here too, then write their reply themselves.
   */
  record(r: Refusal): void {
    const { s } = this;
    const { metrics } = s.svc;
    metrics.commandRefusals.inc({ rule: SessionRefusals.ruleId(r) });
    switch (r.stage) {
      case 'command':
        if (r.kind) metrics.protocolErrors.inc({ kind: r.kind });
        s.log.info({ ruleId: r.ruleId, reply: replyText(r.reply) }, 'command refused');
        return;
      case 'verb':
        metrics.refusedVerbs.inc({ verb: verbLabel(r.verb) });
        s.log.info({ ruleId: SessionRefusals.ruleId(r), verb: verbLabel(r.verb), reply: replyText(r.reply) }, 'command refused');
        return;
      case 'session': {
        if (r.kind) metrics.protocolErrors.inc({ kind: r.kind });
        const line = { ruleId: r.ruleId, ...r.fields, reply: replyText(r.reply) };
        if (r.warn) s.log.warn(line, r.msg);
        else s.log.info(line, r.msg);
        return;
      }
      case 'sender':
        this.countMailVerdict(r.verdict);
        s.log.info({ helo: cap(s.helo), mailFrom: cap(r.sender), ruleId: r.verdict.ruleId, reply: replyText(r.verdict.reply) }, 'sender refused');
        this.note('sender', r.sender, undefined, r.verdict.ruleId, r.verdict.reply);
        return;
      case 'rcpt':
        s.tx.refused++;
        s.summary.rcptRefused++;
        this.countRcptVerdict(r.verdict);
        s.log.info(
          { helo: cap(s.helo), mailFrom: cap(s.tx.sender), rcpt: cap(r.rcpt), ruleId: r.verdict.ruleId, reply: replyText(r.verdict.reply), lookup: r.lookup },
          'rcpt refused',
        );
        this.note('rcpt', s.tx.sender, r.rcpt, r.verdict.ruleId, r.verdict.reply);
        return;
    }
  }

  /** The rule id a refusal is counted and logged under: a fixed vocabulary (REFUSAL_RULES) or an operator-named id, never client text. */
  static ruleId(r: Refusal): string {
    switch (r.stage) {
      case 'command':
      case 'session':
        return r.ruleId;
      case 'verb':
        return r.ruleId ?? 'verb-not-allowed';
      case 'sender':
      case 'rcpt':
        return r.verdict.ruleId;
    }
  }

  /**
   * The backend seat had no place for this client: every backend slot taken (backend-capacity), or
   * this client's share of them (backend-client-share; the seat wrote that line with the share).
   */
  seatRefused(r: Reply): void {
    if (r !== R.CAPACITY_PER_CLIENT) return this.record({ stage: 'session', ruleId: 'backend-capacity', reply: r, msg: 'client refused' });
    this.s.svc.metrics.commandRefusals.inc({ rule: 'backend-client-share' });
  }

  /** The reply a refusal gives when nothing else answers for it. */
  static reply(r: Refusal): Reply {
    return r.stage === 'sender' || r.stage === 'rcpt' ? r.verdict.reply : r.reply;
  }

  verb(verb: string, ruleId?: string): Outcome {
    return { kind: 'refuse', refusal: { stage: 'verb', verb, reply: R.VERB_NOT_ALLOWED, ...(ruleId ? { ruleId } : {}) } };
  }

  /**
   * A command the codec refused: counted by kind, logged once. A MAIL or RCPT whose address does
   * not parse is also a verdict (sender-syntax, recipient-syntax), as /api/v1/check reports it.
   * Every protocol error that does not close counts towards the protocol-error limit, after its reply.
   */
  protocolError(kind: ProtocolErrorKind, r: Reply, line?: Buffer): Outcome {
    const { s } = this;
    if (r.close) s.summary.outcome = kind;
    const after = !r.close && s.svc.limiter ? (): Outcome => ({ kind: 'wait', until: s.limits.check('protocol-error', {}).then(() => HELD) }) : undefined;
    const verb = line && kind === 'syntax' ? /^(MAIL|RCPT) /i.exec(line.toString('latin1', 0, 5))?.[1]?.toUpperCase() : undefined;
    let refusal: Refusal = { stage: 'command', ruleId: PROTOCOL_RULES[kind] ?? kind.replace(/_/g, '-'), kind, reply: r };
    if (verb === 'MAIL' || verb === 'RCPT') {
      // Counted as a protocol error and as a verdict; logged once, as the verdict.
      s.svc.metrics.protocolErrors.inc({ kind });
      const arg = cap(line!.toString('utf8', 5), 256);
      const verdict = commandSyntaxVerdict(verb, r, 'address does not parse');
      refusal = verb === 'MAIL' ? { stage: 'sender', sender: arg, verdict } : { stage: 'rcpt', rcpt: arg ?? '', lookup: undefined, verdict };
    }
    return { kind: 'refuse', refusal, answer: () => ({ kind: 'reply', reply: r }), ...(after ? { after } : {}) };
  }

  countRcptVerdict(v: RcptVerdict): void {
    this.countVerdict(this.s.svc.metrics.rcptVerdicts, v, 'rcpt would be refused');
    if (v.action !== 'accept' && RELAY_RULES.has(v.ruleId)) this.s.svc.metrics.relayDenials.inc({ rule: v.ruleId });
  }

  countMailVerdict(v: MailVerdict): void {
    this.countVerdict(this.s.svc.metrics.mailVerdicts, v, 'sender would be refused');
  }

  /** Rules in warn mode are counted and logged as what they would have done; the deciding rule as enforced. */
  private countVerdict(counter: Metrics['rcptVerdicts'], v: RcptVerdict | MailVerdict, wouldRefuse: string): void {
    for (const w of v.warnings) {
      counter.inc({ verdict: 'reject', mode: 'warn', rule: w.ruleId });
      this.s.log.info({ ruleId: w.ruleId, reply: replyText(w.reply), mode: 'warn' }, wouldRefuse);
    }
    counter.inc({ verdict: v.action, mode: 'enforce', rule: v.ruleId });
  }

  /** The admin console's ring of recent refusals: what the refusal log line just said, no more. */
  private note(kind: 'rcpt' | 'sender', mailFrom: string | undefined, rcpt: string | undefined, ruleId: string, r: Reply): void {
    const { s } = this;
    s.svc.refusals?.record({ kind, sessionId: s.id, clientIp: s.clientIp, listener: s.listener.config.name, helo: s.helo, authUser: s.authUser, mailFrom, rcpt, ruleId, reply: replyText(r) });
  }
}
