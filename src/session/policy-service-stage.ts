/**
 * Postfix policy services (SMTPD_POLICY_README) as the session asks them: at RCPT through the
 * envelope judge's port (only about a recipient the guard accepted), at DATA once every RCPT reply
 * is in. PREPEND headers are kept on the transaction, once each, bounded.
 */
import tls from 'node:tls';
import type { RcptServicesPort } from '../policy/judge.js';
import type { PolicyRequestFacts } from '../policy-service/policy-request.js';
import { replyText } from '../smtp/reply.js';
import { HELD, type Outcome } from './outcome.js';
import { cap } from './session-summary.js';
import type { Phase, SmtpSession } from './session.js';

/** Header lines policy services may PREPEND to one message. */
const MAX_PREPEND_HEADERS = 16;

export class PolicyServiceStage {
  constructor(private readonly s: SmtpSession) {}

  /**
   * The RCPT stage as the judge's port: asked (by the judge, only about a recipient it accepted)
   * unless none applies to this client (trusted clients: `trusted: skip`).
   */
  rcptPort(): RcptServicesPort | undefined {
    const { s } = this;
    const ps = s.svc.policyServices;
    if (!ps) return undefined;
    const trusted = s.trusted(s.tx.mailFrom);
    if (!ps.asks('rcpt', trusted)) return undefined;
    return { ask: (rcpt) => ps.evaluate('rcpt', this.facts('RCPT', rcpt), rcpt, trusted) };
  }

  /** A header one recipient's (or DATA's) policy asked for is added once per message (bounded). */
  prepend(headers: readonly string[]): void {
    const { prepend } = this.s.tx;
    for (const h of headers) if (!prepend.includes(h) && prepend.length < MAX_PREPEND_HEADERS) prepend.push(h);
  }

  /**
   * DATA with policy services at the DATA stage: once every RCPT reply is in (recipient_count is the
   * accepted count, as Postfix sends it), ask them; a refusal answers DATA, else `data` goes on.
   */
  onData(data: () => Outcome): Outcome {
    const { s } = this;
    const { tx } = s;
    const ps = s.svc.policyServices;
    if (!ps || !tx.mailSent || tx.lost || tx.rcptForwarded === 0) return data();
    const trusted = s.trusted(tx.mailFrom);
    if (!ps.asks('data', trusted)) return data();
    const repliesIn = new Promise<void>((resolve) => s.replies.seq.whenIdle(resolve));
    const decided = repliesIn.then(async (): Promise<Outcome> => {
      if (s.phase === 'closed') return HELD;
      if (tx.accepted.length === 0 || tx.lost) return data();
      const pv = await ps.evaluate('data', this.facts('DATA'), '', trusted);
      if ((s.phase as Phase) === 'closed') return HELD;
      if (pv.action !== 'accept') {
        const ruleId = `policy-service:${pv.decidedBy}`;
        s.refusals.record({ stage: 'session', ruleId, reply: pv.reply, msg: 'data refused', fields: { helo: cap(s.helo), mailFrom: cap(tx.sender), rcpts: tx.accepted.length } });
        s.svc.refusals?.record({ kind: 'data', sessionId: s.id, clientIp: s.clientIp, listener: s.listener.config.name, helo: s.helo, authUser: s.authUser, mailFrom: tx.sender, ruleId, reply: replyText(pv.reply) });
        return { kind: 'reply', reply: pv.reply };
      }
      this.prepend(pv.prepend);
      return data();
    });
    return { kind: 'wait', until: decided };
  }

  /** The attributes of a policy request, from what this session knows (SMTPD_POLICY_README). */
  private facts(state: 'RCPT' | 'DATA', rcpt?: string): PolicyRequestFacts {
    const { s } = this;
    const { tx } = s;
    const secure = s.tlsActive && s.client instanceof tls.TLSSocket ? s.client : undefined;
    const cipher = secure?.getCipher();
    return {
      protocolState: state,
      protocolName: s.ehlo ? 'ESMTP' : 'SMTP',
      heloName: s.helo,
      sender: tx.sender,
      // At DATA Postfix names the recipient only when exactly one was accepted.
      recipient: rcpt ?? (tx.accepted.length === 1 ? tx.accepted[0] : ''),
      recipientCount: state === 'DATA' ? tx.accepted.length : 0,
      clientAddress: s.clientIp,
      clientPort: s.clientPort,
      serverAddress: s.client.localAddress,
      serverPort: s.client.localPort,
      // One message, one instance: the session and its transaction number (postgrey, policyd-spf rely on it).
      instance: `${s.id}.${s.summary.transactions}`,
      saslUsername: s.authUser,
      size: tx.declaredSize,
      encryptionProtocol: secure?.getProtocol() ?? undefined,
      encryptionCipher: cipher?.name,
      // The cipher's key bits, as Postfix sends them (AES_256_GCM → 256, CHACHA20 → 256, AES_128 → 128).
      encryptionKeysize: cipher ? (/256|CHACHA20/i.test(cipher.name) ? 256 : /128/.test(cipher.name) ? 128 : undefined) : undefined,
    };
  }
}
