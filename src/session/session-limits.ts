/**
 * The session's questions to the rate limiter: the subject (client, trust, login, sender), whether
 * any enabled limit counts an event at all, and what a decision does to the session — a tarpit
 * delays, a tempfail answers the command, close and ban stop reading and say 421 after the replies
 * before it (RFC 2920 §3.1 order).
 */
import type { LimitDecision, LimitEvent } from '../limits/limiter.js';
import type { Reply } from '../smtp/reply.js';
import type { SmtpSession } from './session.js';

export class SessionLimits {
  constructor(private readonly s: SmtpSession) {}

  subject(extra: { sender?: string } = {}) {
    const { s } = this;
    return {
      clientIp: s.clientIp,
      trusted: s.trusted(),
      ...(s.authUser !== undefined ? { authUser: s.authUser } : {}),
      ...(extra.sender !== undefined ? { sender: extra.sender === '' ? '<>' : extra.sender } : {}),
    };
  }

  /** No limit counts this event (limits off, or no enabled rule for it): skip building the subject and asking. */
  noLimitFor(event: LimitEvent | 'concurrent'): boolean {
    return !this.s.svc.limiter?.counts(event);
  }

  /**
   * Ask the limiter about an event. Returns true when the limiter answered the command (tempfail,
   * close or ban); a tarpit delays and returns false. With `refusal` (the command is refused
   * anyway) a tempfail adds nothing: the refusal itself is answer enough.
   */
  async check(event: LimitEvent, extra: { sender?: string }, refusal?: Reply): Promise<boolean> {
    const { s } = this;
    const limiter = s.svc.limiter;
    if (!limiter || this.noLimitFor(event)) return false;
    let d: LimitDecision;
    try {
      d = await limiter.check(event, this.subject(extra));
    } catch (err) {
      s.svc.metrics.internalErrors.inc({ where: 'limits' });
      s.log.error({ err }, 'limiter failed');
      return false; // the stores fall back by themselves; a bug here must not stop mail
    }
    if (s.phase === 'closed' || d.action === 'allow') return false;
    if (d.action === 'tarpit' || (d.action === 'tempfail' && refusal)) {
      // Not a refusal of its own: a delay, or a tempfail the refused command already answers.
      s.log.info({ limit: d.limitId, action: d.action, event }, 'limit hit');
      if (d.action === 'tarpit') await s.timers.sleep(d.delayMs ?? 0);
      return false;
    }
    // The limit answers: one refusal, counted and logged under the limit's id.
    s.refusals.record({ stage: 'session', ruleId: d.limitId, reply: d.reply, msg: 'limit hit', fields: { limit: d.limitId, action: d.action, event } });
    s.summary.outcome = d.action === 'ban' ? 'banned' : 'limited';
    if (d.action === 'tempfail') {
      s.replies.local(d.reply);
      return true;
    }
    // close / ban: read no further command, so nothing pipelined behind this one reaches the
    // backend; the 421 is written once the replies before it are in (RFC 2920 §3.1 order). Decided
    // while a message was being read (a late unknown-recipient verdict): that message never ends.
    if (s.phase === 'data' || s.phase === 'discard') s.seat.abandon();
    s.phase = 'closing';
    s.replies.local({ ...d.reply, close: true });
    return true;
  }
}
