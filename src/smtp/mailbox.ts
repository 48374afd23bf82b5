/**
 * Mailbox helpers: domain normalisation and routing-trick detection. Pure.
 */
import type { ForwardPath, ReversePath, RoutingTrick } from './path.js';

export type NormalizedDomain =
  | { readonly ok: true; readonly domain: string; readonly kind: 'name' | 'ipv4' | 'ipv6' }
  | { readonly ok: false; readonly reason: string };

export function normalizeDomain(raw: string): NormalizedDomain {
  void raw;
  throw new Error('not implemented');
}

export function routingTricks(path: ForwardPath | ReversePath): RoutingTrick[] {
  void path;
  throw new Error('not implemented');
}

export function isDotAtom(s: string): boolean {
  void s;
  throw new Error('not implemented');
}
