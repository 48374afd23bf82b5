/**
 * DATA relayed to the backend: DATA is a barrier (nothing after it is read until the backend
 * answered, RFC 2920 §3.1); after its 354 the body streams through the EndOfDataScanner to the
 * backend. Smuggling (a bare CR or LF, NUL) aborts the backend transaction without an end-of-data
 * and closes; an oversized message is read to its end and answered 552; the backend's verdict on
 * the end-of-data is relayed — never a 2xx the backend did not give (invariant 3).
 */
import { isFailure } from '../backend/backend-link.js';
import { SHARED_BYTES, type ClientReads } from '../net/client-reads.js';
import { formatCommand } from '../smtp/command.js';
import { EndOfDataScanner } from '../smtp/end-of-data.js';
import { reply, replyText, type Reply } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import { HELD, type Outcome } from './outcome.js';
import { cap } from './session-summary.js';
import type { SmtpSession } from './session.js';

/** A read of at least this many message bytes asks for a read buffer of the session's own (client-reads.ts). */
const PRIVATE_READS_FROM = SHARED_BYTES / 2;

/** The DATA command line, made once (socket writes never modify a buffer). */
const DATA_LINE = formatCommand({ verb: 'DATA' });

export class DataRelay {
  private scanner: EndOfDataScanner | undefined;

  constructor(private readonly s: SmtpSession) {}

  onData(): Outcome {
    const { s } = this;
    const { tx } = s;
    if (!tx.mailSent) return { kind: 'refuse', refusal: { stage: 'command', ruleId: 'mail-required', kind: 'bad_sequence', reply: reply(503, '5.5.1', 'Need MAIL command') } };
    if (tx.lost) {
      // The end of that transaction: the client may start the next one with or without RSET.
      tx.reset();
      return { kind: 'reply', reply: R.BACKEND_FAILED_IN_TRANSACTION };
    }
    if (tx.rcptForwarded === 0) return { kind: 'refuse', refusal: { stage: 'command', ruleId: 'no-valid-recipients', kind: 'bad_sequence', reply: R.NO_VALID_RECIPIENTS } };
    // Barrier: nothing after DATA is read until the backend has answered it (RFC 2920 §3.1).
    s.block();
    const slot = s.replies.seq.later();
    s.seat.link!.send(
      'DATA',
      DATA_LINE,
      (r) => {
        // The session ended while this reply was on its way (close() dealt with the backend session).
        if (s.phase === 'closed') return;
        if (isFailure(r)) {
          const failed = s.replies.backendFailure(r.failure, true);
          slot.resolve(failed);
          // Only this transaction is lost (the 451 does not close): lift the DATA barrier.
          if (!failed.close) {
            tx.reset();
            s.unblock();
          }
          return;
        }
        s.replies.count('backend', r);
        if (r.code !== 354) {
          slot.resolve(r);
          tx.reset();
          s.seat.endTransaction(false);
          s.unblock();
          return;
        }
        if (s.phase !== 'command') {
          // Closing (a ban or limit decided while DATA was out): no message now; the 421 follows.
          s.seat.abandon();
          slot.resolve(s.replies.guardMade(R.BACKEND_FAILED_IN_TRANSACTION));
          return;
        }
        if (tx.accepted.length === 0) {
          // The backend would take a message with no recipient it accepted: never send one.
          s.refusals.record({ stage: 'command', ruleId: 'no-valid-recipients', reply: R.NO_VALID_RECIPIENTS });
          s.seat.abandon();
          slot.resolve(s.replies.guardMade({ ...R.NO_VALID_RECIPIENTS, close: true }));
          return;
        }
        slot.resolve(r);
        if (tx.prepend.length > 0) {
          // PREPEND from policy services: header lines at the top of the message, before the client's
          // first byte (dot-stuffed, RFC 5321 §4.5.2, though a field name rarely starts with a dot).
          const headers = Buffer.from(tx.prepend.map((h) => `${h.startsWith('.') ? '.' : ''}${h}\r\n`).join(''), 'latin1');
          s.summary.bytesOut += headers.length;
          s.seat.link!.writeRaw(headers);
        }
        this.scanner = new EndOfDataScanner({ mode: s.svc.config.smtp.smuggling, maxBytes: s.svc.maxMessageBytes });
        s.phase = 'data';
        s.timers.resetIdle();
        const early = s.reader.takeBuffered();
        if (early.length > 0) this.feed(early);
        this.resumeClient();
        s.closeIfClientDone();
      },
      s.svc.timeouts.backendReplyMs,
    );
    return HELD;
  }

