/**
 * compileRules: raw rule files → immutable RulesSnapshot. Domains are canonicalised, CIDR matchers
 * built once, ids checked, and rule sets that would open the relay are refused (Postfix refuses to
 * start without reject_unauth_destination — its "has_required" check).
 */
import { reply, type Reply } from '../smtp/reply.js';
import {
  AUTH_UNPROVEN, BAD_RECIPIENT_SYNTAX, DIRECTORY_UNAVAILABLE, RELAY_DENIED, SENDER_NOT_AUTHORISED, USER_UNKNOWN,
} from '../smtp/replies.js';
import { AcceptedDomains } from './accepted-domains.js';
import { contentHash, deepFreeze } from './content-hash.js';
import { canonicalDomain } from './domain-name.js';
import { parseNetwork, type IpNetwork } from '../util/ip-address.js';
import { internetWideReason } from './wide-networks.js';
import { NetworkSet } from './network-set.js';
import type { PolicyRules, RuleMode, RuleReply, SenderRule } from './rule-types.js';
import { compileSenderPattern, type SenderPattern } from './sender-pattern.js';
import type { RecipientValidationMode } from './verdict.js';

export type { PolicyRules, RuleMode, RuleOverride, RuleReply, SenderRule } from './rule-types.js';

/**
 * The rule sections policy compiles. A rule set carries more (limits, owned by the limiter; the
 * rest of recipient-validation, owned by the directory: src/rules/schemas.ts RawRules); policy
 * passes those through untouched in `raw` and never reads them.
 */
export type PolicySections = {
  acceptedDomains: string[];
  relayNetworks: string[];
  neverRelayNetworks: string[];
  senders: SenderRule[];
  policy: PolicyRules;
  /** recipient-validation, read only as `{ domains: { [domain]: mode }, default?: mode }`. */
  recipientValidation: unknown;
};

/**
 * One problem in a rule set. `section` is the kebab-case section name, `path` a JSON pointer into
 * that section ("/2", "/rules/relay-denied/mode"). The rules store adds `file` and `line`.
 */
export type RuleError = { code: string; section: string; message: string; path?: string; file?: string; line?: number };

/** Built-in rules whose mode and reply policy.yaml may override. */
export const OVERRIDABLE_RULES = [
  'routing-tricks', 'encapsulated-address', 'relay-denied', 'anti-spoofing', 'recipient-unknown', 'directory-unavailable',
  'auth-unproven',
] as const;
export type OverridableRuleId = (typeof OVERRIDABLE_RULES)[number];

/** Every built-in rule id, in evaluation order (RCPT, then MAIL, then recipient lookup). */
export const BUILTIN_RULE_IDS = [
  'postmaster', 'routing-tricks', 'encapsulated-address', 'accepted-domains', 'never-relay-networks', 'relay-networks',
  'authenticated', 'internal-listener', 'auth-unproven', 'relay-denied', 'anti-spoofing', 'recipient-validation', 'recipient-unknown',
  'directory-unavailable',
] as const;

export const DEFAULT_REPLIES: Readonly<Record<OverridableRuleId, Reply>> = Object.freeze({
  'routing-tricks': BAD_RECIPIENT_SYNTAX,
  // An encapsulated address is a relay attempt through Exchange's IMCEA decoding, so it gets the
  // relay refusal rather than a syntax error.
  'encapsulated-address': RELAY_DENIED,
  'relay-denied': RELAY_DENIED,
  'anti-spoofing': SENDER_NOT_AUTHORISED,
  'recipient-unknown': USER_UNKNOWN,
  'directory-unavailable': DIRECTORY_UNAVAILABLE,
  'auth-unproven': AUTH_UNPROVEN,
});

const SENDER_REJECTED = reply(550, '5.7.1', 'Sender rejected');
const SENDER_DEFERRED = reply(450, '4.7.1', 'Sender temporarily rejected, try again later');

