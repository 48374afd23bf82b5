/**
 * Configuration of Postfix policy services (relay-guard.yaml `policyServices`): each one a TCP
 * policy daemon (postgrey, policyd-spf, postfwd, …) asked at the RCPT or the DATA stage.
 */
import { Type, type Static } from '@sinclair/typebox';
import { Duration } from '../util/duration.js';

export const PolicyServiceSchema = Type.Object(
  {
    name: Type.Optional(Type.String({ pattern: '^[a-z0-9][a-z0-9_-]{0,62}$', description: 'used in logs, traces and the service metric label (default: the address)' })),
    address: Type.String({ minLength: 3, maxLength: 300, pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$', description: 'HOST:PORT or [IPv6]:PORT of the policy daemon' }),
    stage: Type.Union([Type.Literal('rcpt'), Type.Literal('data')], { default: 'rcpt', description: 'asked at each RCPT TO the guard accepts, or once at DATA' }),
    timeout: Type.String({ ...Duration, default: '10s' }),
    onError: Type.Union([Type.Literal('dunno'), Type.Literal('tempfail')], { default: 'tempfail', description: 'no answer in time (or a broken connection): go on as if DUNNO, or answer 451 4.3.5' }),
    maxConnections: Type.Integer({ minimum: 1, maximum: 64, default: 4, description: 'connections kept open to the service and reused' }),
    trusted: Type.Union([Type.Literal('skip'), Type.Literal('ask')], { default: 'skip', description: 'trusted clients (relay networks, authenticated, internal listeners): not asked (skip, as permit_mynetworks and permit_sasl_authenticated before check_policy_service), or asked too' }),
    context: Type.Optional(Type.String({ maxLength: 200, pattern: '^[\\x20-\\x7e]*$', description: 'sent as policy_context (Postfix smtpd_policy_service_policy_context)' })),
  },
  { additionalProperties: false },
);

export const PolicyServicesSchema = Type.Array(PolicyServiceSchema, { maxItems: 16 });

export type PolicyServiceConfig = Static<typeof PolicyServiceSchema>;

/** "HOST:PORT" or "[v6]:PORT" → host and port. */
export function parseServiceAddress(address: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})$/.exec(address);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}

/** The name a service goes by in logs, traces and metrics. */
export function serviceName(s: Pick<PolicyServiceConfig, 'name' | 'address'>): string {
  return s.name ?? s.address;
}
