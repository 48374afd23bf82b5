/**
 * IP addresses and CIDR networks as bigints: the one parser/formatter of the project (codec, policy,
 * limits, PROXY headers). Pure: no node:net.
 * Parsing is strict (fail closed): no leading zeros in IPv4 octets, no zone ids (parseHostAddress
 * alone drops brackets and zone ids, for addresses that come from sockets).
 */
import { remembered } from './remembered.js';

export type IpFamily = 4 | 6;

export interface IpAddress {
  readonly family: IpFamily;
  readonly value: bigint;
}

export interface IpNetwork {
  readonly family: IpFamily;
  readonly prefix: number;
  /** Network address (host bits zero). */
  readonly network: bigint;
}

const V4_RE = /^(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$/;
const HEXTET_RE = /^[0-9a-fA-F]{1,4}$/;

export function bitsOf(family: IpFamily): number {
  return family === 4 ? 32 : 128;
}

export function parseIPv4(s: string): bigint | undefined {
  const m = V4_RE.exec(s);
  if (!m) return undefined;
  let v = 0n;
  for (let i = 1; i <= 4; i++) {
    const n = Number(m[i]);
    if (n > 255) return undefined;
    v = (v << 8n) | BigInt(n);
  }
  return v;
}

/** RFC 4291 §2.2 text forms, including "::" and an embedded IPv4 tail. */
export function parseIPv6(s: string): bigint | undefined {
  if (s.length === 0 || s.length > 45) return undefined;
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const parseGroups = (part: string, allowV4Tail: boolean): bigint[] | undefined => {
    if (part === '') return [];
    const groups = part.split(':');
    const out: bigint[] = [];
    for (let i = 0; i < groups.length; i++) {
      const g = groups[i] ?? '';
      if (allowV4Tail && i === groups.length - 1 && g.includes('.')) {
        const v4 = parseIPv4(g);
        if (v4 === undefined) return undefined;
        out.push(v4 >> 16n, v4 & 0xffffn);
      } else {
        if (!HEXTET_RE.test(g)) return undefined;
        out.push(BigInt(parseInt(g, 16)));
      }
    }
    return out;
  };
  let groups: bigint[];
  if (halves.length === 2) {
    const head = parseGroups(halves[0] ?? '', false);
    const tail = parseGroups(halves[1] ?? '', true);
    if (!head || !tail || head.length + tail.length > 7) return undefined;
    groups = [...head, ...new Array<bigint>(8 - head.length - tail.length).fill(0n), ...tail];
  } else {
    const all = parseGroups(s, true);
    if (!all || all.length !== 8) return undefined;
    groups = all;
  }
  let v = 0n;
  for (const g of groups) v = (v << 16n) | g;
  return v;
}

/** An IPv4 or IPv6 address in text form (no brackets, no zone). The result is shared: do not modify it. */
export const parseIp: (s: string) => IpAddress | undefined = remembered(parseIpUncached);

function parseIpUncached(s: string): IpAddress | undefined {
  const v4 = parseIPv4(s);
  if (v4 !== undefined) return { family: 4, value: v4 };
  const v6 = parseIPv6(s);
  if (v6 !== undefined) return { family: 6, value: v6 };
  return undefined;
}

/** An IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 §2.5.5.2) is the IPv4 address it carries. */
export function unmapIPv4(a: IpAddress): IpAddress {
  if (a.family === 6 && a.value >> 32n === 0xffffn) return { family: 4, value: a.value & 0xffffffffn };
  return a;
}

export function maskOf(family: IpFamily, prefix: number): bigint {
  const bits = BigInt(bitsOf(family));
  const all = (1n << bits) - 1n;
  return (all >> BigInt(prefix)) ^ all;
}

export function formatIPv4(v: bigint): string {
  const n = Number(v & 0xffffffffn);
  return `${n >>> 24}.${(n >>> 16) & 0xff}.${(n >>> 8) & 0xff}.${n & 0xff}`;
}

export interface FormatIPv6Options {
  /**
   * Write an IPv4-mapped address (::ffff:0:0/96) as ::ffff:a.b.c.d, as RFC 5952 §5 recommends.
   * Default false: all hex ("::ffff:c000:201"), the form policy has always written.
   */
  readonly mappedAsDottedQuad?: boolean;
}

/** RFC 5952 §4 canonical text: lower case, longest run (≥ 2) of zero groups compressed, first on ties. */
export function formatIPv6(v: bigint, options: FormatIPv6Options = {}): string {
  if (options.mappedAsDottedQuad && v >> 32n === 0xffffn) return `::ffff:${formatIPv4(v & 0xffffffffn)}`;
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((v >> BigInt(i * 16)) & 0xffffn));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestLen < 2) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

