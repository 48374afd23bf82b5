/**
 * The backend leg's STARTTLS (RFC 3207), run by the backend provider right after the greeting so the
 * session never knows: EHLO <guard hostname> → STARTTLS (only when offered) → TLS handshake. The
 * client's own EHLO then reaches the backend over TLS, which is the new EHLO RFC 3207 §4.2 requires.
 */
import { isIP } from 'node:net';
import type tls from 'node:tls';
import { ehloKeywords } from '../smtp/ehlo.js';
import type { Reply } from '../smtp/reply.js';
import { isFailure, type BackendFailure, type BackendLink } from './backend-link.js';

export interface BackendTlsOptions {
  /** Name the guard gives in its own EHLO. */
  readonly ehloName: string;
  /** PEM CA bundle for the backend's certificate (self-signed legacy servers); system CAs when absent. */
  readonly ca?: string | Buffer;
  readonly rejectUnauthorized: boolean;
  readonly handshakeTimeoutMs: number;
}

export type BackendTlsResult =
  | { ok: true; tls: true }
  /** The backend did not offer STARTTLS (or refused it): the link stays plaintext and usable. */
  | { ok: true; tls: false; reason: string }
  /** The handshake failed (bad certificate, timeout): the link is closed. */
  | { ok: false; failure: BackendFailure; reason: string };

/** One command and its reply, as a promise. */
export function sendCommand(link: BackendLink, verb: string, line: string): Promise<Reply | { failure: BackendFailure }> {
  return new Promise((resolve) => link.send(verb, Buffer.from(`${line}\r\n`, 'latin1'), resolve));
}

export async function startBackendTls(link: BackendLink, opts: BackendTlsOptions): Promise<BackendTlsResult> {
  const ehlo = await sendCommand(link, 'EHLO', `EHLO ${opts.ehloName}`);
  if (isFailure(ehlo)) return { ok: false, failure: ehlo.failure, reason: 'no reply to EHLO' };
  if (ehlo.code !== 250) return { ok: true, tls: false, reason: `EHLO refused (${ehlo.code})` };
  if (!ehloKeywords(ehlo).has('STARTTLS')) return { ok: true, tls: false, reason: 'STARTTLS not offered' };
  const go = await sendCommand(link, 'STARTTLS', 'STARTTLS');
  if (isFailure(go)) return { ok: false, failure: go.failure, reason: 'no reply to STARTTLS' };
  if (go.code !== 220) return { ok: true, tls: false, reason: `STARTTLS refused (${go.code})` };
  const host = link.target.host;
  const options: tls.ConnectionOptions = {
    host,
    rejectUnauthorized: opts.rejectUnauthorized,
    ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
    // SNI only carries host names (RFC 6066 §3); Node checks an IP target against IP SANs.
    ...(isIP(host) === 0 ? { servername: host } : {}),
  };
  const err = await link.startTls(options, opts.handshakeTimeoutMs);
  if (err !== undefined) return { ok: false, failure: 'protocol', reason: err };
  return { ok: true, tls: true };
}
