/**
 * Schema of rules/recipient-validation.yaml: per accepted domain, how recipients are validated
 * before the guard accepts them (off, a list file, or an LDAP / Active Directory lookup).
 * Pure: no I/O. Durations are strings ("3s", "10m") parsed with parseDuration.
 */
import { Type, type Static } from '@sinclair/typebox';
import { Duration, parseDuration } from '../util/duration.js';

/** off = domain-only (anything at the domain is accepted); list = a file of addresses; ldap = a directory lookup. */
export const RecipientValidationModeSchema = Type.Union([Type.Literal('off'), Type.Literal('list'), Type.Literal('ldap')]);
export type RecipientValidationMode = Static<typeof RecipientValidationModeSchema>;

/** A canonical domain: lower-case A-label, no trailing dot (IDNs must be written as punycode). */
const CANONICAL_DOMAIN = '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$';

/** Default LDAP filter: Exchange / AD proxyAddresses (any prefix case: SMTP: is primary, smtp: an alias) or mail. */
export const DEFAULT_LDAP_FILTER = '(|(proxyAddresses=smtp:{address})(mail={address}))';

export const LdapSettingsSchema = Type.Object(
  {
    url: Type.String({ pattern: '^ldaps?://[^\\s]+$', description: 'ldap://host:389 or ldaps://host:636' }),
    startTls: Type.Optional(Type.Boolean({ description: 'Upgrade an ldap:// connection with StartTLS (RFC 4511 §4.14)' })),
    tlsCaFile: Type.Optional(Type.String({ minLength: 1, description: 'PEM file of CA certificates to trust' })),
    tlsRejectUnauthorized: Type.Optional(Type.Boolean({ description: 'Verify the server certificate (default true)' })),
    bindDn: Type.Optional(Type.String({ minLength: 1, description: 'Bind DN; anonymous bind when absent' })),
    bindPasswordEnv: Type.Optional(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', description: 'Environment variable holding the bind password' })),
    bindPasswordFile: Type.Optional(Type.String({ minLength: 1, description: 'File holding the bind password (trailing newline ignored)' })),
    baseDn: Type.String({ minLength: 1 }),
    filter: Type.Optional(
      Type.String({
        minLength: 3,
        pattern: '^\\(.*\\{address\\}.*\\)$',
        description: 'Search filter; {address} is replaced by the RFC 4515-escaped address',
      }),
    ),
    timeout: Type.Optional(Duration),
    positiveTtl: Type.Optional(Duration),
    negativeTtl: Type.Optional(Duration),
    cacheSize: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000_000 })),
  },
  { additionalProperties: false },
);
export type LdapSettings = Static<typeof LdapSettingsSchema>;

export const RecipientValidationSchema = Type.Object(
  {
    default: Type.Optional(RecipientValidationModeSchema),
    domains: Type.Optional(
      Type.Record(Type.String({ pattern: CANONICAL_DOMAIN }), RecipientValidationModeSchema, { additionalProperties: false }),
    ),
    list: Type.Optional(
      Type.Object(
        { file: Type.String({ minLength: 1, description: 'Relative to the rules directory' }) },
        { additionalProperties: false },
      ),
    ),
    ldap: Type.Optional(LdapSettingsSchema),
  },
  { additionalProperties: false },
);
export type RecipientValidationRules = Static<typeof RecipientValidationSchema>;

/** Everything off: the guard checks domains only. */
export const DEFAULT_RECIPIENT_VALIDATION: RecipientValidationRules = { default: 'off', domains: {} };

/** Defaults of the optional LDAP settings. */
export const LDAP_DEFAULTS = {
  filter: DEFAULT_LDAP_FILTER,
  timeout: '3s',
  positiveTtl: '10m',
  negativeTtl: '2m',
  cacheSize: 50_000,
  startTls: false,
  tlsRejectUnauthorized: true,
} as const;

/** The list file used when list mode is on and `list.file` is absent. */
export const DEFAULT_RECIPIENTS_FILE = 'recipients.txt';

/** The validation mode of one accepted domain (canonical form expected; lower-cased defensively). */
export function recipientValidationMode(domain: string, rules: RecipientValidationRules): RecipientValidationMode {
  const d = domain.toLowerCase().replace(/\.$/, '');
  return rules.domains?.[d] ?? rules.default ?? 'off';
}

/** LDAP settings with defaults applied and durations in milliseconds. Throws RangeError on a bad duration. */
export interface ResolvedLdapSettings {
  url: string;
  startTls: boolean;
  tlsCaFile?: string;
  tlsRejectUnauthorized: boolean;
  bindDn?: string;
  bindPasswordEnv?: string;
  bindPasswordFile?: string;
  baseDn: string;
  filter: string;
  timeoutMs: number;
  positiveTtlMs: number;
  negativeTtlMs: number;
  cacheSize: number;
}

export function resolveLdapSettings(s: LdapSettings): ResolvedLdapSettings {
  const out: ResolvedLdapSettings = {
    url: s.url,
    startTls: s.startTls ?? LDAP_DEFAULTS.startTls,
    tlsRejectUnauthorized: s.tlsRejectUnauthorized ?? LDAP_DEFAULTS.tlsRejectUnauthorized,
    baseDn: s.baseDn,
    filter: s.filter ?? LDAP_DEFAULTS.filter,
    timeoutMs: parseDuration(s.timeout ?? LDAP_DEFAULTS.timeout),
    positiveTtlMs: parseDuration(s.positiveTtl ?? LDAP_DEFAULTS.positiveTtl),
    negativeTtlMs: parseDuration(s.negativeTtl ?? LDAP_DEFAULTS.negativeTtl),
    cacheSize: s.cacheSize ?? LDAP_DEFAULTS.cacheSize,
  };
  if (s.tlsCaFile !== undefined) out.tlsCaFile = s.tlsCaFile;
  if (s.bindDn !== undefined) out.bindDn = s.bindDn;
  if (s.bindPasswordEnv !== undefined) out.bindPasswordEnv = s.bindPasswordEnv;
  if (s.bindPasswordFile !== undefined) out.bindPasswordFile = s.bindPasswordFile;
  return out;
}
