/**
 * Sender patterns of senders.yaml, compiled once:
 *   "<>"                  the null reverse-path (RFC 5321 §4.5.5)
 *   "*@spam.test", "@spam.test"   any local part at exactly that domain
 *   "*@*.spam.test"       any local part at any subdomain of spam.test (not spam.test itself)
 *   "user@x.test"         one address; the local part is compared case-insensitively (a block
 *                         list should not be dodged by changing case, RFC 5321 §2.4 notwithstanding)
 */
import type { ReversePath } from '../smtp/path.js';
import { AcceptedDomains } from './accepted-domains.js';
import { canonicalDomain } from './domain-name.js';

export type SenderPattern =
  | { readonly kind: 'null' }
  | { readonly kind: 'domain'; readonly local?: string; readonly domains: AcceptedDomains };

export type CompiledPattern = { ok: true; pattern: SenderPattern } | { ok: false; reason: string };

export function compileSenderPattern(text: string): CompiledPattern {
  if (text === '<>') return { ok: true, pattern: { kind: 'null' } };
  const at = text.lastIndexOf('@');
  if (at < 0) return { ok: false, reason: `${JSON.stringify(text)} is not a sender pattern (want "<>", "@domain", "*@domain", "*@*.domain" or "user@domain")` };
  const local = text.slice(0, at);
  const domainText = text.slice(at + 1);
  const wildcard = domainText.startsWith('*.');
  const d = canonicalDomain(wildcard ? domainText.slice(2) : domainText);
  if (!d.ok) return { ok: false, reason: `${JSON.stringify(text)}: ${d.reason}` };
  if (wildcard && d.kind !== 'name') return { ok: false, reason: `${JSON.stringify(text)}: a wildcard needs a domain name` };
  const domains = wildcard ? new AcceptedDomains([], [d.domain]) : new AcceptedDomains([d.domain], []);
  const anyLocal = local === '' || local === '*';
  return { ok: true, pattern: anyLocal ? { kind: 'domain', domains } : { kind: 'domain', local: local.toLowerCase(), domains } };
}

export function senderPatternMatches(p: SenderPattern, sender: ReversePath): boolean {
  if (p.kind === 'null') return sender.kind === 'null';
  if (sender.kind === 'null') return false;
  if (p.local !== undefined && p.local !== sender.mailbox.localPart.toLowerCase()) return false;
  return p.domains.has(sender.mailbox.domain);
}
