/**
 * Domain normalisation for policy: lower case, trailing dot removed, IDN as A-labels (RFC 5890),
 * address literals in canonical form (RFC 5321 §4.1.3). Used on rule entries at compile time and,
 * defensively, on recipient and sender domains at check time, so both sides compare equal.
 */
import { domainToASCII } from 'node:url';
import { formatIPv4, formatIPv6, parseIPv4, parseIPv6 } from '../util/ip-address.js';
import { remembered } from '../util/remembered.js';

export type CanonicalDomain =
  | { readonly ok: true; readonly domain: string; readonly kind: 'name' | 'ipv4' | 'ipv6' }
  | { readonly ok: false; readonly reason: string };

const LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** Checked for every sender and recipient: answers are kept (util/remembered.ts). */
export const canonicalDomain: (raw: string) => CanonicalDomain = remembered(canonicalDomainUncached);

function canonicalDomainUncached(raw: string): CanonicalDomain {
  if (raw.startsWith('[') && raw.endsWith(']')) return canonicalLiteral(raw.slice(1, -1));
  const name = raw.endsWith('.') ? raw.slice(0, -1) : raw;
  if (name.length === 0) return { ok: false, reason: 'empty domain' };
  // domainToASCII lower-cases and converts U-labels to A-labels; '' means it refused the input.
  const ascii = /^[\x21-\x7e]*$/.test(name) ? name.toLowerCase() : domainToASCII(name);
  if (ascii.length === 0 || ascii.length > 253) return { ok: false, reason: `${JSON.stringify(raw)} is not a valid domain name` };
  const labels = ascii.split('.');
  for (const l of labels) {
    if (!LABEL_RE.test(l)) return { ok: false, reason: `${JSON.stringify(raw)} is not a valid domain name (label ${JSON.stringify(l)})` };
  }
  if (/^[0-9]+$/.test(labels[labels.length - 1] ?? '')) {
    return { ok: false, reason: `${JSON.stringify(raw)} looks like an IP address; write an address literal such as [192.0.2.1]` };
  }
  return { ok: true, domain: ascii, kind: 'name' };
}

function canonicalLiteral(inner: string): CanonicalDomain {
  if (/^ipv6:/i.test(inner)) {
    const v6 = parseIPv6(inner.slice(5));
    if (v6 === undefined) return { ok: false, reason: `[${inner}] is not a valid IPv6 address literal` };
    return { ok: true, domain: `[IPv6:${formatIPv6(v6)}]`, kind: 'ipv6' };
  }
  const v4 = parseIPv4(inner);
  if (v4 === undefined) return { ok: false, reason: `[${inner}] is not a valid address literal (use [192.0.2.1] or [IPv6:2001:db8::1])` };
  return { ok: true, domain: `[${formatIPv4(v4)}]`, kind: 'ipv4' };
}