export function formatIp(a: IpAddress, options: FormatIPv6Options = {}): string {
  return a.family === 4 ? formatIPv4(a.value) : formatIPv6(a.value, options);
}

/**
 * An address as sockets and people write a host: an IPv6 address may come in [brackets] and with a
 * %zone id (RFC 4007 §11), both dropped; an IPv4-mapped address comes back as the IPv4 address it
 * carries, so "::ffff:192.0.2.1" and "192.0.2.1" are one host. Limits and bans key on this.
 */
export const parseHostAddress: (s: string) => IpAddress | undefined = remembered(parseHostAddressUncached);

function parseHostAddressUncached(s: string): IpAddress | undefined {
  if (!s.includes(':')) {
    const v4 = parseIPv4(s);
    return v4 === undefined ? undefined : { family: 4, value: v4 };
  }
  let t = s.startsWith('[') && s.endsWith(']') ? s.slice(1, -1) : s;
  const zone = t.indexOf('%');
  if (zone >= 0) t = t.slice(0, zone);
  const v6 = parseIPv6(t);
  return v6 === undefined ? undefined : unmapIPv4({ family: 6, value: v6 });
}

/** Network-order bytes (4 for IPv4, 16 for IPv6, as in a PROXY v2 header) → address. */
export function ipFromBytes(b: Uint8Array): IpAddress | undefined {
  if (b.length !== 4 && b.length !== 16) return undefined;
  let v = 0n;
  for (const byte of b) v = (v << 8n) | BigInt(byte);
  return { family: b.length === 4 ? 4 : 6, value: v };
}

/** Address → network-order bytes (4 or 16). */
export function ipToBytes(a: IpAddress): Uint8Array {
  const out = new Uint8Array(bitsOf(a.family) / 8);
  let v = a.value;
  for (let i = out.length - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

/** Keep the first `prefix` bits (clamped to 0..32 or 0..128, fractions dropped), zero the rest. */
export function maskIp(a: IpAddress, prefix: number): IpAddress {
  const p = Math.max(0, Math.min(bitsOf(a.family), Math.floor(prefix)));
  return { family: a.family, value: a.value & maskOf(a.family, p) };
}

/** True when `a` lies inside `n` (same family only; unmap first if a mapped address should match IPv4). */
export function ipInNetwork(a: IpAddress, n: IpNetwork): boolean {
  return a.family === n.family && (a.value & maskOf(n.family, n.prefix)) === n.network;
}

export type ParsedNetwork = { ok: true; network: IpNetwork } | { ok: false; reason: string };

/**
 * Parse "addr" or "addr/len". A bare address is a host route of its own family: /32 for IPv4,
 * /128 for IPv6 (never /32 for an IPv6 entry, the Haraka bug). Host bits must be zero.
 * An IPv6 entry inside ::ffff:0:0/96 becomes the IPv4 network it maps.
 */
export function parseNetwork(s: string): ParsedNetwork {
  const slash = s.indexOf('/');
  const addrText = slash < 0 ? s : s.slice(0, slash);
  const addr = parseIp(addrText);
  if (!addr) return { ok: false, reason: `${JSON.stringify(addrText)} is not an IPv4 or IPv6 address` };
  const bits = bitsOf(addr.family);
  let prefix = bits;
  if (slash >= 0) {
    const lenText = s.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(lenText) || Number(lenText) > bits) {
      return { ok: false, reason: `bad prefix length ${JSON.stringify(lenText)} (0 to ${bits} for IPv${addr.family})` };
    }
    prefix = Number(lenText);
  }
  const mask = maskOf(addr.family, prefix);
  const network = addr.value & mask;
  if (network !== addr.value) {
    const suggestion = `${formatIp({ family: addr.family, value: network })}/${prefix}`;
    return { ok: false, reason: `${s} has host bits set; did you mean ${suggestion}?` };
  }
  if (addr.family === 6 && prefix >= 96 && network >> 32n === 0xffffn) {
    return { ok: true, network: { family: 4, prefix: prefix - 96, network: network & 0xffffffffn } };
  }
  return { ok: true, network: { family: addr.family, prefix, network } };
}

export function formatNetwork(n: IpNetwork): string {
  return `${formatIp({ family: n.family, value: n.network })}/${n.prefix}`;
}
