/**
 * Keys under which limits count: the client address, its network prefix, the authenticated user
 * or the envelope sender. Pure.
 */
import { formatIp, maskIp, parseHostAddress } from '../util/ip-address.js';
import type { LimitKeyKind } from './schema.js';

/** Longest user or sender kept in a key; longer values are truncated (RFC 5321 §4.5.3.1.3 paths are ≤ 256). */
const MAX_VALUE_CHARS = 320;

/**
 * Build a limiter key.
 * - `ip`: the canonical address; IPv4-mapped IPv6 counts as its IPv4 address.
 * - `prefix`: the network, `prefixV4` bits for IPv4 (default /24), `prefixV6` for IPv6 (default /64:
 *   one IPv6 subscriber usually owns a whole /64, so per-address limits alone are useless there).
 * - `user`: the authenticated user, case-folded.
 * - `sender`: the envelope sender, case-folded; the null reverse-path is "<>" (RFC 5321 §4.5.5).
 * A value that is not an IP address under `ip`/`prefix` is kept verbatim (capped), never dropped.
 */
export function limiterKey(kind: LimitKeyKind, value: string, prefixV4: number, prefixV6: number): string {
  switch (kind) {
    case 'ip': {
      const a = parseHostAddress(value);
      return `ip:${a ? formatIp(a) : cap(value)}`;
    }
    case 'prefix': {
      const a = parseHostAddress(value);
      if (!a) return `prefix:${cap(value)}`;
      const len = a.family === 4 ? prefixV4 : prefixV6;
      return `prefix:${formatIp(maskIp(a, len))}/${len}`;
    }
    case 'user':
      return `user:${cap(value.trim().toLowerCase())}`;
    case 'sender': {
      const s = value.trim().replace(/^<(.*)>$/, '$1').toLowerCase();
      return `sender:${s === '' ? '<>' : cap(s)}`;
    }
  }
}

function cap(s: string): string {
  return s.length > MAX_VALUE_CHARS ? s.slice(0, MAX_VALUE_CHARS) : s;
}
