/**
 * AUTH relayed to the backend (RFC 4954): the guard checks that AUTH may happen here (EHLO given,
 * TLS or a plaintext-auth network, a mechanism the backend offers), then passes the SASL exchange
 * through line by line. A barrier: nothing after a client line is read until the backend answered
 * it. The exchange binds a backend session to this client for good (seat.dedicate). SASL payloads
 * are never logged; only the user name is learned (PLAIN, LOGIN).
 */
import { isFailure } from '../backend/backend-link.js';
import { evaluateAuthGrant, type AuthGrant, type AuthVerification } from '../policy/auth-grant.js';
import { reply, replyText, type Reply } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import { HELD, type Outcome } from './outcome.js';
import { cap } from './session-summary.js';
import type { SmtpSession } from './session.js';

/** RFC 4954 §4: a SASL response line may be up to 12288 octets. */
export const AUTH_LINE_BYTES = 12288;

/**
 * One SASL exchange in progress (RFC 4954). `user` is learned from PLAIN or LOGIN; `secret` (the
 * password) only when the guard must check it itself (auth.verify), held in memory for the length
 * of the exchange, never logged.
 */
interface AuthExchange {
  readonly mechanism: string;
  step: number;
  user?: string;
  /** PLAIN's authorization identity when it differs from the user (acting as someone else). */
  authzid?: string;
  secret?: string;
}

export class AuthRelay {
  private exchange: AuthExchange | undefined;
  /** The AUTH mechanisms the backend offered in its last EHLO reply (undefined: none). */
  backendMechanisms: string | undefined;
  /** auth.verify: what the guard's own check of the credentials said (issue 16). */
  private verification: AuthVerification | undefined;

  constructor(private readonly s: SmtpSession) {}

  /** AUTH may be offered to this client now (over TLS, or from a plaintext-auth network). */
  allowed(): boolean {
    return this.s.tlsActive || this.s.listener.plaintextAuth(this.s.clientIp);
  }

  /** The EHLO keyword to add, if any. */
  ehloKeyword(): string | undefined {
    return this.backendMechanisms && this.allowed() && this.s.listener.config.auth !== 'off' ? `AUTH ${this.backendMechanisms}` : undefined;
  }

  onAuth(mechanism: string, initial: string | undefined): Outcome {
    const { s } = this;
    if (s.authUser) return refuse('auth-already-done', reply(503, '5.5.1', 'Already authenticated'));
    // AUTH is an EHLO extension (RFC 4954 §3); after STARTTLS the old EHLO no longer counts (RFC 3207 §4.2).
    if (!s.ehlo || !s.helo) return refuse('ehlo-required', reply(503, '5.5.1', 'Send EHLO first'));
    if (s.tx.mailSent) return refuse('auth-in-transaction', R.BAD_SEQUENCE);
    if (s.listener.config.auth === 'off') {
      // Listener `auth: off`: never offered, never forwarded (issue 16).
      s.svc.metrics.auth.inc({ result: 'refused' });
      return refuse('auth-not-offered', R.VERB_NOT_ALLOWED);
    }
    if (!this.backendMechanisms || !this.allowed()) {
      s.svc.metrics.auth.inc({ result: 'refused' });
      return this.backendMechanisms && !s.tlsActive ? refuse('auth-requires-tls', R.MUST_ISSUE_STARTTLS) : refuse('auth-not-offered', R.VERB_NOT_ALLOWED);
    }
    const offered = this.backendMechanisms.toUpperCase().split(/\s+/);
    if (!offered.includes(mechanism)) return refuse('auth-mechanism-unknown', reply(504, '5.5.4', 'Unrecognized authentication type'));
    const ex: AuthExchange = { mechanism, step: 0 };
    if (initial !== undefined) this.noteResponse(ex, initial);
    this.exchange = ex;
    s.phase = 'auth';
    s.block();
    const wire = Buffer.from(`AUTH ${mechanism}${initial !== undefined ? ` ${initial}` : ''}\r\n`, 'latin1');
    if (s.seat.own) {
      this.send(wire, ex);
      return HELD;
    }
    // Authentication binds a backend session to this client for good.
    s.dedicate().then(
      (ok) => {
        if (s.phase === 'closed') return;
        if (ok) return this.send(wire, ex);
        s.phase = 'command';
        this.exchange = undefined;
        s.unblock();
      },
      (err) => s.internalError(err),
    );
    return HELD;
  }

  /** A SASL response line from the client (RFC 4954 §4): base64 or "*". Forwarded, never logged. */
  onLine(line: Buffer): void {
    const { s } = this;
    const ex = this.exchange;
    if (!ex) {
      s.phase = 'command';
      return;
    }
    const text = line.toString('latin1');
    if (text !== '*' && !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
      // Not base64: abort the exchange on the backend too.
      s.block();
      this.send(Buffer.from('*\r\n'), ex);
      return;
    }
    this.noteResponse(ex, text);
    s.block();
    this.send(Buffer.from(`${text}\r\n`, 'latin1'), ex);
  }

