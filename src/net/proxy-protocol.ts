/**
 * PROXY protocol v1 (text) and v2 (binary) headers, as specified by HAProxy's
 * "The PROXY protocol" document (proxy-protocol.txt, versions 1 and 2).
 *
 * Pure: Buffers in, values out; no sockets, timers or logging. The listener feeds the first bytes
 * of a connection to parseProxyHeader() until it answers something other than 'need-more'; the
 * answer never needs more than the v1 or v2 maximum length below.
 */
import { formatIp, ipFromBytes, ipToBytes, parseIPv4, parseIPv6 } from '../util/ip-address.js';

export interface ProxyInfo {
  /**
   * 'proxy': the addresses below are the real client's.
   * 'local': a v2 LOCAL command (health check by the balancer): use the real socket endpoints.
   * 'unknown': v1 "UNKNOWN" or a v2 PROXY with an unspecified/unsupported family: use the socket endpoints.
   */
  command: 'proxy' | 'local' | 'unknown';
  family?: 'tcp4' | 'tcp6';
  /** Canonical text: dotted quad, or RFC 5952 IPv6 (lower case, compressed). */
  sourceAddress?: string;
  sourcePort?: number;
  destAddress?: string;
  destPort?: number;
}

export type ProxyParse =
  | { status: 'need-more' }
  | { status: 'ok'; version: 1 | 2; header: ProxyInfo; consumed: number }
  | { status: 'invalid'; reason: string }
  | { status: 'absent' };

export interface ProxyAddresses {
  family: 'tcp4' | 'tcp6';
  sourceAddress: string;
  sourcePort: number;
  destAddress: string;
  destPort: number;
}

/** proxy-protocol.txt §2.1: a v1 line is at most 107 bytes including the CRLF. */
export const PROXY_V1_MAX_BYTES = 107;
/**
 * Our bound for a whole v2 header (16-byte fixed part + addresses + TLVs). The spec allows up to
 * 16 + 65535; balancers send 16 + 12/36 + a few TLVs. 4096 keeps per-connection memory small.
 */
export const PROXY_V2_MAX_BYTES = 4096;

const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
/** proxy-protocol.txt §2.2: the 12-byte v2 signature. */
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_FIXED_BYTES = 16;

const NEED_MORE: ProxyParse = { status: 'need-more' };
const ABSENT: ProxyParse = { status: 'absent' };
const invalid = (reason: string): ProxyParse => ({ status: 'invalid', reason });

/** Does `buf` start like `sig` (as far as it goes)? */
function matchesPrefix(buf: Buffer, sig: Buffer): boolean {
  const n = Math.min(buf.length, sig.length);
  return buf.subarray(0, n).equals(sig.subarray(0, n));
}

/**
 * Decide what the first bytes of a connection are. 'absent' means they cannot start a PROXY header
 * (a listener that requires one refuses; an optional one passes the bytes on to SMTP).
 */
export function parseProxyHeader(buf: Buffer): ProxyParse {
  if (buf.length === 0) return NEED_MORE;
  if (matchesPrefix(buf, V1_PREFIX)) {
    return buf.length < V1_PREFIX.length ? NEED_MORE : parseV1(buf);
  }
  if (matchesPrefix(buf, V2_SIGNATURE)) {
    return buf.length < V2_SIGNATURE.length ? NEED_MORE : parseV2(buf);
  }
  return ABSENT;
}

// ── v1 ──────────────────────────────────────────────────────────────────────────────────────────

