/**
 * Telling a backend who the real client is (off by default; Exchange understands neither):
 *  - PROXY protocol v1/v2 (HAProxy's proxy-protocol.txt), written right after connect, before the
 *    greeting is read (the backend must expect it: Postfix smtpd_upstream_proxy_protocol);
 *  - Postfix XCLIENT (XCLIENT_README), sent by the backend provider right after the greeting when
 *    the backend's EHLO advertises it. The client's own EHLO follows, so Postfix records that HELO.
 *    In pooled mode the pool sends it per transaction (backend-pool.ts), with HELO and PROTO.
 *  - Postfix XFORWARD (XFORWARD_README), written right before each MAIL: its attributes last one
 *    transaction, so a pooled backend session can carry a different client each time.
 */
import { isIP } from 'node:net';
import { ehloKeywords } from '../smtp/ehlo.js';
import { formatProxyV1, formatProxyV2, formatProxyV2Local, type ProxyAddresses } from '../net/proxy-protocol.js';
import { isFailure, type BackendFailure, type BackendLink, type MailPreambleCommand } from './backend-link.js';
import type { Reply } from '../smtp/reply.js';
import { sendCommand } from './backend-tls.js';

/** The connection the guard is relaying: the real client and the guard address it reached. */
export interface ClientEndpoint {
  readonly clientIp: string;
  readonly clientPort: number;
  readonly localIp?: string;
  readonly localPort?: number;
}

/** The client a transaction is for, as XFORWARD and pooled XCLIENT describe it. */
export interface ForwardedClient extends ClientEndpoint {
  /** The client's HELO/EHLO name ('' when none is known: sent as [UNAVAILABLE]). */
  readonly helo: string;
  /** The client said EHLO (PROTO=ESMTP) rather than HELO (PROTO=SMTP). */
  readonly esmtp: boolean;
  /** The identity the client authenticated as, when the guard knows it (XCLIENT LOGIN). */
  readonly login?: string;
}

const UNAVAILABLE = '[UNAVAILABLE]';
/** RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF. */
const MAX_LINE = 510;

/** PROXY header for the backend; the destination falls back to the unspecified address of the client's family. */
export function formatProxyPreamble(version: 'v1' | 'v2', c: ClientEndpoint): Buffer {
  const family = isIP(c.clientIp) === 6 ? 'tcp6' : 'tcp4';
  const local = c.localIp?.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1');
  const sameFamily = local !== undefined && (isIP(local) === 6) === (family === 'tcp6');
  const info: ProxyAddresses = {
    family,
    sourceAddress: c.clientIp,
    sourcePort: c.clientPort,
    destAddress: sameFamily ? local : family === 'tcp6' ? '::' : '0.0.0.0',
    destPort: sameFamily ? (c.localPort ?? 0) : 0,
  };
  return version === 'v1' ? formatProxyV1(info) : formatProxyV2(info);
}

/**
 * PROXY header for a connection the guard makes on its own behalf (the readiness probe): v2 LOCAL,
 * which Postfix ≥ 3.5 takes as a heartbeat; v1 has no such command, so the probe names itself (its
 * own socket endpoints) as the client.
 */
export function formatProxyForSelf(version: 'v1' | 'v2', socket: { localAddress?: string | undefined; localPort?: number | undefined; remoteAddress?: string | undefined; remotePort?: number | undefined }): Buffer {
  if (version === 'v2') return formatProxyV2Local();
  return formatProxyPreamble('v1', {
    clientIp: (socket.localAddress ?? '127.0.0.1').replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1'),
    clientPort: socket.localPort ?? 0,
    ...(socket.remoteAddress !== undefined ? { localIp: socket.remoteAddress } : {}),
    ...(socket.remotePort !== undefined ? { localPort: socket.remotePort } : {}),
  });
}

/** RFC 3461 §4 xtext, which XCLIENT attribute values use. */
export function xtext(value: string): string {
  let out = '';
  for (const ch of Buffer.from(value, 'utf8')) {
    out += ch < 33 || ch > 126 || ch === 0x2b || ch === 0x3d ? `+${ch.toString(16).toUpperCase().padStart(2, '0')}` : String.fromCharCode(ch);
  }
  return out;
}

/** Attribute names an EHLO line advertises ("XFORWARD NAME ADDR PROTO HELO"), upper-cased. */
export function advertisedAttributes(params: string | undefined): Set<string> {
  return new Set((params ?? '').toUpperCase().split(/\s+/).filter(Boolean));
}

/** XCLIENT_README / XFORWARD_README: an IPv6 address carries the "IPV6:" prefix, never brackets. */
function addrValue(ip: string): string {
  if (ip === '') return UNAVAILABLE;
  return xtext(isIP(ip) === 6 ? `IPV6:${ip}` : ip);
}

/**
 * "VERB a=b c=d …" lines of at most 512 octets: both READMEs allow the attributes to be sent in
 * several commands when one would be too long.
 */
export function packAttributes(verb: string, attrs: readonly string[]): string[] {
  const lines: string[] = [];
  let line = '';
  for (const a of attrs) {
    if (line !== '' && line.length + 1 + a.length > MAX_LINE) {
      lines.push(line);
      line = '';
    }
    line = line === '' ? `${verb} ${a}` : `${line} ${a}`;
  }
  if (line !== '') lines.push(line);
  return lines;
}

