/** One mail transaction (MAIL … end-of-data) as the session tracks it. */
import type { ReversePath } from '../smtp/path.js';

export class Transaction {
  /** MAIL was forwarded and not refused (optimistic while its reply is pending). */
  mailSent = false;
  /**
   * The lent backend session carrying this transaction was lost. The client still has a
   * transaction open (its MAIL and RCPTs were accepted): RCPT and DATA get 451 until it ends it
   * (RSET, EHLO, DATA, or a new MAIL), never a 5xx that would make it bounce the message.
   */
  lost = false;
  mailFrom: ReversePath | undefined;
  /** Sender address as text, for logs ("" for the null sender). */
  sender = '';
  /** RCPT commands forwarded to the backend. */
  rcptForwarded = 0;
  /** Recipients the backend accepted (canonical text). */
  readonly accepted: string[] = [];
  /** Recipients refused by the guard or the backend. */
  refused = 0;
  declaredSize = 0;
  /** MAIL carried SMTPUTF8 (RFC 6531): non-ASCII addresses allowed in this transaction. */
  smtputf8 = false;

  /** Header lines policy services asked to PREPEND (added at the top of the message, as Postfix does). */
  readonly prepend: string[] = [];

  /** Changes at every reset: a reply that arrives for an earlier transaction can tell. */
  serial = 0;

  reset(): void {
    this.serial++;
    this.mailSent = false;
    this.lost = false;
    this.mailFrom = undefined;
    this.sender = '';
    this.rcptForwarded = 0;
    this.accepted.length = 0;
    this.prepend.length = 0;
    this.refused = 0;
    this.declaredSize = 0;
    this.smtputf8 = false;
  }
}
