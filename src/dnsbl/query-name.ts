/**
 * The DNS name a list is asked about a client: the address reversed under the list's zone (RFC 5782
 * §2.1 for IPv4 — 192.0.2.99 → 99.2.0.192.zone; §2.4 for IPv6 — 32 nibbles, least significant first).
 * Pure: no I/O.
 */
import { parseIp, unmapIPv4 } from '../util/ip-address.js';

/** The reversed-address label sequence for a client address, or undefined when it does not parse. */
export function reversedAddress(clientIp: string): string | undefined {
  const parsed = parseIp(clientIp);
  if (!parsed) return undefined;
  const ip = unmapIPv4(parsed);
  if (ip.family === 4) {
    const v = ip.value;
    return [v & 0xffn, (v >> 8n) & 0xffn, (v >> 16n) & 0xffn, (v >> 24n) & 0xffn].map(String).join('.');
  }
  const hex = ip.value.toString(16).padStart(32, '0');
  return [...hex].reverse().join('.');
}

/** Normalise a zone: lower case, no trailing dot. */
export function canonicalZone(zone: string): string {
  return zone.trim().toLowerCase().replace(/\.$/, '');
}

export function queryName(clientIp: string, zone: string): string | undefined {
  const rev = reversedAddress(clientIp);
  return rev === undefined ? undefined : `${rev}.${canonicalZone(zone)}`;
}
