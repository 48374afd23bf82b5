/**
 * HELO/EHLO, MAIL and RCPT: the session asks the envelope judge (src/policy/judge.ts) and the
 * limiter, and returns what should happen. What was judged is what is forwarded: MAIL and RCPT go
 * out re-serialised from the parsed form the judge saw (invariant 1).
 */
import { isFailure } from '../backend/backend-link.js';
import { formatCommand, type Command } from '../smtp/command.js';
import { filterEhlo, ehloKeywords } from '../smtp/ehlo.js';
import { mailboxAddress, type EsmtpParam, type ForwardPath, type ReversePath } from '../smtp/path.js';
import { reply, type Reply } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import { dsnAllowedFor, judgeMail, judgeRcpt, type EnvelopeContext, type EnvelopeLimits } from '../policy/judge.js';
import { HELD, type Outcome } from './outcome.js';
import { cap } from './session-summary.js';
import type { SmtpSession } from './session.js';

/** smtp.ehloAllow without DSN, one copy per configured set (and so one filtered EHLO reply, ehlo.ts). */
const withoutDsn = new WeakMap<ReadonlySet<string>, ReadonlySet<string>>();

export class EnvelopeRelay {
  private readonly limits: EnvelopeLimits;
  /** The backend offered SMTPUTF8 / DSN in its EHLO reply (and smtp.ehloAllow passes them): issue 16 items 6, 7. */
  private backendSmtputf8 = false;
  private backendDsn = false;

  constructor(private readonly s: SmtpSession) {
    const { config, maxMessageBytes } = s.svc;
    this.limits = { maxRecipients: config.smtp.maxRecipients, maxTransactions: config.smtp.maxTransactions, maxMessageBytes };
  }

  onHelo(cmd: Extract<Command, { verb: 'HELO' | 'EHLO' }>): Outcome {
    const { s } = this;
    s.helo = cmd.domain;
    s.ehlo = cmd.verb === 'EHLO';
    s.tx.reset();
    const own = s.seat.own;
    if (!own) {
      // EHLO resets the transaction (RFC 5321 §4.1.4): give a held backend session back (RSET first).
      s.seat.endTransaction(false);
      if (cmd.verb === 'HELO') {
        this.learnExtensions(undefined);
        return { kind: 'reply', reply: reply(250, undefined, s.svc.config.smtp.hostname) };
      }
      // No backend session of the client's own: the guard answers with the backend's capabilities, filtered.
      const caps = s.seat.capabilities();
      const kw = ehloKeywords(caps);
      s.auth.backendMechanisms = kw.get('AUTH');
      this.learnExtensions(kw);
      return { kind: 'reply', reply: this.filter(caps) };
    }
    const slot = s.replies.seq.later();
    own.send(cmd.verb, formatCommand(cmd), (r) => {
      if (isFailure(r)) return slot.resolve(s.replies.backendFailure(r.failure, false));
      s.replies.count('backend', r);
      if (cmd.verb === 'EHLO' && r.code === 250) {
        const kw = ehloKeywords(r);
        own.pipelining = kw.has('PIPELINING');
        s.auth.backendMechanisms = kw.get('AUTH');
        this.learnExtensions(kw);
        return slot.resolve(this.filter(r));
      }
      this.learnExtensions(undefined);
      slot.resolve(r);
    });
    return HELD;
  }

  /** The backend's EHLO reply as the client sees it: only allowed keywords, the guard's SIZE, STARTTLS and AUTH where they may be used. */
  private filter(r: Reply): Reply {
    const { s } = this;
    const add: string[] = [];
    if (s.startTls.offered()) add.push('STARTTLS');
    const auth = s.auth.ehloKeyword();
    if (auth) add.push(auth);
    return filterEhlo(r, { allow: this.ehloAllowNow(), maxSizeBytes: s.svc.maxMessageBytes, add });
  }

  /**
   * What the backend's EHLO offers that the guard passes on: SMTPUTF8 (RFC 6531) and DSN (RFC 3461)
   * are forwarded only to a backend that advertised them (and smtp.ehloAllow keeps them); HELO or
   * no EHLO yet (or a new TLS layer): neither.
   */
  learnExtensions(kw: ReadonlyMap<string, string> | undefined): void {
    const allow = this.s.svc.ehloAllow;
    this.backendSmtputf8 = kw !== undefined && kw.has('SMTPUTF8') && allow.has('SMTPUTF8');
    this.backendDsn = kw !== undefined && kw.has('DSN') && allow.has('DSN');
    if (kw !== undefined) this.s.svc.backendCaps?.note({ smtputf8: this.backendSmtputf8, dsn: this.backendDsn });
  }

  /** DSN for this client now: the backend offers it and smtp.dsn allows this client (trusted by default). */
  private dsnAllowed(): boolean {
    const { s } = this;
    return this.backendDsn && dsnAllowedFor(s.svc.config.smtp.dsn ?? 'trusted', s.context(), s.rules());
  }

