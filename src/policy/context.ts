/** Facts about a session that policy decides on. Built by the session, read-only for policy. */
import type { ReversePath } from '../smtp/path.js';

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
  /** Authenticated user name, or undefined. */
  readonly authUser?: string;
  readonly helo?: string;
  readonly mailFrom?: ReversePath;
}