function xclientAttributes(c: ClientEndpoint & Partial<ForwardedClient>, advertised: ReadonlySet<string>): string[] {
  const attrs: string[] = [];
  if (advertised.has('ADDR')) attrs.push(`ADDR=${addrValue(c.clientIp)}`);
  if (advertised.has('PORT')) attrs.push(`PORT=${c.clientPort}`);
  // The guard does no reverse lookup of its own: "[UNAVAILABLE]" tells Postfix so.
  if (advertised.has('NAME')) attrs.push(`NAME=${UNAVAILABLE}`);
  if (c.helo !== undefined && advertised.has('HELO')) attrs.push(`HELO=${c.helo === '' ? UNAVAILABLE : xtext(c.helo)}`);
  if (c.esmtp !== undefined && advertised.has('PROTO')) attrs.push(`PROTO=${c.esmtp ? 'ESMTP' : 'SMTP'}`);
  if (c.login !== undefined && advertised.has('LOGIN')) attrs.push(`LOGIN=${xtext(c.login)}`);
  return attrs;
}

/** "XCLIENT ADDR=… PORT=… NAME=[UNAVAILABLE]" limited to the attributes the backend advertised. */
export function formatXclient(c: ClientEndpoint, advertised: ReadonlySet<string>): string | undefined {
  const attrs = xclientAttributes(c, advertised);
  return attrs.length > 0 ? `XCLIENT ${attrs.join(' ')}` : undefined;
}

/** Pooled mode: XCLIENT lines (ADDR, PORT, NAME, HELO, PROTO, LOGIN as advertised); [] when none applies. */
export function formatXclientLines(c: ForwardedClient, advertised: ReadonlySet<string>): string[] {
  return packAttributes('XCLIENT', xclientAttributes(c, advertised));
}

/**
 * XFORWARD lines (XFORWARD_README): ADDR, PORT, NAME=[UNAVAILABLE], HELO, PROTO and SOURCE=REMOTE,
 * limited to the advertised attributes; [] when none applies. Postfix presets the attributes a
 * client leaves out to "unknown" once any is sent, so all advertised ones are always sent.
 */
export function formatXforward(c: ForwardedClient, advertised: ReadonlySet<string>): string[] {
  const attrs: string[] = [];
  if (advertised.has('NAME')) attrs.push(`NAME=${UNAVAILABLE}`);
  if (advertised.has('ADDR')) attrs.push(`ADDR=${addrValue(c.clientIp)}`);
  if (advertised.has('PORT')) attrs.push(`PORT=${c.clientPort}`);
  if (advertised.has('PROTO')) attrs.push(`PROTO=${c.esmtp ? 'ESMTP' : 'SMTP'}`);
  if (advertised.has('HELO')) attrs.push(`HELO=${c.helo === '' ? UNAVAILABLE : xtext(c.helo)}`);
  if (advertised.has('SOURCE')) attrs.push('SOURCE=REMOTE');
  return packAttributes('XFORWARD', attrs);
}

/**
 * A BackendLink.beforeMail hook: XFORWARD for `clientOf(link)` before each MAIL when the link's
 * backend advertised XFORWARD. The backend answers 250; any other reply goes to `onRefused` and
 * the transaction goes on (the backend just sees the guard). A backend failure reaches the MAIL
 * written after it as well, so the session handles it as a failure at MAIL.
 */
export function xforwardBeforeMail(
  clientOf: (link: BackendLink) => ForwardedClient,
  onRefused: (link: BackendLink, reply: Reply) => void,
): (link: BackendLink) => readonly MailPreambleCommand[] {
  return (link) => {
    const params = link.capabilities.get('XFORWARD');
    if (params === undefined) return [];
    return formatXforward(clientOf(link), advertisedAttributes(params)).map((line) => ({
      verb: 'XFORWARD',
      line,
      onReply: (r) => {
        if (!isFailure(r) && r.code !== 250) onRefused(link, r);
      },
    }));
  };
}

export type XclientResult =
  | { ok: true; sent: boolean; reason?: string }
  | { ok: false; failure: BackendFailure; reason: string };

/** EHLO, then XCLIENT when offered. A refusal leaves the link usable (the backend just sees the guard). */
export async function sendXclient(link: BackendLink, c: ClientEndpoint, ehloName: string): Promise<XclientResult> {
  const ehlo = await sendCommand(link, 'EHLO', `EHLO ${ehloName}`);
  if (isFailure(ehlo)) return { ok: false, failure: ehlo.failure, reason: 'no reply to EHLO' };
  if (ehlo.code !== 250) return { ok: true, sent: false, reason: `EHLO refused (${ehlo.code})` };
  const params = ehloKeywords(ehlo).get('XCLIENT');
  if (params === undefined) return { ok: true, sent: false, reason: 'XCLIENT not offered' };
  const line = formatXclient(c, advertisedAttributes(params));
  if (!line) return { ok: true, sent: false, reason: 'no usable XCLIENT attribute' };
  const r = await sendCommand(link, 'XCLIENT', line);
  if (isFailure(r)) return { ok: false, failure: r.failure, reason: 'no reply to XCLIENT' };
  // Postfix answers 220 (a new greeting); some implementations 250.
  if (r.code >= 200 && r.code < 300) return { ok: true, sent: true };
  return { ok: true, sent: false, reason: `XCLIENT refused (${r.code})` };
}
