/**
 * RFC 5321 §4.1.2 paths (MAIL FROM / RCPT TO arguments) and ESMTP parameters: parse and format.
 * Pure. Owner: codec. Invariant 1: formatPath(parsed) is what the backend receives.
 */
import type { Parsed } from './reply.js';

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

// ── API (implementation below is filled in incrementally) ──

export function parseReversePath(arg: string): Parsed<PathWithParams<ReversePath>> {
  void arg;
  throw new Error('not implemented');
}

export function parseForwardPath(arg: string): Parsed<PathWithParams<ForwardPath>> {
  void arg;
  throw new Error('not implemented');
}

export function formatReversePath(p: ReversePath): string {
  return p.kind === 'null' ? '<>' : `<${mailboxAddress(p.mailbox)}>`;
}

export function formatForwardPath(p: ForwardPath): string {
  return p.kind === 'postmaster' ? '<postmaster>' : `<${mailboxAddress(p.mailbox)}>`;
}

export function formatParams(params: readonly EsmtpParam[]): string {
  return params.map((p) => (p.value === undefined ? ` ${p.keyword}` : ` ${p.keyword}=${p.value}`)).join('');
}

export function mailboxAddress(m: Mailbox): string {
  return `${m.localPart}@${m.domain}`;
}