  /**
   * Message bytes from the client (phase data). With `reads`, the chunk is a view of a read buffer
   * that the next read overwrites (src/net/client-reads.ts): what is kept is copied, and a view is
   * written to the backend only when the buffer is this session's own, which is pinned if the write
   * is still holding it afterwards.
   */
  feed(chunk: Buffer, reads?: ClientReads): void {
    const { s } = this;
    const scanner = this.scanner!;
    const step = scanner.push(chunk);
    // A lent backend session lost mid-DATA leaves no link; read the rest, then 451.
    const link = s.seat.link;
    let full = false;
    if (link && step.forward.length > 0) {
      if (reads && !reads.privateView) {
        // The shared read buffer: forward a copy, one write.
        const copy = step.forward.length === 1 ? Buffer.from(step.forward[0]!) : Buffer.concat(step.forward);
        s.summary.bytesOut += copy.length;
        full = !link.writeRaw(copy);
      } else {
        for (const b of step.forward) {
          s.summary.bytesOut += b.length;
          if (!link.writeRaw(b)) full = true;
        }
        if (reads && link.writesPending) reads.pin();
      }
    }
    if (full && link) {
      s.client.pause();
      link.once('drain', () => this.resumeClient());
    }
    if (step.status !== 'more') reads?.release();
    switch (step.status) {
      case 'more':
        // A large message: read the rest into a buffer of this session's own, forwarded without a copy.
        if (chunk.length >= PRIVATE_READS_FROM) (reads ?? s.takeOverReads())?.wantPrivate();
        return;
      case 'end': {
        // Pipelined commands after the end of data are kept by the reader: never a view of a read buffer.
        const rest = reads && step.rest.length > 0 ? Buffer.from(step.rest) : step.rest;
        if (!link) return this.finishDiscard(R.BACKEND_FAILED_IN_TRANSACTION, rest);
        return this.endOfData(step.size, rest);
      }
      case 'smuggling':
        s.svc.metrics.smuggling.inc({ kind: step.smuggle, action: 'rejected' });
        s.svc.metrics.messages.inc({ outcome: 'smuggling' });
        s.refusals.record({
          stage: 'session', ruleId: 'smuggling', reply: R.SMUGGLING, msg: 'smuggling attempt refused', warn: true,
          kind: step.smuggle === 'nul' ? 'bad_bytes' : step.smuggle,
          fields: { helo: cap(s.helo), mailFrom: cap(s.tx.sender), kind: step.smuggle, rcpts: s.tx.accepted.length },
        });
        s.seat.abandon();
        s.summary.outcome = 'smuggling';
        s.phase = 'closing';
        s.replies.local({ ...R.SMUGGLING, close: true });
        return;
      case 'too_large':
        s.svc.metrics.messages.inc({ outcome: 'too_large' });
        // Refused now (counted, logged); the 552 follows once the rest of the message is read.
        s.refusals.record({ stage: 'session', ruleId: 'message-too-large', reply: R.MESSAGE_TOO_LARGE, msg: 'message too large', fields: { mailFrom: cap(s.tx.sender), size: step.size } });
        s.seat.abandon();
        s.phase = 'discard';
        // The scanner keeps the rest of the overflowing chunk (a view of it): scan it now, before
        // this call returns (stay in sync, then 552).
        this.discard(Buffer.alloc(0), reads);
        return;
    }
  }

  /** Bytes of a message that will not be delivered (phase discard): read to its end, then answer. */
  discard(chunk: Buffer, reads?: ClientReads): void {
    const r = this.scanner!.discardUntilEnd(chunk);
    if (!r.done) return;
    this.s.summary.outcome = 'too_large';
    const rest = reads && r.rest.length > 0 ? Buffer.from(r.rest) : r.rest;
    // The aborted message took the backend session with it: the client goes on only when another can be had.
    this.finishDiscard(this.s.seat.replaceable ? R.MESSAGE_TOO_LARGE : { ...R.MESSAGE_TOO_LARGE, close: true }, rest);
  }

  /** The client's end-of-data arrived for a message that will not be delivered: answer, go on. */
  private finishDiscard(r: Reply, rest: Buffer): void {
    const { s } = this;
    this.scanner = undefined;
    s.tx.reset();
    if (r.close) {
      s.phase = 'closing';
      s.replies.local(r);
      return;
    }
    s.phase = 'command';
    s.replies.local(r);
    if (rest.length > 0) s.reader.push(rest);
    s.unblock();
  }

  private resumeClient(): void {
    if (this.s.phase === 'closed') return;
    if (this.s.client.isPaused()) this.s.client.resume();
  }

  private endOfData(size: number, rest: Buffer): void {
    const { s } = this;
    const { tx, svc } = s;
    s.phase = 'command';
    this.scanner = undefined;
    const slot = s.replies.seq.later();
    const rcpts = tx.accepted.length;
    const link = s.seat.link!;
    link.expect(
      'DATA-END',
      (r) => {
        if (isFailure(r)) {
          svc.metrics.messages.inc({ outcome: 'backend_failed' });
          s.log.warn({ failure: r.failure, mailFrom: cap(tx.sender), rcpts, size, backendSession: s.seat.link?.tag }, 'backend failed after end-of-data');
          if (s.seat.replaceable) {
            // Never a 2xx the backend did not give: 451, and the client may retry on another backend session.
            tx.reset();
            slot.resolve(s.replies.guardMade(R.BACKEND_FAILED_IN_TRANSACTION));
            s.unblock();
            return;
          }
          slot.resolve(s.replies.guardMade({ ...R.BACKEND_FAILED_IN_TRANSACTION, close: true }));
          return;
        }
        s.replies.count('backend', r);
        // The backend session's name costs a getsockname call: read it only for a line that is logged.
        const backendSession = s.infoOn ? s.seat.link?.tag : undefined;
        if (r.code >= 200 && r.code < 300) {
          s.summary.messages++;
          svc.metrics.messages.inc({ outcome: 'delivered' });
          svc.metrics.messageBytes.inc(size);
          svc.metrics.messageSize.observe(size);
          if (s.infoOn) s.log.info({ clientPort: s.clientPort, mailFrom: cap(tx.sender), rcpts, size, backendSession, backendReply: cap(replyText(r), 200) }, 'message accepted');
        } else {
          svc.metrics.messages.inc({ outcome: 'rejected_by_backend' });
          if (s.infoOn) s.log.info({ clientPort: s.clientPort, mailFrom: cap(tx.sender), rcpts, size, backendSession, backendReply: cap(replyText(r), 200) }, 'message rejected by backend');
        }
        tx.reset();
        s.seat.endTransaction(true);
        slot.resolve(r);
        s.unblock();
      },
      svc.timeouts.backendDataReplyMs,
    );
    s.block();
    if (rest.length > 0) s.reader.push(rest);
  }
}
