/**
 * Networks that cover the Internet: what a relay network may never be, and what a manual ban may
 * only be with an explicit force flag.
 *
 * Wider than IPv4 /8 or IPv6 /16 is the old rule. IPv6 also has transition prefixes that carry an
 * IPv4 address inside them (RFC 3056 6to4, RFC 4380 Teredo, RFC 6052 NAT64, RFC 4291 mapped): a
 * /16 such as 2002::/16 passes the length test yet stands for every IPv4 host. So an IPv6 network
 *  - that contains one of these prefixes (2002::/16 itself, 2000::/3, ::/0, 2001::/16, …), or
 *  - that lies inside one and leaves fewer than 8 bits of the embedded IPv4 address fixed
 *    (2002::/20 = 6to4 for 0.0.0.0/4; 2001:0:c000:201::/64 = every Teredo client of one server)
 * is as wide as IPv4 /0 … /7 and is refused the same way.
 */
import { formatNetwork, maskOf, type IpNetwork } from '../util/ip-address.js';

/** Narrowest prefix that is still "too wide" is one less than these. */
export const MIN_NETWORK_PREFIX: Readonly<Record<4 | 6, number>> = { 4: 8, 6: 16 };

interface TransitionPrefix {
  readonly name: string;
  readonly network: bigint;
  readonly prefix: number;
  /** First bit (from the left, of 128) of the client's IPv4 address inside an address of this prefix. */
  readonly ipv4At: number;
}

const v6 = (hextets: number[]): bigint => hextets.reduce((acc, h, i) => acc | (BigInt(h) << BigInt(112 - 16 * i)), 0n);

/** IPv6 prefixes whose addresses embed an IPv4 address (the client's), and where it sits. */
export const TRANSITION_PREFIXES: readonly TransitionPrefix[] = Object.freeze([
  // RFC 4291 §2.5.5.2: IPv4-mapped ::ffff:a.b.c.d
  { name: 'IPv4-mapped ::ffff:0:0/96', network: v6([0, 0, 0, 0, 0, 0xffff, 0, 0]), prefix: 96, ipv4At: 96 },
  // RFC 4291 §2.5.5.1 (deprecated): IPv4-compatible ::a.b.c.d
  { name: 'IPv4-compatible ::/96', network: 0n, prefix: 96, ipv4At: 96 },
  // RFC 2765 SIIT: IPv4-translated ::ffff:0:a.b.c.d
  { name: 'IPv4-translated ::ffff:0:0:0/96', network: v6([0, 0, 0, 0, 0xffff, 0, 0, 0]), prefix: 96, ipv4At: 96 },
  // RFC 6052: the well-known NAT64 prefix
  { name: 'NAT64 64:ff9b::/96', network: v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]), prefix: 96, ipv4At: 96 },
  // RFC 8215: local-use NAT64 (operators embed at /48…/96; judged as if at /96, the strictest)
  { name: 'local NAT64 64:ff9b:1::/48', network: v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]), prefix: 48, ipv4At: 96 },
  // RFC 3056: 6to4, 2002:a.b.c.d::/48
  { name: '6to4 2002::/16', network: v6([0x2002, 0, 0, 0, 0, 0, 0, 0]), prefix: 16, ipv4At: 16 },
  // RFC 4380: Teredo 2001:0:<server v4>:<flags>:<port>:<client v4, inverted>
  { name: 'Teredo 2001::/32', network: v6([0x2001, 0, 0, 0, 0, 0, 0, 0]), prefix: 32, ipv4At: 96 },
]);

/**
 * Why `n` covers the Internet (or every IPv4 host through a transition prefix), or undefined when it
 * is narrow enough. IPv4-mapped entries are expected to come in already unmapped (parseNetwork does).
 */
export function internetWideReason(n: IpNetwork): string | undefined {
  const min = MIN_NETWORK_PREFIX[n.family];
  if (n.prefix < min) return `${formatNetwork(n)} is wider than /${min} for IPv${n.family}`;
  if (n.family === 4) return undefined;
  for (const t of TRANSITION_PREFIXES) {
    if (n.prefix <= t.prefix) {
      // n contains t?
      if ((t.network & maskOf(6, n.prefix)) === n.network) return `${formatNetwork(n)} covers the ${t.name} transition prefix: every IPv4 host`;
      continue;
    }
    // n inside t: how many bits of the embedded IPv4 address does it fix?
    if ((n.network & maskOf(6, t.prefix)) !== t.network) continue;
    const ipv4Bits = Math.max(0, Math.min(32, n.prefix - t.ipv4At));
    if (ipv4Bits < MIN_NETWORK_PREFIX[4]) {
      return `${formatNetwork(n)} lies in the ${t.name} transition prefix and stands for IPv4 /${ipv4Bits}, wider than /${MIN_NETWORK_PREFIX[4]}`;
    }
  }
  return undefined;
}
