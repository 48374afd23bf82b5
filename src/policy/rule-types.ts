/**
 * Plain types of the rule files as policy sees them (rules/schemas.ts holds the TypeBox schemas and
 * checks, at compile time, that they describe exactly these types).
 */

export type RuleMode = 'enforce' | 'warn';

/** A reply override (RFC 2505: every rule can answer with its own code and text). */
export interface RuleReply {
  code: number;
  enhanced?: string;
  text: string;
}

/** One rule of senders.yaml. */
export interface SenderRule {
  /** Stable kebab-case id; the verdict's ruleId is `sender-rules:<id>`. */
  id: string;
  /** "*@spam.test" or "@spam.test" (that domain), "*@*.spam.test" (its subdomains), "user@x.test", "<>" (null sender). */
  match: string[];
  /** CIDRs: the rule applies only to clients in these networks. */
  clients?: string[];
  action: 'reject' | 'defer';
  mode?: RuleMode;
  reply?: RuleReply;
}

export interface RuleOverride {
  mode?: RuleMode;
  reply?: RuleReply;
}

/** policy.yaml */
export interface PolicyRules {
  /** MAIL FROM in one of our domains from an untrusted client gets 550 5.7.1 (off by default). */
  antiSpoofing?: boolean;
  /** Mode and reply overrides of built-in rules, keyed by rule id. */
  rules?: Record<string, RuleOverride>;
}
