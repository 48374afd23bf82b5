/**
 * RFC 5321 §4.1.2 paths (MAIL FROM / RCPT TO arguments) and ESMTP parameters: parse and format.
 * Pure. Owner: codec. Invariant 1: formatPath(parsed) is what the backend receives.
 */
import { fail, ok, type Parsed } from './reply.js';
import { BAD_RECIPIENT_SYNTAX, BAD_SENDER_SYNTAX } from './replies.js';
import { isDotAtom, isUtf8NonAsciiText, normalizeDomain } from './mailbox.js';

/** A mailbox after normalisation. */
export interface Mailbox {
  /** Local part, unquoted and unescaped (case kept: local parts are case-sensitive). */
  readonly localPart: string;
  /** True when the client wrote the local part as a quoted-string. */
  readonly quoted: boolean;
  /**
   * Domain, canonical: a domain name lower-cased, trailing dot removed, IDN as A-labels (punycode);
   * or an address literal in canonical form: "[192.0.2.1]", "[IPv6:2001:db8::1]" (compressed, lower case).
   */
  readonly domain: string;
  readonly domainKind: 'name' | 'ipv4' | 'ipv6';
}

/** Sender-specified routing found in an address (Postfix's allow_untrusted_routing). */
export type RoutingTrick =
  | 'source-route' // <@a,@b:user@c>
  | 'percent' //  user%other@ours
  | 'bang' // other!user@ours
  | 'at-in-local-part' // "user@other"@ours, user\@other@ours
  | 'encapsulated' // IMCEASMTP-user+40other@ours and other IMCEA<type>- forms
  | 'lookalike-percent' // user\uFF05other@ours: a Unicode look-alike of % (fullwidth, small form, Arabic percent …)
  | 'lookalike-bang' // other\uFF01user@ours: a look-alike of !
  | 'lookalike-at' // user\uFF20other@ours: a look-alike of @
  ;

export interface EsmtpParam {
  /** Keyword, upper-cased (SIZE, BODY, NOTIFY, ORCPT, RET, ENVID, SMTPUTF8, AUTH, ...). */
  readonly keyword: string;
  /** Value as sent (xtext kept encoded), or undefined for a bare keyword. */
  readonly value?: string;
}

export type ReversePath =
  | { readonly kind: 'null' }
  | { readonly kind: 'mailbox'; readonly mailbox: Mailbox; readonly sourceRoute: readonly string[] };

export type ForwardPath =
  | { readonly kind: 'postmaster' } // <postmaster>, case-insensitive, RFC 5321 §4.5.1
  | { readonly kind: 'mailbox'; readonly mailbox: Mailbox; readonly sourceRoute: readonly string[] };

export interface PathWithParams<P> {
  readonly path: P;
  readonly params: readonly EsmtpParam[];
}

/** RFC 5321 §4.5.3.1.3: a path, angle brackets included, is at most 256 octets. */
export const MAX_PATH_OCTETS = 256;
/** RFC 5321 §4.5.3.1.1: a local part is at most 64 octets (as written, quotes included). */
export const MAX_LOCAL_PART_OCTETS = 64;

/** Which argument a path came from: MAIL FROM (reverse) or RCPT TO (forward). */
export type PathRole = 'reverse' | 'forward';

/** Parse result with the reason of a refusal, for logs ("the log is specific", STYLE §7.5). */
export type PathParseResult<P> =
  | { readonly ok: true; readonly value: PathWithParams<P> }
  | { readonly ok: false; readonly reason: string };

type Step<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly reason: string };
type MailboxPath = { readonly kind: 'mailbox'; readonly mailbox: Mailbox; readonly sourceRoute: readonly string[] };
type AnyPath = ReversePath | ForwardPath;

function no<T>(reason: string): Step<T> {
  return { ok: false, reason };
}
function yes<T>(value: T): Step<T> {
  return { ok: true, value };
}

/**
 * Parse the argument of MAIL FROM: (everything after the colon).
 * Failures answer 501 5.1.7 (kind 'syntax').
 */
