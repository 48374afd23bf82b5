/**
 * Telling a backend who the real client is (off by default; Exchange understands neither):
 *  - PROXY protocol v1/v2 (HAProxy's proxy-protocol.txt), written right after connect, before the
 *    greeting is read (the backend must expect it: Postfix smtpd_upstream_proxy_protocol);
 *  - Postfix XCLIENT (XCLIENT_README), sent by the backend provider right after the greeting when
 *    the backend's EHLO advertises it. The client's own EHLO follows, so Postfix records that HELO.
 */
import { isIP } from 'node:net';
import { ehloKeywords } from '../smtp/ehlo.js';
import { formatProxyV1, formatProxyV2, type ProxyAddresses } from '../net/proxy-protocol.js';
import { isFailure, type BackendFailure, type BackendLink } from './backend-link.js';
import { sendCommand } from './backend-tls.js';

/** The connection the guard is relaying: the real client and the guard address it reached. */
export interface ClientEndpoint {
  readonly clientIp: string;
  readonly clientPort: number;
  readonly localIp?: string;
  readonly localPort?: number;
}

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

/** RFC 3461 §4 xtext, which XCLIENT attribute values use. */
export function xtext(value: string): string {
  let out = '';
  for (const ch of Buffer.from(value, 'utf8')) {
    out += ch < 33 || ch > 126 || ch === 0x2b || ch === 0x3d ? `+${ch.toString(16).toUpperCase().padStart(2, '0')}` : String.fromCharCode(ch);
  }
  return out;
}

/** "XCLIENT ADDR=… PORT=… NAME=[UNAVAILABLE]" limited to the attributes the backend advertised. */
export function formatXclient(c: ClientEndpoint, advertised: ReadonlySet<string>): string | undefined {
  const attrs: string[] = [];
  // XCLIENT_README: IPv6 addresses carry the "IPV6:" prefix.
  if (advertised.has('ADDR')) attrs.push(`ADDR=${xtext(isIP(c.clientIp) === 6 ? `IPV6:${c.clientIp}` : c.clientIp)}`);
  if (advertised.has('PORT')) attrs.push(`PORT=${c.clientPort}`);
  // The guard does no reverse lookup of its own: "[UNAVAILABLE]" tells Postfix so.
  if (advertised.has('NAME')) attrs.push('NAME=[UNAVAILABLE]');
  return attrs.length > 0 ? `XCLIENT ${attrs.join(' ')}` : undefined;
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
  const line = formatXclient(c, new Set(params.toUpperCase().split(/\s+/).filter(Boolean)));
  if (!line) return { ok: true, sent: false, reason: 'no usable XCLIENT attribute' };
  const r = await sendCommand(link, 'XCLIENT', line);
  if (isFailure(r)) return { ok: false, failure: r.failure, reason: 'no reply to XCLIENT' };
  // Postfix answers 220 (a new greeting); some implementations 250.
  if (r.code >= 200 && r.code < 300) return { ok: true, sent: true };
  return { ok: true, sent: false, reason: `XCLIENT refused (${r.code})` };
}
