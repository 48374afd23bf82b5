/**
 * Mailbox helpers: domain normalisation (names, IDN, address literals) and detection of
 * sender-specified routing ("routing tricks"). Pure: node:url's domainToASCII is the only Node import.
 */
import { domainToASCII } from 'node:url';
import { formatIPv6, parseIPv6 } from '../util/ip-address.js';
import { remembered } from '../util/remembered.js';
import type { ForwardPath, ReversePath, RoutingTrick } from './path.js';

export type NormalizedDomain =
  | { readonly ok: true; readonly domain: string; readonly kind: 'name' | 'ipv4' | 'ipv6' }
  | { readonly ok: false; readonly reason: string };

/** RFC 5321 §4.5.3.1.2: a domain is at most 255 octets. */
export const MAX_DOMAIN_OCTETS = 255;
/** RFC 1035 §2.3.4 / RFC 5321 §4.5.3.1.2: a label is at most 63 octets. */
export const MAX_LABEL_OCTETS = 63;

// RFC 5321 §4.1.2 sub-domain = Let-dig [Ldh-str]: no leading or trailing hyphen.
const LDH_LABEL = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;
/** A-Z a-z 0-9 '.' '-': the only ASCII characters a domain name may hold before IDNA. */
function isAsciiDomainChar(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x2d;
}
// RFC 5321 §4.1.3 IPv4-address-literal, strict: decimal, no leading zeros, each part ≤ 255.
const IPV4_PART = '(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])';
const IPV4 = new RegExp(`^${IPV4_PART}(?:\\.${IPV4_PART}){3}$`);

function fault(reason: string): NormalizedDomain {
  return { ok: false, reason };
}

/**
 * Normalise an RFC 5321 Domain or address-literal (the part after '@').
 * Names: lower case, one trailing dot removed, U-labels → A-labels (IDNA via node:url), then the
 * RFC 5321 letter-digit-hyphen syntax is checked on the result. A name whose last label is all
 * digits is refused: no top-level domain is numeric (RFC 3696 §2), and MTAs that read such a
 * "name" as an IP address are a routing hole. Literals: "[192.0.2.1]", "[IPv6:...]" (written in
 * RFC 5952 canonical form). General address literals ("[tag:...]", RFC 5321 §4.1.3) are refused.
 */
export const normalizeDomain: (raw: string) => NormalizedDomain = remembered(normalizeDomainUncached);

function normalizeDomainUncached(raw: string): NormalizedDomain {
  if (raw.startsWith('[')) return normalizeAddressLiteral(raw);
  let name = raw.endsWith('.') ? raw.slice(0, -1) : raw;
  if (name.length === 0) return fault('empty domain');
  // Refuse any ASCII character outside letters/digits/hyphen/dot before IDNA processing, so that
  // the WHATWG host parser cannot percent-decode or reinterpret it.
  let ascii = true;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 0x80) {
      if (!isAsciiDomainChar(c)) return fault('invalid character in domain');
    } else {
      ascii = false;
    }
  }
  name = name.toLowerCase();
  if (!ascii || name.split('.').some((l) => l.startsWith('xn--'))) {
    // IDNA (UTS #46) mapping and punycode; '' means the name is not a valid IDN. For names that
    // are already A-labels this checks the punycode.
    const converted = domainToASCII(name);
    if (converted === '') return fault('invalid internationalised domain name');
    if (ascii && converted !== name) return fault('invalid A-label');
    name = converted;
  }
  if (name.length > MAX_DOMAIN_OCTETS) return fault('domain longer than 255 octets');
  const labels = name.split('.');
  for (const label of labels) {
    if (label.length === 0) return fault('empty label in domain');
    if (label.length > MAX_LABEL_OCTETS) return fault('label longer than 63 octets');
    if (!LDH_LABEL.test(label)) return fault('invalid label in domain');
  }
  if (/^[0-9]+$/.test(labels[labels.length - 1] ?? '')) return fault('numeric top-level label');
  return { ok: true, domain: name, kind: 'name' };
}

function normalizeAddressLiteral(raw: string): NormalizedDomain {
  if (!raw.endsWith(']') || raw.length < 3) return fault('unterminated address literal');
  const inner = raw.slice(1, -1);
  if (IPV4.test(inner)) return { ok: true, domain: `[${inner}]`, kind: 'ipv4' };
  const colon = inner.indexOf(':');
  if (colon < 0) return fault('invalid IPv4 address literal');
  // RFC 5321 §4.1.3: the tag is "IPv6" (compared case-insensitively); anything else is a
  // General-address-literal, which no legitimate sender needs.
  if (inner.slice(0, colon).toLowerCase() !== 'ipv6') return fault('general address literal');
  const canonical = canonicalIpv6(inner.slice(colon + 1));
  if (canonical === undefined) return fault('invalid IPv6 address literal');
  return { ok: true, domain: `[IPv6:${canonical}]`, kind: 'ipv6' };
}

/**
 * Parse an IPv6 address (RFC 4291 §2.2 text forms, incl. an embedded dotted quad) and write it in
 * RFC 5952 canonical form: lower case, no leading zeros, the longest run (≥ 2) of zero groups as
 * "::", IPv4-mapped addresses as ::ffff:a.b.c.d (RFC 5952 §5). Returns undefined when invalid.
 */
export function canonicalIpv6(text: string): string | undefined {
  const v = parseIPv6(text);
  return v === undefined ? undefined : formatIPv6(v, { mappedAsDottedQuad: true });
}

/** Exchange encapsulated address (IMCEA<type>-...): Exchange decodes and routes these itself. */
const ENCAPSULATED = /^IMCEA[A-Z0-9]*-/i;