/** Rules that must stay in enforce mode, and why (the backend behind us is assumed to be an open relay). */
const MUST_ENFORCE: Partial<Record<OverridableRuleId, string>> = {
  'relay-denied': 'any client could relay to any domain through the backend',
  'routing-tricks': 'the backend would relay sender-routed addresses such as user%other.example@ourdomain or <@ourdomain:user@other.example> to other domains',
  'encapsulated-address': 'an old Exchange backend would decode IMCEASMTP-user+40other.example@ourdomain and relay to other.example',
};

/** Second-level labels that, under a two-letter country code, form a public suffix (co.uk, com.au, ne.jp, …). */
const PUBLIC_SECOND_LEVEL = new Set(['ac', 'co', 'com', 'edu', 'go', 'gob', 'gov', 'govt', 'ltd', 'mil', 'ne', 'net', 'nic', 'or', 'org', 'plc', 'sch']);

export interface RuleSetting {
  readonly mode: RuleMode;
  readonly reply: Reply;
}

export interface CompiledSenderRule {
  readonly id: string;
  /** `sender-rules:<id>` */
  readonly ruleId: string;
  readonly patterns: readonly SenderPattern[];
  readonly clients?: NetworkSet;
  readonly action: 'reject' | 'defer';
  readonly mode: RuleMode;
  readonly reply: Reply;
}

export interface RulesSnapshot<R extends PolicySections = PolicySections> {
  /** Content hash of `raw`. */
  readonly version: string;
  /** The rule data this snapshot was compiled from, every section (deep-frozen copy; RulesStore keeps its command-line overlay out of it). */
  readonly raw: Readonly<R>;
  readonly acceptedDomains: AcceptedDomains;
  readonly relayNetworks: NetworkSet;
  readonly neverRelayNetworks: NetworkSet;
  readonly senderRules: readonly CompiledSenderRule[];
  readonly antiSpoofing: boolean;
  readonly settings: Readonly<Record<OverridableRuleId, RuleSetting>>;
  readonly recipientValidation: {
    readonly domains: ReadonlyMap<string, RecipientValidationMode>;
    readonly default: RecipientValidationMode;
  };
}

export type CompileResult<R extends PolicySections = PolicySections> = { ok: true; snapshot: RulesSnapshot<R> } | { ok: false; errors: RuleError[] };

