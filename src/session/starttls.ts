/**
 * STARTTLS on the client leg (RFC 3207): a barrier; what was pipelined after the command is
 * discarded (CVE-2011-0411), the socket is upgraded in place, and everything learned before TLS
 * (HELO, the transaction) is forgotten.
 */
import tls from 'node:tls';
import { reply } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import type { Outcome } from './outcome.js';
import type { SmtpSession } from './session.js';

export class StartTls {
  constructor(private readonly s: SmtpSession) {}

  /** STARTTLS may be offered: a TLS listener not already in TLS (smtps is TLS from the start). */
  offered(): boolean {
    const { s } = this;
    return !s.tlsActive && s.listener.tls !== undefined && s.listener.config.starttls && s.listener.config.kind !== 'smtps';
  }

  onStartTls(): Outcome {
    const { s } = this;
    if (!this.offered()) return s.refusals.verb('STARTTLS', 'starttls-not-offered');
    if (s.tx.mailSent) return { kind: 'refuse', refusal: { stage: 'command', ruleId: 'starttls-in-transaction', reply: R.BAD_SEQUENCE } };
    // Discard anything pipelined after STARTTLS (CVE-2011-0411): it was sent in plaintext.
    s.reader.takeBuffered();
    s.block();
    s.replies.local(reply(220, '2.0.0', 'Ready to start TLS'));
    s.replies.seq.whenIdle(() => this.upgrade());
    return { kind: 'held' };
  }

  private upgrade(): void {
    const { s } = this;
    const plain = s.client;
    plain.removeAllListeners('data');
    s.detachReads();
    plain.removeAllListeners('close');
    plain.removeAllListeners('error');
    plain.on('error', () => undefined);
    const secure = new tls.TLSSocket(plain, { ...s.listener.tls!.socketOptions(), isServer: true });
    let done = false;
    const handshakeTimer = s.timers.after(s.svc.timeouts.commandMs, () => {
      if (!done) s.close('tls_timeout');
    });
    secure.once('secure', () => {
      done = true;
      s.timers.cancel(handshakeTimer);
      s.svc.metrics.tlsHandshakes.inc({ kind: 'starttls', result: 'success' });
      s.tlsActive = true;
      // RFC 3207 §4.2: forget everything learned before TLS; a new EHLO is required.
      s.helo = undefined;
      s.ehlo = false;
      s.envelope.learnExtensions(undefined);
      s.tx.reset();
      s.reader.takeBuffered();
      s.unblock();
    });
    secure.on('error', (err: NodeJS.ErrnoException) => {
      if (!done) s.svc.metrics.tlsHandshakes.inc({ kind: 'starttls', result: 'failure' });
      s.log.info({ err: { code: err.code, message: err.message } }, done ? 'tls error' : 'tls handshake failed');
      s.close('tls_error');
    });
    s.client = secure;
    secure.on('data', (chunk: Buffer) => s.onClientData(chunk));
    secure.on('close', () => s.close(s.phase === 'closing' ? 'closed' : 'client_closed'));
  }
}