  /** smtp.ehloAllow for this client: without DSN when it may not use it (strangers never see the keyword). */
  private ehloAllowNow(): ReadonlySet<string> {
    const { s } = this;
    if (!s.svc.ehloAllow.has('DSN') || dsnAllowedFor(s.svc.config.smtp.dsn ?? 'trusted', s.context(), s.rules())) return s.svc.ehloAllow;
    let allow = withoutDsn.get(s.svc.ehloAllow);
    if (!allow) {
      const copy = new Set(s.svc.ehloAllow);
      copy.delete('DSN');
      withoutDsn.set(s.svc.ehloAllow, (allow = copy));
    }
    return allow;
  }

  async onMail(path: ReversePath, params: readonly EsmtpParam[]): Promise<Outcome> {
    const { s } = this;
    const { tx } = s;
    // A transaction whose (lent) backend session was lost ends with the client's next MAIL too.
    if (tx.lost) tx.reset();
    const j = judgeMail(this.envelope(), { heloGiven: !!s.helo, inTransaction: tx.mailSent, transactions: s.summary.transactions }, path, params, s.rules());
    const sender = path.kind === 'null' ? '' : mailboxAddress(path.mailbox);
    if (j.verdict.action !== 'accept') return { kind: 'refuse', refusal: { stage: 'sender', sender, verdict: j.verdict } };
    s.refusals.countMailVerdict(j.verdict);
    // (No limit counts the event: no promise to wait for.)
    if (j.limit && !s.limits.noLimitFor(j.limit) && (await s.limits.check(j.limit, { sender }))) return HELD;
    if (!s.seat.link && !(await s.seat.forTransaction())) return s.phase === 'closed' ? HELD : { kind: 'reply', reply: R.BACKEND_FAILED_IN_TRANSACTION };
    s.summary.transactions++;
    tx.mailSent = true;
    tx.mailFrom = path;
    tx.sender = sender;
    tx.smtputf8 = j.smtputf8;
    tx.declaredSize = j.declaredSize;
    return {
      kind: 'forward',
      command: { verb: 'MAIL', path, params: j.params },
      onReply: (r) => {
        if (r.code < 300) return;
        tx.reset();
        // A lent backend session: commands pipelined behind the refused MAIL are still out on it; it
        // goes back only once they are answered (their handlers return it, or the next MAIL reuses it).
        const link = s.seat.link;
        if (!link || link.outstanding === 0) s.seat.endTransaction(true);
      },
    };
  }

  async onRcpt(path: ForwardPath, params: readonly EsmtpParam[]): Promise<Outcome> {
    const { s } = this;
    const { tx } = s;
    if (tx.mailSent && tx.lost) {
      tx.refused++;
      return { kind: 'reply', reply: R.BACKEND_FAILED_IN_TRANSACTION };
    }
    const state = { mailFrom: tx.mailSent ? tx.mailFrom : undefined, smtputf8: tx.smtputf8, recipients: tx.rcptForwarded };
    const j = await judgeRcpt(this.envelope(), state, path, params, s.rules(), s.svc.validator, s.policy.rcptPort());
    if (s.phase === 'closed') return HELD;
    if (j.verdict.action !== 'accept') {
      const refused = j.verdict.reply;
      const limit = j.limit;
      return {
        kind: 'refuse',
        refusal: { stage: 'rcpt', rcpt: j.rcpt, lookup: j.lookup?.source, verdict: j.verdict },
        ...(limit ? { answer: () => ({ kind: 'wait', until: s.limits.check(limit, {}, refused).then((answered): Outcome => (answered ? HELD : { kind: 'reply', reply: refused })) }) } : {}),
      };
    }
    s.refusals.countRcptVerdict(j.verdict);
    if (j.limit && !s.limits.noLimitFor(j.limit) && (await s.limits.check(j.limit, { sender: tx.sender }))) return HELD;
    if (s.svc.log.isLevelEnabled('debug')) s.log.debug({ rcpt: cap(j.rcpt), ruleId: j.verdict.ruleId, lookup: j.lookup?.source }, 'rcpt accepted');
    tx.rcptForwarded++;
    const rcpt = j.rcpt;
    const prepend = j.prepend ?? [];
    const serial = tx.serial;
    return {
      kind: 'forward',
      command: { verb: 'RCPT', path, params: j.params },
      onReply: (r) => {
        // The transaction ended before this reply came (its MAIL was refused): nothing to count.
        if (serial !== tx.serial) return;
        if (r.code < 300) {
          tx.accepted.push(rcpt);
          s.summary.rcptAccepted++;
          s.policy.prepend(prepend);
          return;
        }
        tx.refused++;
        // The backend itself does not know the mailbox (RFC 3463 X.1.1; Exchange says 5.1.10): harvest
        // protection counts it like the guard's own 550 5.1.1. Not awaited: the loop is not blocked
        // here (a barrier may hold it); a ban stops reading and closes after the pending replies.
        if (r.code >= 500 && /^5\.1\.(1|10)\b/.test(r.enhanced ?? r.lines[0] ?? '')) void s.limits.check('unknown-recipient', {}, r).catch((err: unknown) => s.internalError(err));
      },
    };
  }

  /** The facts the envelope judge decides on, beyond the session context. */
  private envelope(): EnvelopeContext {
    return { session: this.s.context(), limits: this.limits, backendSmtputf8: this.backendSmtputf8, dsnAllowed: this.dsnAllowed() };
  }
}