export function compileRules<R extends PolicySections>(raw: R): CompileResult<R> {
  const errors: RuleError[] = [];
  const err = (code: string, section: string, message: string, path?: string): void => {
    errors.push(path === undefined ? { code, section, message } : { code, section, message, path });
  };

  // ── accepted-domains ──
  const exact: string[] = [];
  const wildcardBases: string[] = [];
  (raw.acceptedDomains ?? []).forEach((entry, i) => {
    const path = `/${i}`;
    if (typeof entry !== 'string') return err('RG_ERR_RULES_BAD_DOMAIN', 'accepted-domains', `entry ${i} is not a string`, path);
    if (entry === '*' || entry === '*.') {
      return err('RG_ERR_RULES_OPEN_RELAY', 'accepted-domains', `"${entry}" would accept mail for every domain: the backend would relay for anyone`, path);
    }
    const wildcard = entry.startsWith('*.');
    const d = canonicalDomain(wildcard ? entry.slice(2) : entry);
    if (!d.ok) return err('RG_ERR_RULES_BAD_DOMAIN', 'accepted-domains', d.reason, path);
    if (!wildcard) return void exact.push(d.domain);
    if (d.kind !== 'name') return err('RG_ERR_RULES_BAD_DOMAIN', 'accepted-domains', `"${entry}": a wildcard needs a domain name`, path);
    const labels = d.domain.split('.');
    const publicSuffix = labels.length === 1
      || (labels.length === 2 && (labels[1] ?? '').length === 2 && PUBLIC_SECOND_LEVEL.has(labels[0] ?? ''));
    if (publicSuffix) {
      return err('RG_ERR_RULES_OPEN_RELAY', 'accepted-domains',
        `"${entry}" would accept mail for every domain under the public suffix "${d.domain}": the backend would relay for anyone`, path);
    }
    wildcardBases.push(d.domain);
  });

  // ── networks ──
  const compileNetworks = (section: string, list: readonly string[], relay: boolean): NetworkSet => {
    const nets: IpNetwork[] = [];
    (list ?? []).forEach((entry, i) => {
      const path = `/${i}`;
      if (typeof entry !== 'string') return err('RG_ERR_RULES_BAD_NETWORK', section, `entry ${i} is not a string`, path);
      const p = parseNetwork(entry);
      if (!p.ok) return err('RG_ERR_RULES_BAD_NETWORK', section, p.reason, path);
      const wide = relay ? internetWideReason(p.network) : undefined;
      if (wide !== undefined) return err('RG_ERR_RULES_OPEN_RELAY', section, `"${entry}": ${wide}: it would let any client relay`, path);
      nets.push(p.network);
    });
    return new NetworkSet(nets);
  };
  const relayNetworks = compileNetworks('relay-networks', raw.relayNetworks, true);
  const neverRelayNetworks = compileNetworks('never-relay-networks', raw.neverRelayNetworks, false);

  // ── policy ──
  const overrides = raw.policy?.rules ?? {};
  const settings = {} as Record<OverridableRuleId, RuleSetting>;
  for (const id of OVERRIDABLE_RULES) settings[id] = { mode: 'enforce', reply: DEFAULT_REPLIES[id] };
  for (const [id, o] of Object.entries(overrides)) {
    const path = `/rules/${id}`;
    if (!(OVERRIDABLE_RULES as readonly string[]).includes(id)) {
      err('RG_ERR_RULES_UNKNOWN_RULE', 'policy', `unknown rule "${id}" (rules that can be overridden: ${OVERRIDABLE_RULES.join(', ')})`, path);
      continue;
    }
    const rid = id as OverridableRuleId;
    const mode = o?.mode ?? 'enforce';
    const why = MUST_ENFORCE[rid];
    if (mode === 'warn' && why !== undefined) {
      err('RG_ERR_RULES_OPEN_RELAY', 'policy', `rule "${rid}" cannot be in warn mode: ${why}`, `${path}/mode`);
    }
    let r = DEFAULT_REPLIES[rid];
    if (o?.reply !== undefined) {
      const checked = checkReply(o.reply);
      if (typeof checked === 'string') {
        const code = rid === 'relay-denied' ? 'RG_ERR_RULES_OPEN_RELAY' : 'RG_ERR_RULES_BAD_REPLY';
        const suffix = rid === 'relay-denied' ? ': relay-denied must refuse with a 4xx or 5xx reply, or any client could relay' : '';
        err(code, 'policy', `rule "${rid}": ${checked}${suffix}`, `${path}/reply`);
      } else {
        r = checked;
      }
    }
    settings[rid] = { mode, reply: r };
  }

  // ── senders ──
  const senderRules: CompiledSenderRule[] = [];
  const seen = new Set<string>();
  (raw.senders ?? []).forEach((rule, i) => {
    const path = `/${i}`;
    if (seen.has(rule.id)) return err('RG_ERR_RULES_DUPLICATE_ID', 'senders', `duplicate rule id "${rule.id}"`, `${path}/id`);
    seen.add(rule.id);
    const patterns: SenderPattern[] = [];
    rule.match.forEach((m, j) => {
      const p = compileSenderPattern(m);
      if (p.ok) patterns.push(p.pattern);
      else err('RG_ERR_RULES_BAD_SENDER_PATTERN', 'senders', `rule "${rule.id}": ${p.reason}`, `${path}/match/${j}`);
    });
    const nets: IpNetwork[] = [];
    (rule.clients ?? []).forEach((c, j) => {
      const p = parseNetwork(c);
      if (p.ok) nets.push(p.network);
      else err('RG_ERR_RULES_BAD_NETWORK', 'senders', `rule "${rule.id}": ${p.reason}`, `${path}/clients/${j}`);
    });
    let r = rule.action === 'reject' ? SENDER_REJECTED : SENDER_DEFERRED;
    if (rule.reply !== undefined) {
      const checked = checkReply(rule.reply);
      if (typeof checked === 'string') err('RG_ERR_RULES_BAD_REPLY', 'senders', `rule "${rule.id}": ${checked}`, `${path}/reply`);
      else if ((checked.code >= 500) !== (rule.action === 'reject')) {
        err('RG_ERR_RULES_BAD_REPLY', 'senders', `rule "${rule.id}": action ${rule.action} needs a ${rule.action === 'reject' ? '5xx' : '4xx'} reply`, `${path}/reply/code`);
      } else r = checked;
    }
    senderRules.push(Object.freeze({
      id: rule.id,
      ruleId: `sender-rules:${rule.id}`,
      patterns: Object.freeze(patterns),
      ...(rule.clients === undefined ? {} : { clients: new NetworkSet(nets) }),
      action: rule.action,
      mode: rule.mode ?? 'enforce',
      reply: r,
    }));
  });

  if (errors.length > 0) return { ok: false, errors };

  const frozenRaw = deepFreeze(structuredClone(raw));
  const snapshot: RulesSnapshot<R> = {
    version: contentHash(frozenRaw),
    raw: frozenRaw,
    acceptedDomains: new AcceptedDomains(exact, wildcardBases),
    relayNetworks,
    neverRelayNetworks,
    senderRules: Object.freeze(senderRules),
    antiSpoofing: raw.policy?.antiSpoofing === true,
    settings: deepFreeze(settings),
    recipientValidation: Object.freeze(compileRecipientValidation(raw.recipientValidation)),
  };
  return { ok: true, snapshot: Object.freeze(snapshot) };
}

