/**
 * SessionReplies: the session's one way out to the client. Every reply is queued in command order
 * (ReplySequencer, RFC 2920 §3.1) and counted by source and class; forwarded commands get a slot
 * that their backend reply fills; the writer applies the error limits (Postfix
 * smtpd_soft_error_limit / smtpd_hard_error_limit) and closes after a closing reply.
 */
import { isFailure, type BackendFailure } from '../backend/backend-link.js';
import { formatCommand, commandVerbName, type Command } from '../smtp/command.js';
import { formatReply, replyClass, type Reply } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import { ReplySequencer } from './reply-sequencer.js';
import type { SmtpSession } from './session.js';

export class SessionReplies {
  readonly seq: ReplySequencer;
  /** Replies ≥ 400 so far (error limits). */
  private errors = 0;
  /** Soft error limit: the next command is read no earlier than this (Date.now() clock; 0: now). */
  delayUntil = 0;

  constructor(private readonly s: SmtpSession) {
    this.seq = new ReplySequencer((wire, replies) => this.write(wire, replies));
  }

  /** A reply the guard makes itself, in command order. */
  local(r: Reply): void {
    this.count('guard', r);
    this.seq.local(r);
  }

  /** A reply the backend made (its greeting), in command order. */
  relayed(r: Reply): void {
    this.count('backend', r);
    this.seq.local(r);
  }

  count(source: 'guard' | 'backend', r: Reply): void {
    this.s.svc.metrics.replies.inc({ source, class: replyClass(r) });
  }

  /** Count a reply the guard made itself that goes out through a backend slot. */
  guardMade(r: Reply): Reply {
    this.count('guard', r);
    return r;
  }

  /** Forward a command re-serialised from its parsed form (invariant 1) and relay the reply in order. */
  forward(cmd: Command, onReply?: (r: Reply) => void): void {
    const { s } = this;
    const slot = this.seq.later();
    s.seat.link!.send(commandVerbName(cmd), formatCommand(cmd), (r) => {
      if (isFailure(r)) return slot.resolve(this.backendFailure(r.failure, s.tx.mailSent));
      this.count('backend', r);
      onReply?.(r);
      slot.resolve(r);
    });
  }

  /** The reply to a command whose backend session failed: the transaction's 451, or the connection's 421. */
  backendFailure(failure: BackendFailure, inTransaction: boolean): Reply {
    const { s } = this;
    s.svc.metrics.backendErrors.inc({ kind: failure });
    // Only this transaction is lost: the client may go on with another backend session.
    if (s.seat.replaceable) return this.guardMade(R.BACKEND_FAILED_IN_TRANSACTION);
    if (s.phase !== 'closed') s.summary.outcome = 'backend_failed';
    return this.guardMade(inTransaction ? { ...R.BACKEND_FAILED_IN_TRANSACTION, close: true } : R.BACKEND_UNAVAILABLE);
  }

  /** Write a reply at once, outside the sequence (closing paths only: replies still pending are moot). */
  now(r: Reply): void {
    if (this.s.phase === 'closed') return;
    this.count('guard', r);
    this.s.client.write(formatReply(r));
  }

  /** The one writer: replies in command order, then the error limits. */
  private write(wire: Buffer, replies: readonly Reply[]): void {
    const { s } = this;
    if (s.phase === 'closed') return;
    s.client.write(wire);
    s.timers.resetIdle();
    let close = false;
    for (const r of replies) {
      if (r.code >= 400) this.errors++;
      if (r.close) close = true;
    }
    if (close) {
      s.close(s.summary.outcome === 'closed' ? 'reply' : s.summary.outcome);
      return;
    }
    const { softErrorLimit, hardErrorLimit } = s.svc.config.smtp;
    if (this.errors >= hardErrorLimit) {
      s.refusals.record({ stage: 'session', ruleId: 'too-many-errors', kind: 'too_many_errors', reply: R.TOO_MANY_ERRORS, msg: 'command refused' });
      s.summary.outcome = 'too_many_errors';
      this.now(R.TOO_MANY_ERRORS);
      s.close('too_many_errors');
      return;
    }
    if (this.errors > softErrorLimit && replies.some((r) => r.code >= 400)) {
      // Postfix smtpd_soft_error_limit: a growing delay before the next command is read.
      const delay = Math.min(s.svc.timeouts.errorDelayMs * (this.errors - softErrorLimit), 30_000);
      if (delay > 0) this.delayUntil = Date.now() + delay;
    }
    s.closeIfClientDone();
  }
}