export function parseReversePath(arg: string): Parsed<PathWithParams<ReversePath>> {
  const r = analyzeReversePath(arg);
  return r.ok ? ok(r.value) : fail('syntax', BAD_SENDER_SYNTAX);
}

/**
 * Parse the argument of RCPT TO: (everything after the colon).
 * Failures answer 501 5.1.3 (kind 'syntax').
 */
export function parseForwardPath(arg: string): Parsed<PathWithParams<ForwardPath>> {
  const r = analyzeForwardPath(arg);
  return r.ok ? ok(r.value) : fail('syntax', BAD_RECIPIENT_SYNTAX);
}

/** parseReversePath with the reason of a refusal. */
export function analyzeReversePath(arg: string): PathParseResult<ReversePath> {
  const r = parsePathArgument(arg, 'reverse');
  if (!r.ok) return r;
  const { path, params } = r.value;
  if (path.kind === 'postmaster') return no('postmaster without domain in reverse path');
  return yes({ path, params });
}

/** parseForwardPath with the reason of a refusal. */
export function analyzeForwardPath(arg: string): PathParseResult<ForwardPath> {
  const r = parsePathArgument(arg, 'forward');
  if (!r.ok) return r;
  const { path, params } = r.value;
  // RFC 5321 §4.1.1.3: RCPT TO:<> is not a forward path.
  if (path.kind === 'null') return no('null forward path');
  return yes({ path, params });
}

/*
 * Leniency (what we accept beyond RFC 5321 §4.1.2, because real clients send it):
 *   - spaces between the colon and the path:      MAIL FROM: <a@b.test>
 *   - a plain mailbox without angle brackets:     MAIL FROM:a@b.test SIZE=10
 *   - trailing spaces, and several spaces between parameters.
 * Strict (refused, fail closed, invariant 2):
 *   - control characters (and C1 controls), comments "(...)" (RFC 5322 CFWS is not SMTP syntax),
 *   - unbalanced or nested angle brackets, spaces inside the brackets, junk right after '>',
 *   - a second unquoted '@', backslashes outside a quoted-string, an empty local part,
 *   - a path over 256 octets (§4.5.3.1.3), a local part over 64 octets (§4.5.3.1.1), a domain
 *     over 255 octets or with labels over 63 octets (§4.5.3.1.2),
 *   - source routes without brackets, and address literals in source routes (A-d-l is Domain only),
 *   - ESMTP parameters that do not match esmtp-keyword ["=" esmtp-value] (§4.1.2), duplicates.
 * Source routes are parsed (and reported as a routing trick) but dropped when formatting
 * (§3.6.1, App. C: servers SHOULD ignore them).
 */
function parsePathArgument(arg: string, role: PathRole): Step<PathWithParams<AnyPath>> {
  for (let i = 0; i < arg.length; i++) {
    const c = arg.charCodeAt(i);
    if (c < 0x20 || c === 0x7f || (c >= 0x80 && c <= 0x9f)) return no('control character');
  }
  const s = trimSpaces(arg);
  if (s === '') return no('missing path');
  let pathText: string;
  let rest: string;
  if (s.startsWith('<')) {
    const end = closingBracket(s);
    if (end < 0) return no('unbalanced angle brackets');
    pathText = s.slice(1, end);
    rest = s.slice(end + 1);
  } else {
    const end = firstSpaceOutsideQuotes(s);
    if (end < 0) return no('unbalanced angle brackets');
    pathText = s.slice(0, end);
    rest = s.slice(end);
    if (pathText.startsWith('@')) return no('source route without angle brackets');
  }
  if (rest !== '' && !rest.startsWith(' ')) return no('junk after path');
  if (utf8Length(pathText) + 2 > MAX_PATH_OCTETS) return no('path longer than 256 octets');
  const path = parsePathContent(pathText, role);
  if (!path.ok) return path;
  const params = parseParams(rest);
  if (!params.ok) return params;
  return yes({ path: path.value, params: params.value });
}

/** Index of the '>' that closes the '<' at 0, skipping quoted-strings; -1 when unbalanced. */
function closingBracket(s: string): number {
  return findUnquoted(s, 1, '>', '<', -1);
}

