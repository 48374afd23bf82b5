/**
 * TypeBox schemas of every file in rules/ (shared with the admin API), and SECTIONS: the table of
 * sections by their kebab-case name. Schemas check shape; compileRules (src/policy/compile.ts)
 * checks meaning (CIDRs, domains, open-relay guard).
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { DEFAULT_RECIPIENT_VALIDATION, RecipientValidationSchema, type RecipientValidationRules } from '../directory/schema.js';
import { DEFAULT_LIMITS, LimitsSchema, type LimitsRules } from '../limits/schema.js';
import type { PolicyRules, PolicySections, RulesSnapshot as PolicySnapshot, SenderRule } from '../policy/compile.js';

/** Every section of rules/, as read from the files: policy's sections, the limiter's, the directory's. */
export type RawRules = PolicySections & {
  limits: LimitsRules;
  recipientValidation: RecipientValidationRules;
};

/** The rules in force: policy compiled, and every section (limits, recipient validation…) in `raw`. */
export type RulesSnapshot = PolicySnapshot<RawRules>;

const ONE_LINE = '^[^\\r\\n\\x00]*$';

export const DomainEntrySchema = Type.String({
  minLength: 1, maxLength: 255, pattern: ONE_LINE,
  description: 'A domain ("example.com"), every subdomain of one ("*.example.com", not the domain itself) or an address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]")',
});
export const NetworkEntrySchema = Type.String({
  minLength: 2, maxLength: 64, pattern: '^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$',
  description: 'An IPv4 or IPv6 address (a single host: /32 or /128) or a CIDR network ("198.51.100.0/24", "2001:db8::/32")',
});

export const AcceptedDomainsSchema = Type.Array(DomainEntrySchema, { maxItems: 10_000 });
export const NetworkListSchema = Type.Array(NetworkEntrySchema, { maxItems: 10_000 });

export const RuleModeSchema = Type.Union([Type.Literal('enforce'), Type.Literal('warn')]);

export const RuleReplySchema = Type.Object(
  {
    code: Type.Integer({ minimum: 400, maximum: 599, description: 'SMTP reply code, 4xx (defer) or 5xx (reject)' }),
    enhanced: Type.Optional(Type.String({ pattern: '^[45]\\.[0-9]{1,3}\\.[0-9]{1,3}$', description: 'RFC 3463 enhanced status code' })),
    text: Type.String({ minLength: 1, maxLength: 200, pattern: ONE_LINE }),
  },
  { additionalProperties: false },
);

export const SenderRuleSchema = Type.Object(
  {
    id: Type.String({ pattern: '^[a-z0-9]+(-[a-z0-9]+)*$', maxLength: 64, description: 'Stable kebab-case id; verdicts name it sender-rules:<id>' }),
    match: Type.Array(Type.String({ minLength: 1, maxLength: 320, pattern: ONE_LINE }), {
      minItems: 1, maxItems: 1000, description: '"<>", "@domain" or "*@domain", "*@*.domain", "user@domain"',
    }),
    clients: Type.Optional(Type.Array(NetworkEntrySchema, { maxItems: 1000, description: 'Apply only to clients in these networks' })),
    action: Type.Union([Type.Literal('reject'), Type.Literal('defer')]),
    mode: Type.Optional(RuleModeSchema),
    reply: Type.Optional(RuleReplySchema),
  },
  { additionalProperties: false },
);
export const SendersSchema = Type.Array(SenderRuleSchema, { maxItems: 1000 });

export const RuleOverrideSchema = Type.Object(
  { mode: Type.Optional(RuleModeSchema), reply: Type.Optional(RuleReplySchema) },
  { additionalProperties: false },
);
export const PolicySchema = Type.Object(
  {
    antiSpoofing: Type.Optional(Type.Boolean({ description: 'Refuse MAIL FROM in our own domains from untrusted clients (550 5.7.1)' })),
    rules: Type.Optional(Type.Record(Type.String({ pattern: '^[a-z0-9]+(-[a-z0-9]+)*$' }), RuleOverrideSchema, {
      description: 'Mode and reply overrides of built-in rules by rule id',
    })),
  },
  { additionalProperties: false },
);

// Compile-time proof that the schemas describe exactly the policy engine's types.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const schemaMatchesTypes: [Same<Static<typeof SenderRuleSchema>, SenderRule>, Same<Static<typeof PolicySchema>, PolicyRules>] = [true, true];
void schemaMatchesTypes;

export type SectionName =
  | 'accepted-domains' | 'relay-networks' | 'never-relay-networks' | 'senders' | 'policy' | 'limits' | 'recipient-validation';

export interface SectionSpec {
  /** File name inside the rules directory. */
  readonly file: string;
  readonly schema: TSchema;
  readonly kind: 'list' | 'object';
  /** For list sections: the schema of one item (body of POST {"value": ...}). */
  readonly itemSchema?: TSchema;
  /** Key of this section in RawRules. */
  readonly rawKey: keyof RawRules;
  /** Value of the section when its file is missing or empty. */
  readonly defaultValue: unknown;
  /** First comment line of the file when relay-guard writes it. */
  readonly description: string;
}

export const SECTIONS: Readonly<Record<SectionName, SectionSpec>> = Object.freeze({
  'accepted-domains': {
    file: 'accepted-domains.yaml', schema: AcceptedDomainsSchema, kind: 'list', itemSchema: DomainEntrySchema, rawKey: 'acceptedDomains', defaultValue: [],
    description: 'Domains this server accepts mail for: exact names, "*.example.com" for every subdomain, "[192.0.2.1]" address literals.',
  },
  'relay-networks': {
    file: 'relay-networks.yaml', schema: NetworkListSchema, kind: 'list', itemSchema: NetworkEntrySchema, rawKey: 'relayNetworks', defaultValue: [],
    description: 'Client networks allowed to relay to any domain (CIDR; a bare address is /32 or /128).',
  },
  'never-relay-networks': {
    file: 'never-relay-networks.yaml', schema: NetworkListSchema, kind: 'list', itemSchema: NetworkEntrySchema, rawKey: 'neverRelayNetworks', defaultValue: [],
    description: 'Client networks never allowed to relay, even when listed in relay-networks, authenticated or on an internal listener.',
  },
  senders: {
    file: 'senders.yaml', schema: SendersSchema, kind: 'list', itemSchema: SenderRuleSchema, rawKey: 'senders', defaultValue: [],
    description: 'Sender rules checked at MAIL FROM, first match wins: { id, match, clients?, action: reject|defer, mode?, reply? }.',
  },
  policy: {
    file: 'policy.yaml', schema: PolicySchema, kind: 'object', rawKey: 'policy', defaultValue: { antiSpoofing: false, rules: {} },
    description: 'Policy switches and overrides of built-in rules: { antiSpoofing, rules: { <ruleId>: { mode, reply } } }.',
  },
  limits: {
    file: 'limits.yaml', schema: LimitsSchema, kind: 'object', rawKey: 'limits', defaultValue: DEFAULT_LIMITS,
    description: 'Rate limits, concurrency limits and automatic bans.',
  },
  'recipient-validation': {
    file: 'recipient-validation.yaml', schema: RecipientValidationSchema, kind: 'object', rawKey: 'recipientValidation', defaultValue: DEFAULT_RECIPIENT_VALIDATION,
    description: 'How recipients of accepted domains are validated (off, list, ldap).',
  },
} satisfies Record<SectionName, SectionSpec>);

export const SECTION_NAMES = Object.keys(SECTIONS) as SectionName[];

export function isSectionName(s: string): s is SectionName {
  return Object.hasOwn(SECTIONS, s);
}