/** Decode Exchange's "+XX" hex escapes (IMCEA encoding), e.g. "+40" → "@". */
export function decodePlusHex(s: string): string {
  if (!s.includes('+')) return s;
  return s.replace(/\+([0-9A-Fa-f]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

/**
 * Unicode look-alikes of the routing characters @ % ! that NFKC does not fold (Unicode's
 * confusables.txt, UTS #39, entries whose skeleton is the ASCII character). NFKC already folds the
 * fullwidth (U+FF20 U+FF05 U+FF01), small-form (U+FE6B U+FE6A U+FE57), vertical (U+FE15) and
 * compatibility forms (U+203C ‼, U+2049 ⁉ …); these are the rest.
 */
const CONFUSABLE_ROUTING: ReadonlyMap<string, '@' | '%' | '!'> = new Map([
  ['\u066A', '%'], // ARABIC PERCENT SIGN ٪
  ['\u2052', '%'], // COMMERCIAL MINUS SIGN ⁒
  ['\u2030', '%'], // PER MILLE SIGN ‰ (reads as % to a human and to some folding code)
  ['\u2031', '%'], // PER TEN THOUSAND SIGN ‱
  ['\u0609', '%'], // ARABIC-INDIC PER MILLE SIGN ؉
  ['\u060A', '%'], // ARABIC-INDIC PER TEN THOUSAND SIGN ؊
  ['\u01C3', '!'], // LATIN LETTER RETROFLEX CLICK ǃ
  ['\u2D51', '!'], // TIFINAGH LETTER TUAREG YAG ⵑ
  ['\uA71D', '!'], // MODIFIER LETTER RAISED EXCLAMATION MARK ꜝ
  ['\u2757', '!'], // HEAVY EXCLAMATION MARK SYMBOL ❗
  ['\u2755', '!'], // WHITE EXCLAMATION MARK ORNAMENT ❕
]);

/**
 * The routing characters a local part spells with Unicode look-alikes: NFKC first (fullwidth, small
 * and compatibility forms fold to ASCII), then the confusables NFKC leaves alone. Plain ASCII
 * characters are not counted here (routingTricks finds them).
 */
const NO_LOOKALIKES: ReadonlySet<'@' | '%' | '!'> = new Set();

export function lookalikeRouting(local: string): ReadonlySet<'@' | '%' | '!'> {
  if (!NON_ASCII.test(local)) return NO_LOOKALIKES;
  const out = new Set<'@' | '%' | '!'>();
  for (const ch of local) {
    if (ch.charCodeAt(0) < 0x80) continue;
    const folded = ch.normalize('NFKC');
    for (const r of ['@', '%', '!'] as const) if (folded.includes(r)) out.add(r);
    const c = CONFUSABLE_ROUTING.get(ch);
    if (c) out.add(c);
  }
  return out;
}

/**
 * Sender-specified routing found in a path (Postfix's allow_untrusted_routing / RFC 5321 §3.6.1,
 * App. C, RFC 2505 §2.6). The local part is inspected unquoted, so `"a%b"@c` counts as 'percent'.
 * Order of the result is fixed: source-route, percent, bang, at-in-local-part, encapsulated, then
 * the Unicode look-alikes (lookalike-percent, lookalike-bang, lookalike-at).
 */
export function routingTricks(path: ForwardPath | ReversePath): RoutingTrick[] {
  if (path.kind !== 'mailbox') return [];
  const local = path.mailbox.localPart;
  const decoded = decodePlusHex(local);
  const tricks: RoutingTrick[] = [];
  if (path.sourceRoute.length > 0) tricks.push('source-route');
  if (local.includes('%')) tricks.push('percent');
  if (local.includes('!')) tricks.push('bang');
  if (local.includes('@')) tricks.push('at-in-local-part');
  if (ENCAPSULATED.test(local) || ENCAPSULATED.test(decoded)) tricks.push('encapsulated');
  // A backend (or a gateway behind it) that folds Unicode would read these as % ! @.
  const alike = lookalikeRouting(local);
  if (alike.has('%')) tricks.push('lookalike-percent');
  if (alike.has('!')) tricks.push('lookalike-bang');
  if (alike.has('@')) tricks.push('lookalike-at');
  return tricks;
}

/**
 * RFC 5321 §4.1.2 Dot-string: atoms of atext (RFC 5322 §3.2.3) separated by single dots. With
 * SMTPUTF8, atext also holds every non-ASCII character (RFC 6531 §3.3); C1 controls excepted.
 */
export function isDotAtom(s: string): boolean {
  // Nearly every local part is a plain ASCII dot-atom: one regex answers; the rest are walked.
  if (ASCII_DOT_ATOM.test(s)) return true;
  if (s.length === 0 || !NON_ASCII.test(s)) return false;
  let prevDot = true;
  for (const ch of s) {
    if (ch === '.') {
      if (prevDot) return false;
      prevDot = true;
      continue;
    }
    if (!isAtext(ch)) return false;
    prevDot = false;
  }
  return !prevDot;
}

const ASCII_ATEXT = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]$/;
const ASCII_DOT_ATOM = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*$/;
// eslint-disable-next-line no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;

export function isAtext(ch: string): boolean {
  const c = ch.codePointAt(0) ?? 0;
  if (c >= 0x80) return isUtf8NonAsciiText(c);
  return ASCII_ATEXT.test(ch);
}

/** Non-ASCII characters allowed in addresses: not C1 controls, not lone surrogates, not U+FFFD. */
export function isUtf8NonAsciiText(c: number): boolean {
  if (c <= 0xa0) return false; // C1 controls and NO-BREAK SPACE
  if (c >= 0xd800 && c <= 0xdfff) return false;
  if (c === 0xfffd || c === 0x2028 || c === 0x2029) return false;
  return true;
}