/** End of an unbracketed path (first space outside quotes, or the end); -1 on a stray '<' or '>'. */
function firstSpaceOutsideQuotes(s: string): number {
  return findUnquoted(s, 0, ' ', '<>', s.length);
}

/**
 * Index of the first `stop` character outside quoted-strings (a backslash escapes the next
 * character inside quotes), from `from`; -1 at one of the `bad` characters; `atEnd` when neither.
 */
function findUnquoted(s: string, from: number, stop: string, bad: string, atEnd: number): number {
  let inQuote = false;
  for (let i = from; i < s.length; i++) {
    const ch = s[i]!;
    if (inQuote) {
      if (ch === '\\') i++;
      else if (ch === '"') inQuote = false;
    } else if (ch === '"') {
      inQuote = true;
    } else if (ch === stop) {
      return i;
    } else if (bad.includes(ch)) {
      return -1;
    }
  }
  return atEnd;
}

/** Remove leading and trailing SP (only SP: other whitespace is not SMTP syntax). Linear time. */
export function trimSpaces(s: string): string {
  let start = 0;
  let end = s.length;
  while (start < end && s.charCodeAt(start) === 0x20) start++;
  while (end > start && s.charCodeAt(end - 1) === 0x20) end--;
  return s.slice(start, end);
}

