/**
 * SessionSummary: what one session did — messages, recipients, bytes, outcome — for the admin
 * API's session list (info) and the one 'session closed' line at the end.
 */
import { randomBytes } from 'node:crypto';
import type { SessionInfo } from './session-registry.js';
import type { SmtpSession } from './session.js';

/** Client strings in logs are capped (pino: untrusted data under named keys, bounded). */
export function cap(s: string | undefined, n = 256): string | undefined {
  return s === undefined ? undefined : s.length > n ? `${s.slice(0, n)}…` : s;
}

/** Session ids: 48 random bits each, drawn from a block fetched 512 ids at a time (one CSPRNG call per block). */
const ID_BYTES = 6;
let idBlock = Buffer.alloc(0);
let idPos = 0;
export function newSessionId(): string {
  if (idPos + ID_BYTES > idBlock.length) {
    idBlock = randomBytes(ID_BYTES * 512);
    idPos = 0;
  }
  const id = idBlock.toString('hex', idPos, idPos + ID_BYTES);
  idPos += ID_BYTES;
  return id;
}

export class SessionSummary {
  readonly startedAt = Date.now();
  transactions = 0;
  messages = 0;
  bytesIn = 0;
  bytesOut = 0;
  rcptAccepted = 0;
  rcptRefused = 0;
  /** How the session ended ('closed' until something more specific is known). */
  outcome = 'closed';
  closeReason = '';

  constructor(private readonly s: SmtpSession) {}

  info(): SessionInfo {
    const { s } = this;
    const link = s.seat.link;
    return {
      id: s.id,
      listener: s.listener.config.name,
      clientIp: s.clientIp,
      clientPort: s.clientPort,
      helo: cap(s.helo),
      mailFrom: s.tx.mailSent ? cap(s.tx.sender) : undefined,
      authUser: s.authUser,
      tls: s.tlsActive,
      state: s.phase,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      messages: this.messages,
      startedAt: new Date(this.startedAt).toISOString(),
      ageSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      ...(link && !link.isClosed ? { backendSession: link.tag } : {}),
    };
  }

  /** The one line a session leaves when it ends. */
  logClosed(reason: string): void {
    const { s } = this;
    if (!s.infoOn) return;
    s.log.info(
      {
        helo: cap(s.helo),
        authUser: cap(s.authUser),
        tls: s.tlsActive,
        messages: this.messages,
        rcptAccepted: this.rcptAccepted,
        rcptRefused: this.rcptRefused,
        bytesIn: this.bytesIn,
        bytesOut: this.bytesOut,
        durationMs: Date.now() - this.startedAt,
        outcome: this.outcome === 'closed' ? reason : this.outcome,
      },
      'session closed',
    );
  }
}
