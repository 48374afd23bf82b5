/** Facts about a session that policy decides on. Built by the session, read-only for policy. */
import type { ReversePath } from '../smtp/path.js';
import type { AuthGrant } from './auth-grant.js';

export type ListenerKind = 'mx' | 'submission' | 'smtps';

export interface SessionContext {
  /** Client address as policy sees it (after PROXY protocol), canonical text form ("192.0.2.1", "2001:db8::1"). */
  readonly clientIp: string;
  /** Listener name (config key) and kind. */
  readonly listener: string;
  readonly listenerKind: ListenerKind;
  /** The listener is marked `relay: allow` (internal interface). */
  readonly listenerRelay: boolean;
  readonly tls: boolean;
  /** Authenticated user name (the backend said 235), or undefined. */
  readonly authUser?: string;
  /**
   * What that authentication is worth (auth-grant.ts). Absent: it grants relay and trust, as any
   * backend-accepted AUTH did before issue 16 (the dry-run check without a session).
   */
  readonly authGrant?: AuthGrant;
  readonly helo?: string;
  readonly mailFrom?: ReversePath;
}
