/** What a session needs from the guard: built once by guard.ts, shared by every session. */
import type { BackendCapabilities } from '../backend/capabilities.js';
import type { Logger } from 'pino';
import type { Config, ListenerConfig } from '../config/schema.js';
import type { ResolvedTimeouts } from '../config/load-config.js';
import type { Metrics } from '../observability/metrics.js';
import type { RulesSnapshot } from '../policy/compile.js';
import type { RecipientDirectory } from '../policy/judge.js';
import type { RateLimiter } from '../limits/limiter.js';
import type { BanList } from '../limits/bans.js';
import type { SessionRegistry } from './session-registry.js';
import type tls from 'node:tls';
import type { BackendSeats } from '../backend/seat.js';
import type { RefusalSink } from '../observability/refusal-ring.js';
import type { DnsblScorer } from '../dnsbl/dnsbl-scorer.js';
import type { PolicyServices } from '../policy-service/policy-services.js';
import type { AuthVerification, RelayUserMatcher } from '../policy/auth-grant.js';

/** What an AUTH the backend accepted is worth (issue 16): built by guard.ts, read by every session. */
export interface AuthTrust {
  /** The last auth canary was accepted by the backend (it takes random credentials). */
  canaryAccepted(): boolean;
  /** authRelayUsers, compiled. */
  readonly relayUsers: RelayUserMatcher;
  /** auth.verify: ldap — the guard checks the credentials itself; absent: no guard-side proof required. */
  readonly verify?: (user: string, password: string) => Promise<AuthVerification>;
}

export interface TlsProvider {
  /** Options for a STARTTLS upgrade of an existing socket (current certificate). */
  socketOptions(): tls.TLSSocketOptions;
}

export interface ListenerRuntime {
  readonly config: ListenerConfig;
  readonly tls: TlsProvider | undefined;
  /** May a client from this address AUTH without TLS? */
  plaintextAuth(clientIp: string): boolean;
}

export interface GuardServices {
  readonly config: Config;
  readonly timeouts: ResolvedTimeouts;
  readonly maxMessageBytes: number;
  readonly ehloAllow: ReadonlySet<string>;
  /** The backend's SMTPUTF8/DSN as last seen, for the dry-run check (POST /api/v1/check). */
  readonly backendCaps?: BackendCapabilities;
  readonly rules: { current(): RulesSnapshot };
  readonly limiter: RateLimiter | undefined;
  readonly bans: BanList | undefined;
  /** Recipient validation: the envelope judge's directory port (src/directory implements it). */
  readonly validator: RecipientDirectory | undefined;
  /** One backend seat per client connection (src/backend/seat.ts; guard.ts picks the kind). */
  readonly seats: BackendSeats;
  readonly registry: SessionRegistry;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Recent refusals for the admin console (the same fields as the refusal log lines). */
  readonly refusals?: RefusalSink | undefined;
  /** DNS block/allow lists scored at connect (config `dnsbl`). */
  readonly dnsbl?: Pick<DnsblScorer, 'score' | 'scores'> | undefined;
  /** Postfix policy services asked at RCPT / DATA (config `policyServices`). */
  readonly policyServices?: Pick<PolicyServices, 'has' | 'evaluate' | 'asks'> | undefined;
  readonly auth: AuthTrust;
  shuttingDown(): boolean;
}