function parseV1(buf: Buffer): ProxyParse {
  const window = buf.subarray(0, PROXY_V1_MAX_BYTES);
  // The line must end in CRLF within 107 bytes; a lone CR or LF before that is malformed (§2.1).
  let end = -1;
  for (let i = V1_PREFIX.length; i < window.length; i++) {
    const c = window[i];
    if (c === 0x0a) return invalid('v1: bare LF');
    if (c === 0x0d) {
      if (i + 1 >= window.length) {
        if (window.length < PROXY_V1_MAX_BYTES) return NEED_MORE;
        return invalid('v1: no CRLF within 107 bytes');
      }
      if (window[i + 1] !== 0x0a) return invalid('v1: bare CR');
      end = i;
      break;
    }
    // Only printable US-ASCII can appear in a v1 line.
    if (c === undefined || c < 0x20 || c > 0x7e) return invalid('v1: non-printable byte');
  }
  if (end < 0) {
    return window.length < PROXY_V1_MAX_BYTES ? NEED_MORE : invalid('v1: no CRLF within 107 bytes');
  }
  const consumed = end + 2;
  const line = window.subarray(V1_PREFIX.length, end).toString('latin1');

  // §2.1: "UNKNOWN" – the receiver ignores everything after it up to the CRLF.
  if (line === 'UNKNOWN' || line.startsWith('UNKNOWN ')) {
    return { status: 'ok', version: 1, header: { command: 'unknown' }, consumed };
  }
  // Exactly one space between fields: split(' ') yields empty strings for doubled spaces.
  const fields = line.split(' ');
  if (fields.length !== 5) return invalid('v1: expected 5 fields separated by single spaces');
  const [proto, src, dst, sport, dport] = fields as [string, string, string, string, string];
  let family: 'tcp4' | 'tcp6';
  if (proto === 'TCP4') family = 'tcp4';
  else if (proto === 'TCP6') family = 'tcp6';
  else return invalid('v1: unknown protocol');

  const srcBytes = parseAddressText(src, family);
  const dstBytes = parseAddressText(dst, family);
  if (!srcBytes) return invalid('v1: bad source address');
  if (!dstBytes) return invalid('v1: bad destination address');
  const sourcePort = parsePortText(sport);
  const destPort = parsePortText(dport);
  if (sourcePort === undefined) return invalid('v1: bad source port');
  if (destPort === undefined) return invalid('v1: bad destination port');
  return {
    status: 'ok',
    version: 1,
    header: {
      command: 'proxy',
      family,
      sourceAddress: formatAddressBytes(srcBytes),
      sourcePort,
      destAddress: formatAddressBytes(dstBytes),
      destPort,
    },
    consumed,
  };
}

/** §2.1: ports are decimal 0..65535; we refuse leading zeros ("025") as HAProxy does. */
function parsePortText(s: string): number | undefined {
  if (!/^(0|[1-9][0-9]{0,4})$/.test(s)) return undefined;
  const n = Number(s);
  return n <= 65535 ? n : undefined;
}

// ── v2 ──────────────────────────────────────────────────────────────────────────────────────────

function parseV2(buf: Buffer): ProxyParse {
  if (buf.length < 13) return NEED_MORE;
  const verCmd = buf[12] ?? 0;
  // §2.2: the high nibble is the version and must be 2; the low nibble is the command.
  if (verCmd >> 4 !== 2) return invalid('v2: unsupported version');
  const cmd = verCmd & 0x0f;
  if (cmd !== 0x0 && cmd !== 0x1) return invalid('v2: unknown command');
  if (buf.length < 14) return NEED_MORE;
  const famProto = buf[13] ?? 0;
  if (!V2_FAMILIES.has(famProto)) return invalid('v2: unknown address family/protocol');
  if (buf.length < V2_FIXED_BYTES) return NEED_MORE;
  const len = buf.readUInt16BE(14);
  const total = V2_FIXED_BYTES + len;
  if (total > PROXY_V2_MAX_BYTES) return invalid('v2: header too long');
  if (buf.length < total) return NEED_MORE;
  const body = buf.subarray(V2_FIXED_BYTES, total);

  // §2.2: LOCAL — the receiver uses the real connection endpoints and ignores the address block.
  if (cmd === 0x0) return { status: 'ok', version: 2, header: { command: 'local' }, consumed: total };

  let header: ProxyInfo;
  let addrLen: number;
  switch (famProto) {
    case 0x11:
    case 0x21: {
      // TCP over IPv4 (4 + 4 + 2 + 2 bytes) or IPv6 (16 + 16 + 2 + 2 bytes).
      const n = famProto === 0x11 ? 4 : 16;
      addrLen = 2 * n + 4;
      if (len < addrLen) return invalid('v2: address block too short');
      header = {
        command: 'proxy',
        family: famProto === 0x11 ? 'tcp4' : 'tcp6',
        sourceAddress: formatAddressBytes(body.subarray(0, n)),
        destAddress: formatAddressBytes(body.subarray(n, 2 * n)),
        sourcePort: body.readUInt16BE(2 * n),
        destPort: body.readUInt16BE(2 * n + 2),
      };
      break;
    }
    case 0x31:
      // AF_UNIX stream: 108 + 108 bytes of paths; no IP to report, so the socket endpoints count.
      addrLen = 216;
      if (len < addrLen) return invalid('v2: address block too short');
      header = { command: 'unknown' };
      break;
    case 0x00:
      // §2.2: UNSPEC with PROXY — the receiver ignores the address information.
      addrLen = 0;
      header = { command: 'unknown' };
      break;
    default:
      // UDP (0x12, 0x22) and unix datagram (0x32) cannot carry an SMTP stream.
      return invalid('v2: protocol is not a stream');
  }
  // §2.2.7: TLVs follow the addresses; we skip them but they must tile the rest exactly.
  // (UNSPEC: the spec says to skip the whole block, TLV structure included.)
  if (famProto !== 0x00 && !tlvsWellFormed(body.subarray(addrLen))) return invalid('v2: malformed TLV');
  return { status: 'ok', version: 2, header, consumed: total };
}

