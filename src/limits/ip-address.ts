/**
 * IP addresses as bytes: parse (IPv4, IPv6, IPv4-mapped IPv6), canonical text (RFC 5952), masks.
 * Pure. Limits and bans key and match on these, so "::FFFF:192.0.2.1", "192.0.2.1" and
 * "2001:DB8:0::1" all land on one canonical key per host.
 */

export interface IpAddress {
  readonly family: 4 | 6;
  /** 4 or 16 bytes, network order. */
  readonly bytes: Uint8Array;
}

function parseV4(s: string): Uint8Array | undefined {
  const parts = s.split('.');
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i] ?? '';
    // Decimal only, no leading zeros (an octal-looking "010" is ambiguous between stacks).
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

function parseV6(input: string): Uint8Array | undefined {
  let s = input;
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1);
  const zone = s.indexOf('%');
  if (zone >= 0) s = s.slice(0, zone);
  if (s.length === 0 || s.length > 45) return undefined;
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const groups = (h: string): string[] => (h === '' ? [] : h.split(':'));
  const head = groups(halves[0] ?? '');
  const tail = halves.length === 2 ? groups(halves[1] ?? '') : [];
  const words: number[] = [];
  const all = [...head, ...tail];
  // A trailing dotted quad fills the last two words (RFC 4291 §2.2 form 3).
  let v4: Uint8Array | undefined;
  const last = all[all.length - 1];
  if (last !== undefined && last.includes('.')) {
    v4 = parseV4(last);
    if (!v4) return undefined;
    if (tail.length > 0) tail.pop();
    else head.pop();
  }
  const toWords = (gs: string[]): number[] | undefined => {
    const ws: number[] = [];
    for (const g of gs) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined;
      ws.push(parseInt(g, 16));
    }
    return ws;
  };
  const hw = toWords(head);
  const tw = toWords(tail);
  if (!hw || !tw) return undefined;
  const need = v4 ? 6 : 8;
  if (halves.length === 2) {
    if (hw.length + tw.length > need - 1) return undefined;
    words.push(...hw, ...new Array<number>(need - hw.length - tw.length).fill(0), ...tw);
  } else {
    if (hw.length !== need) return undefined;
    words.push(...hw);
  }
  const out = new Uint8Array(16);
  for (let i = 0; i < words.length; i++) {
    const w = words[i] ?? 0;
    out[i * 2] = w >> 8;
    out[i * 2 + 1] = w & 0xff;
  }
  if (v4) out.set(v4, 12);
  return out;
}

function isV4Mapped(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/**
 * Parse an address. IPv4-mapped IPv6 (::ffff:a.b.c.d, RFC 4291 §2.5.5.2), which is what a dual-stack
 * socket reports for IPv4 clients, comes back as IPv4. Returns undefined for anything else.
 */
export function parseIpAddress(s: string): IpAddress | undefined {
  if (s.includes(':')) {
    const b = parseV6(s);
    if (!b) return undefined;
    if (isV4Mapped(b)) return { family: 4, bytes: b.slice(12) };
    return { family: 6, bytes: b };
  }
  const b = parseV4(s);
  return b ? { family: 4, bytes: b } : undefined;
}

/** Canonical text: dotted quad, or RFC 5952 IPv6 (lower case, no leading zeros, longest zero run as "::"). */
export function formatIpAddress(a: IpAddress): string {
  const b = a.bytes;
  if (a.family === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push(((b[i * 2] ?? 0) << 8) | (b[i * 2 + 1] ?? 0));
  // RFC 5952 §4.2.3: compress the longest run of two or more zero words, the first one on a tie.
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (ws: number[]): string => ws.map((w) => w.toString(16)).join(':');
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLen))}`;
}

/** Keep the first `prefixLen` bits, zero the rest. */
export function maskIpAddress(a: IpAddress, prefixLen: number): IpAddress {
  const bits = a.bytes.length * 8;
  const p = Math.max(0, Math.min(bits, Math.floor(prefixLen)));
  const out = new Uint8Array(a.bytes.length);
  for (let i = 0; i < out.length; i++) {
    const keep = Math.max(0, Math.min(8, p - i * 8));
    out[i] = (a.bytes[i] ?? 0) & ((0xff << (8 - keep)) & 0xff);
  }
  return { family: a.family, bytes: out };
}

/** True when `a` lies inside network/prefixLen (same family only). */
export function ipInNetwork(a: IpAddress, network: IpAddress, prefixLen: number): boolean {
  if (a.family !== network.family) return false;
  const full = Math.floor(prefixLen / 8);
  for (let i = 0; i < full; i++) if (a.bytes[i] !== network.bytes[i]) return false;
  const rest = prefixLen % 8;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return ((a.bytes[full] ?? 0) & mask) === ((network.bytes[full] ?? 0) & mask);
}