  /**
   * A SASL response line over the line limit: cancel the exchange at the backend with "*" (RFC 4954
   * §4) so both sides leave it together, and tell the client why. Without this the backend kept
   * waiting and took the client's next command as the SASL response.
   */
  abortLineTooLong(): void {
    const { s } = this;
    this.exchange = undefined;
    s.phase = 'command';
    s.svc.metrics.auth.inc({ result: 'aborted' });
    s.refusals.record({ stage: 'command', ruleId: 'line-too-long', kind: 'line_too_long', reply: R.LINE_TOO_LONG });
    s.block();
    const slot = s.replies.seq.later();
    s.seat.link!.send('AUTH', Buffer.from('*\r\n'), (r) => {
      if (isFailure(r)) return slot.resolve(s.replies.backendFailure(r.failure, false));
      s.replies.count('backend', r);
      s.replies.count('guard', R.LINE_TOO_LONG);
      slot.resolve(R.LINE_TOO_LONG);
      s.unblock();
    });
  }

  private send(wire: Buffer, ex: AuthExchange): void {
    const { s } = this;
    const slot = s.replies.seq.later();
    s.seat.link!.send('AUTH', wire, (r) => {
      if (s.phase === 'closed') return;
      if (isFailure(r)) {
        s.phase = 'command';
        slot.resolve(s.replies.backendFailure(r.failure, false));
        return;
      }
      s.replies.count('backend', r);
      if (r.code === 334) {
        slot.resolve(r); // continue: the next client line is a SASL response, never a command
        s.unblock();
        return;
      }
      s.phase = 'command';
      this.exchange = undefined;
      if (r.code === 235) {
        // Still behind the AUTH barrier: the 235 reaches the client once the guard knows what it is worth.
        const secret = ex.secret;
        ex.secret = undefined;
        const verify = s.svc.auth.verify;
        const user = ex.user ?? '(unknown)';
        const listed = s.svc.auth.relayUsers.empty || s.svc.auth.relayUsers.matches(user);
        if (verify && s.listener.config.auth === 'relay' && listed) {
          const checkable = ex.user !== undefined && secret !== undefined && secret !== '' && (ex.authzid === undefined || ex.authzid.toLowerCase() === ex.user.toLowerCase());
          const verifying: Promise<AuthVerification> = checkable ? verify(ex.user!, secret!).catch(() => 'error' as const) : Promise.resolve('unverifiable');
          void verifying.then((v) => this.authenticated(user, ex.mechanism, r, slot, v));
          return;
        }
        this.authenticated(user, ex.mechanism, r, slot, undefined);
        return;
      }
      s.svc.metrics.auth.inc({ result: r.code === 501 ? 'aborted' : 'failure' });
      s.log.info({ authUser: cap(ex.user), mechanism: ex.mechanism, reply: replyText(r) }, 'authentication failed');
      void s.limits.check('auth-failure', {}, r).then(() => {
        slot.resolve(r);
        s.unblock();
      });
    });
  }

  /** The backend said 235 (and the guard's own check, if any, is done): record what it grants. */
  private authenticated(user: string, mechanism: string, r: Reply, slot: { resolve(r: Reply): void }, verification: AuthVerification | undefined): void {
    const { s } = this;
    if (s.phase === 'closed') return;
    s.authUser = user;
    this.verification = verification;
    const grant = this.grant()!;
    const label = grant.relay ? 'relay' : grant.unproven ? 'unproven' : s.listener.config.auth !== 'relay' ? 'pass' : 'not_listed';
    s.svc.metrics.auth.inc({ result: 'success' });
    s.svc.metrics.authGrants.inc({ grant: label });
    if (grant.relay) s.log.info({ authUser: cap(user), mechanism, relay: true, proof: grant.proof }, 'authenticated');
    else s.log.info({ authUser: cap(user), mechanism, relay: false, reason: grant.reason }, 'authenticated');
    slot.resolve(r);
    s.unblock();
  }

  /** What this session's AUTH grants now (the canary may trip or clear while it lasts). */
  grant(): AuthGrant | undefined {
    const { s } = this;
    if (s.authUser === undefined) return undefined;
    const mustVerify = s.svc.auth.verify !== undefined && s.listener.config.auth === 'relay';
    const verification = mustVerify ? (this.verification ?? 'unverifiable') : undefined;
    return evaluateAuthGrant({
      listenerAuth: s.listener.config.auth,
      user: s.authUser,
      relayUsers: s.svc.auth.relayUsers,
      ...(verification !== undefined ? { verification } : {}),
      canaryAccepted: s.svc.auth.canaryAccepted(),
    });
  }

  /**
   * Learn the user name from PLAIN (authzid\0authcid\0passwd) or LOGIN's first response. The secret
   * is kept only when the guard must verify it (auth.verify), and never logged.
   */
  private noteResponse(ex: AuthExchange, b64: string): void {
    const step = ex.step++;
    if (b64 === '*' || b64 === '=') return;
    const decoded = Buffer.from(b64, 'base64').toString('utf8');
    const keep = this.s.svc.auth.verify !== undefined;
    if (ex.mechanism === 'PLAIN' && step === 0) {
      const [authzid = '', authcid, passwd] = decoded.split('\0');
      ex.user = authcid;
      if (authzid !== '') ex.authzid = authzid;
      if (keep) ex.secret = passwd;
    } else if (ex.mechanism === 'LOGIN' && step === 0) ex.user = decoded;
    else if (ex.mechanism === 'LOGIN' && step === 1 && keep) ex.secret = decoded;
  }
}

function refuse(ruleId: string, r: Reply): Outcome {
  return { kind: 'refuse', refusal: { stage: 'command', ruleId, reply: r } };
}