/** §2.2: defined family/protocol bytes; anything else must be rejected by receivers. */
const V2_FAMILIES = new Set([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32]);

function tlvsWellFormed(tlvs: Buffer): boolean {
  let off = 0;
  // Each TLV is at least 3 bytes, so this loop runs at most tlvs.length / 3 times.
  while (off < tlvs.length) {
    if (off + 3 > tlvs.length) return false;
    const vlen = tlvs.readUInt16BE(off + 1);
    off += 3 + vlen;
  }
  return off === tlvs.length;
}

// ── writing (optional outbound PROXY to backends that understand it, e.g. Postfix) ──────────────

/** "PROXY TCP4 src dst sport dport\r\n" (§2.1). Throws on an address that does not fit the family. */
export function formatProxyV1(info: ProxyAddresses): Buffer {
  const src = requireAddress(info.sourceAddress, info.family);
  const dst = requireAddress(info.destAddress, info.family);
  const proto = info.family === 'tcp4' ? 'TCP4' : 'TCP6';
  const line = `PROXY ${proto} ${formatAddressBytes(src)} ${formatAddressBytes(dst)} ${requirePort(info.sourcePort)} ${requirePort(info.destPort)}\r\n`;
  return Buffer.from(line, 'latin1');
}

/** Binary v2 header with the PROXY command and no TLVs (§2.2). Throws on bad input. */
export function formatProxyV2(info: ProxyAddresses): Buffer {
  const src = requireAddress(info.sourceAddress, info.family);
  const dst = requireAddress(info.destAddress, info.family);
  const addrLen = info.family === 'tcp4' ? 12 : 36;
  const out = Buffer.alloc(V2_FIXED_BYTES + addrLen);
  V2_SIGNATURE.copy(out, 0);
  out[12] = 0x21; // version 2, PROXY
  out[13] = info.family === 'tcp4' ? 0x11 : 0x21;
  out.writeUInt16BE(addrLen, 14);
  out.set(src, 16);
  out.set(dst, 16 + src.length);
  out.writeUInt16BE(requirePort(info.sourcePort), 16 + 2 * src.length);
  out.writeUInt16BE(requirePort(info.destPort), 18 + 2 * src.length);
  return out;
}

/** v2 header with the LOCAL command (§2.2): a connection of the proxy's own, e.g. a health check. */
export function formatProxyV2Local(): Buffer {
  const out = Buffer.alloc(V2_FIXED_BYTES);
  V2_SIGNATURE.copy(out, 0);
  out[12] = 0x20; // version 2, LOCAL
  out[13] = 0x00; // UNSPEC, no address block
  return out;
}

function requireAddress(text: string, family: 'tcp4' | 'tcp6'): Uint8Array {
  const b = parseAddressText(text, family);
  if (!b) throw new TypeError(`not a ${family} address: ${JSON.stringify(text).slice(0, 64)}`);
  return b;
}

function requirePort(port: number): number {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`bad port: ${port}`);
  return port;
}

// ── addresses ───────────────────────────────────────────────────────────────────────────────────

/**
 * Strict text → bytes: dotted quad (no leading zeros) for tcp4, RFC 4291 §2.2 text for tcp6
 * (an IPv4-mapped address stays a tcp6 address).
 */
function parseAddressText(s: string, family: 'tcp4' | 'tcp6'): Uint8Array | undefined {
  const v = family === 'tcp4' ? parseIPv4(s) : parseIPv6(s);
  return v === undefined ? undefined : ipToBytes({ family: family === 'tcp4' ? 4 : 6, value: v });
}

/** Bytes → canonical text: dotted quad, or RFC 5952 IPv6 (§5: IPv4-mapped as ::ffff:a.b.c.d). */
function formatAddressBytes(b: Uint8Array): string {
  const a = ipFromBytes(b);
  if (!a) throw new RangeError(`an IP address is 4 or 16 bytes, not ${b.length}`);
  return formatIp(a, { mappedAsDottedQuad: true });
}