/** Reply override → Reply, or why it is unusable. Only 4xx/5xx refusals; enhanced class must match. */
function checkReply(r: RuleReply): Reply | string {
  if (!Number.isInteger(r.code) || r.code < 400 || r.code > 599) return `reply code ${r.code} is not a 4xx or 5xx code`;
  if (r.enhanced !== undefined) {
    if (!/^[45]\.[0-9]{1,3}\.[0-9]{1,3}$/.test(r.enhanced)) return `enhanced code "${r.enhanced}" is not a 4.x.x or 5.x.x status (RFC 3463)`;
    if (r.enhanced[0] !== String(r.code)[0]) return `enhanced code ${r.enhanced} does not match reply code ${r.code} (RFC 3463 §2)`;
  }
  if (typeof r.text !== 'string' || r.text.length === 0 || /[\r\n\0]/.test(r.text)) return 'reply text must be one non-empty line';
  return reply(r.code, r.enhanced, r.text);
}

const VALIDATION_MODES: readonly string[] = ['off', 'list', 'ldap'];

/**
 * The recipient-validation section, read in the shape `{ domains: { [domain]: mode }, default?: mode }`.
 * Anything else (or a missing section) means validation is off.
 */
function compileRecipientValidation(section: unknown): RulesSnapshot['recipientValidation'] {
  const domains = new Map<string, RecipientValidationMode>();
  let def: RecipientValidationMode = 'off';
  if (section !== null && typeof section === 'object') {
    const s = section as { domains?: unknown; default?: unknown };
    if (typeof s.default === 'string' && VALIDATION_MODES.includes(s.default)) def = s.default as RecipientValidationMode;
    if (s.domains !== null && typeof s.domains === 'object') {
      for (const [d, mode] of Object.entries(s.domains as Record<string, unknown>)) {
        const c = canonicalDomain(d);
        if (c.ok && typeof mode === 'string' && VALIDATION_MODES.includes(mode)) domains.set(c.domain, mode as RecipientValidationMode);
      }
    }
  }
  return { domains, default: def };
}
