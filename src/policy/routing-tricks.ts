/**
 * Policy's own detection of sender-specified routing in a recipient (Postfix allow_untrusted_routing
 * = no). Works on the parsed Mailbox, whose local part is already unquoted and unescaped, so
 * "bob@evil"@ours, bob\@evil@ours and bob%evil@ours all show their routing characters here.
 */
import type { ForwardPath, Mailbox, RoutingTrick } from '../smtp/path.js';

/** Exchange encapsulation: IMCEASMTP-…, IMCEAEX-…, IMCEAX400-…, IMCEANOTES-… (any IMCEA<type>- prefix). */
const IMCEA_RE = /^imcea[a-z0-9]*-/i;

/** Routing tricks other than encapsulation: source route (RFC 5321 §4.1.2, Appendix C), %, !, @ in the local part. */
export function sourceRoutingTricks(path: ForwardPath): RoutingTrick[] {
  if (path.kind !== 'mailbox') return [];
  const found: RoutingTrick[] = [];
  if (path.sourceRoute.length > 0) found.push('source-route');
  const local = path.mailbox.localPart;
  if (local.includes('%')) found.push('percent'); // the "percent hack" (RFC 1123 §5.2.16)
  if (local.includes('!')) found.push('bang'); // UUCP bang path
  if (local.includes('@')) found.push('at-in-local-part');
  return found;
}

export function isEncapsulatedAddress(m: Mailbox): boolean {
  return IMCEA_RE.test(m.localPart);
}
