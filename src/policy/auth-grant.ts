/**
 * evaluateAuthGrant: what one successful AUTH (the backend said 235) is worth to the guard. Pure.
 * The backend's word alone is not proof (issue 16): a legacy Exchange with a Guest account answers
 * 235 to any credentials. In order:
 *
 *   1 listener `auth: pass`       AUTH is the backend's business; it grants nothing here
 *   2 authRelayUsers              the user name must match one entry (exact or glob), else no relay
 *   3 guard-side proof required   (auth.verify: ldap) valid → relay; anything else → unproven
 *   4 auth canary tripped         the backend accepts random credentials → unproven
 *   5 otherwise                   relay (the default: roaming users keep relaying, guarded by the canary)
 *
 * "Unproven" is temporary (rule auth-unproven, 451 4.7.0): the fault is the backend's or the
 * directory's, and a real user's mail must wait, not bounce. 1 and 2 are what the admin configured:
 * the client falls through to relay-denied (550 5.7.1).
 */

export type AuthGrant =
  | { readonly relay: true; readonly proof: 'backend' | 'ldap' }
  | { readonly relay: false; readonly unproven: boolean; readonly reason: string };

export type ListenerAuthMode = 'relay' | 'pass' | 'off';

/** Outcome of the guard's own check of the credentials (auth.verify). */
export type AuthVerification = 'valid' | 'invalid' | 'error' | 'unverifiable';

export interface AuthGrantInput {
  readonly listenerAuth: ListenerAuthMode;
  readonly user: string;
  /** authRelayUsers compiled; undefined or empty: any user. */
  readonly relayUsers?: RelayUserMatcher;
  /** Present when auth.verify requires proof. */
  readonly verification?: AuthVerification;
  /** The last auth canary was accepted by the backend. */
  readonly canaryAccepted: boolean;
}

export function evaluateAuthGrant(i: AuthGrantInput): AuthGrant {
  if (i.listenerAuth !== 'relay') return { relay: false, unproven: false, reason: `listener auth is ${i.listenerAuth}` };
  if (i.relayUsers && !i.relayUsers.empty && !i.relayUsers.matches(i.user)) {
    return { relay: false, unproven: false, reason: 'user not in authRelayUsers' };
  }
  if (i.verification !== undefined) {
    if (i.verification === 'valid') return { relay: true, proof: 'ldap' };
    const why: Record<Exclude<AuthVerification, 'valid'>, string> = {
      invalid: 'the directory refused these credentials',
      error: 'the directory could not be asked',
      unverifiable: 'the mechanism carries no password the guard can check',
    };
    return { relay: false, unproven: true, reason: `guard-side verification failed: ${why[i.verification]}` };
  }
  if (i.canaryAccepted) return { relay: false, unproven: true, reason: 'the backend accepts random credentials (auth canary)' };
  return { relay: true, proof: 'backend' };
}

export interface RelayUserMatcher {
  readonly empty: boolean;
  matches(user: string): boolean;
}

/**
 * authRelayUsers: exact names or glob patterns (`*` any run, `?` one character), compared
 * case-insensitively (AD logins are). `alice`, `*@example.com`, `svc-*`, `EXAMPLE\\*`.
 */
export function compileRelayUsers(entries: readonly string[]): RelayUserMatcher {
  const exact = new Set<string>();
  const globs: RegExp[] = [];
  for (const e of entries) {
    const lower = e.toLowerCase();
    if (!/[*?]/.test(lower)) {
      exact.add(lower);
      continue;
    }
    const body = lower.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
    globs.push(new RegExp(`^${body}$`, 's'));
  }
  return {
    empty: entries.length === 0,
    matches(user: string): boolean {
      const u = user.toLowerCase();
      return exact.has(u) || globs.some((g) => g.test(u));
    },
  };
}