function utf8Length(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

function parsePathContent(text: string, role: PathRole): Step<AnyPath> {
  if (text === '') return yes({ kind: 'null' });
  // RFC 5321 §4.5.1: "postmaster" without domain, case-insensitive, only as a forward path.
  if (role === 'forward' && text.toLowerCase() === 'postmaster') return yes({ kind: 'postmaster' });
  let i = 0;
  const sourceRoute: string[] = [];
  if (text.startsWith('@')) {
    // RFC 5321 §4.1.2: A-d-l = At-domain *( "," At-domain ) ":"
    for (;;) {
      if (text[i] !== '@') return no('invalid source route');
      const end = text.slice(i + 1).search(/[,:]/);
      if (end < 0) return no('invalid source route');
      const raw = text.slice(i + 1, i + 1 + end);
      const d = normalizeDomain(raw);
      if (!d.ok) return no(`source route: ${d.reason}`);
      if (d.kind !== 'name') return no('address literal in source route');
      sourceRoute.push(d.domain);
      i += 1 + end;
      const sep = text[i];
      i++;
      if (sep === ':') break;
    }
  }
  const mailbox = parseMailbox(text.slice(i));
  if (!mailbox.ok) return mailbox;
  const path: MailboxPath = { kind: 'mailbox', mailbox: mailbox.value, sourceRoute };
  return yes(path);
}

/** RFC 5321 §4.1.2 Mailbox = Local-part "@" ( Domain / address-literal ). */
export function parseMailbox(text: string): Step<Mailbox> {
  let localPart: string;
  let quoted: boolean;
  let at: number;
  if (text.startsWith('"')) {
    const q = parseQuotedString(text);
    if (!q.ok) return q;
    localPart = q.value.content;
    quoted = true;
    at = q.value.end;
    if (text[at] !== '@') return no(at >= text.length ? 'missing domain' : 'junk after quoted local part');
  } else {
    at = text.indexOf('@');
    if (at < 0) return no('missing domain');
    localPart = text.slice(0, at);
    quoted = false;
    if (localPart === '') return no('empty local part');
    if (/[()]/.test(localPart)) return no('comment in address');
    if (!isDotAtom(localPart)) return no('invalid local part');
  }
  if (localPart === '') return no('empty local part');
  if (utf8Length(text.slice(0, at)) > MAX_LOCAL_PART_OCTETS) return no('local part longer than 64 octets');
  const rawDomain = text.slice(at + 1);
  if (rawDomain.includes('@')) return no('more than one @');
  if (rawDomain === '') return no('missing domain');
  if (/[()]/.test(rawDomain)) return no('comment in address');
  const d = normalizeDomain(rawDomain);
  if (!d.ok) return no(d.reason);
  return yes({ localPart, quoted, domain: d.domain, domainKind: d.kind });
}

/** RFC 5321 §4.1.2 Quoted-string starting at text[0]; returns the unescaped content and the index after it. */
function parseQuotedString(text: string): Step<{ content: string; end: number }> {
  let content = '';
  let i = 1;
  while (i < text.length) {
    const cp = text.codePointAt(i) ?? 0;
    const ch = String.fromCodePoint(cp);
    if (ch === '"') return yes({ content, end: i + 1 });
    if (ch === '\\') {
      // quoted-pairSMTP = %d92 %d32-126
      const next = text.charCodeAt(i + 1);
      if (!(next >= 32 && next <= 126)) return no('invalid quoted-pair');
      content += text[i + 1];
      i += 2;
      continue;
    }
    // qtextSMTP = %d32-33 / %d35-91 / %d93-126 / UTF8-non-ascii (RFC 6531 §3.3)
    if (cp >= 0x80 ? !isUtf8NonAsciiText(cp) : cp < 32 || cp > 126) return no('invalid character in quoted local part');
    content += ch;
    i += ch.length;
  }
  return no('unterminated quoted-string');
}

const PARAM_KEYWORD = /^[A-Za-z0-9][A-Za-z0-9-]*$/;
// RFC 5321 §4.1.2 esmtp-value = 1*(%d33-60 / %d62-126): printable US-ASCII, no '=' or space.
const PARAM_VALUE = /^[\x21-\x3c\x3e-\x7e]+$/;

/** Most commands carry no parameters: one shared (frozen) empty list and one shared answer. */
const NO_PARAMS: Step<EsmtpParam[]> = yes(Object.freeze([]) as unknown as EsmtpParam[]);

function parseParams(rest: string): Step<EsmtpParam[]> {
  if (rest === '' || trimSpaces(rest) === '') return NO_PARAMS;
  const params: EsmtpParam[] = [];
  const seen = new Set<string>();
  for (const word of rest.split(' ')) {
    if (word === '') continue;
    const eq = word.indexOf('=');
    const keyword = (eq < 0 ? word : word.slice(0, eq)).toUpperCase();
    if (!PARAM_KEYWORD.test(keyword)) return no('invalid parameter keyword');
    if (seen.has(keyword)) return no(`duplicate parameter ${keyword}`);
    seen.add(keyword);
    if (eq < 0) {
      params.push({ keyword });
      continue;
    }
    const value = word.slice(eq + 1);
    if (!PARAM_VALUE.test(value)) return no(`invalid value of parameter ${keyword}`);
    params.push({ keyword, value });
  }
  return yes(params);
}

// ── formatting: the canonical form the backend receives (invariant 1) ──

/** "<>" or "<local@domain>"; a source route is dropped (RFC 5321 §3.6.1, App. C). */
export function formatReversePath(p: ReversePath): string {
  return p.kind === 'null' ? '<>' : `<${mailboxAddress(p.mailbox)}>`;
}

/** "<postmaster>" or "<local@domain>"; a source route is dropped (RFC 5321 §3.6.1, App. C). */
export function formatForwardPath(p: ForwardPath): string {
  return p.kind === 'postmaster' ? '<postmaster>' : `<${mailboxAddress(p.mailbox)}>`;
}

/** " KEY=value KEY2" (one leading space per parameter), or "" for none. */
export function formatParams(params: readonly EsmtpParam[]): string {
  if (params.length === 0) return '';
  return params.map((p) => (p.value === undefined ? ` ${p.keyword}` : ` ${p.keyword}=${p.value}`)).join('');
}

/**
 * The local part as it must be written: a Dot-string when it is one, else a Quoted-string with
 * '"' and '\' escaped (RFC 5321 §4.1.2: quoting SHOULD NOT be used when not necessary).
 */
export function formatLocalPart(localPart: string): string {
  return isDotAtom(localPart) ? localPart : `"${localPart.replace(/["\\]/g, '\\$&')}"`;
}

/** "local@domain" in canonical form, for the wire, logs and policy. */
export function mailboxAddress(m: Mailbox): string {
  return `${formatLocalPart(m.localPart)}@${m.domain}`;
}

