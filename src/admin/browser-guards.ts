/**
 * What the admin listener believes about a request before any token is looked at (issue 16 item 3):
 *
 * 1. The Host header must name this listener: a loopback literal (127.0.0.0/8, [::1]), `localhost`,
 *    a configured admin host name (admin.hostNames, --admin-host-name), or — only when a token is
 *    configured — any IP literal. Anything else is DNS rebinding (a page of evil.test whose name
 *    now resolves to 127.0.0.1 sends Host: evil.test) and gets 421 RG_ERR_ADMIN_HOST, token or not.
 *    An IP literal can never be rebound (rebinding needs a name), so with a token the pod IP that a
 *    Kubernetes probe or a Prometheus scrape puts in Host is accepted with no exemption.
 * 2. A state-changing request that a browser sends must come from this origin and carry the
 *    console header: Sec-Fetch-Site other than same-origin/none, a foreign or opaque Origin, or a
 *    browser request without x-relay-guard-console → 403 RG_ERR_ADMIN_CROSS_SITE, token or not.
 *    curl and `relay-guard ctl` send neither header and are not affected.
 */
import { isIP } from 'node:net';
import type { onRequestHookHandler } from 'fastify';
import { isLoopbackAddress } from './admin-tokens.js';
import type { ErrorBody } from './errors.js';

/** Sent by the console on every API request; a cross-site page cannot add it without a CORS preflight, which this server never grants. */
export const CONSOLE_HEADER = 'x-relay-guard-console';

/** A Host header split into host and port: "[::1]:8025" → "::1"; undefined when malformed. */
export function hostOfHeader(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const h = header.trim().toLowerCase();
  if (h.length === 0 || h.length > 300) return undefined;
  const bracket = /^\[([0-9a-f:.]+)\](?::([0-9]{1,5}))?$/.exec(h);
  if (bracket) return isIP(bracket[1]!) === 6 ? bracket[1]! : undefined;
  const plain = /^([a-z0-9._-]+)(?::([0-9]{1,5}))?$/.exec(h);
  if (!plain) return undefined;
  return plain[1]!.replace(/\.$/, '');
}

export interface HostPolicy {
  /** Extra names (lower case, no trailing dot) a browser or a scraper may use for this listener. */
  readonly hostNames: readonly string[];
  /** A token is configured: any IP literal is accepted (probes and scrapes by pod IP). */
  readonly ipLiterals: boolean;
}

/** Why this Host is refused, or undefined when it names this listener. */
export function hostRefusal(header: string | undefined, policy: HostPolicy): string | undefined {
  const host = hostOfHeader(header);
  if (host === undefined) return header === undefined ? 'a request without a Host header' : 'a malformed Host header';
  if (host === 'localhost' || isLoopbackAddress(host)) return undefined;
  if (isIP(host) !== 0) return policy.ipLiterals ? undefined : `Host ${host} is not a loopback address (with no admin token only loopback names are served)`;
  if (policy.hostNames.includes(host)) return undefined;
  return `Host ${JSON.stringify(host.slice(0, 100))} is not a name of this admin listener (add it to admin.hostNames or --admin-host-name)`;
}

export function adminHostGuard(policy: HostPolicy): onRequestHookHandler {
  const names = { ...policy, hostNames: policy.hostNames.map((n) => n.toLowerCase().replace(/\.$/, '')) };
  return async function refuseForeignHost(req, reply) {
    const why = hostRefusal(req.headers.host, names);
    if (why === undefined) return;
    req.log.warn({ host: String(req.headers.host ?? '').slice(0, 100), method: req.method, url: req.url.split('?')[0]?.slice(0, 100) }, 'admin request refused: foreign host');
    const body: ErrorBody = { statusCode: 421, code: 'RG_ERR_ADMIN_HOST', message: `misdirected request: ${why}` };
    return reply.code(421).send(body);
  };
}

const SAFE_METHODS = ['GET', 'HEAD', 'OPTIONS'];

/** Cross-site protection of every state-changing request (all routes, token or not). */
export function crossSiteGuard(): onRequestHookHandler {
  return async function refuseCrossSite(req, reply) {
    if (SAFE_METHODS.includes(req.method)) return;
    const site = req.headers['sec-fetch-site'];
    const origin = req.headers.origin;
    if (site === undefined && origin === undefined) return;
    let why: string | undefined;
    if (site !== undefined && site !== 'same-origin' && site !== 'none') why = `a ${String(site)} request`;
    else if (origin !== undefined && origin !== 'null' && !sameHost(origin, req.headers.host)) why = 'a request from another origin';
    else if (origin === 'null') why = 'a request from an opaque origin';
    else if (site !== undefined && req.headers[CONSOLE_HEADER] !== '1') why = `a browser request without the ${CONSOLE_HEADER} header`;
    if (why === undefined) return;
    req.log.warn({ site, origin: typeof origin === 'string' ? origin.slice(0, 100) : undefined, method: req.method }, 'admin request refused: cross-site');
    const body: ErrorBody = { statusCode: 403, code: 'RG_ERR_ADMIN_CROSS_SITE', message: `cross-site protection: ${why} may not change anything` };
    return reply.code(403).send(body);
  };
}

function sameHost(origin: string, host: string | undefined): boolean {
  try {
    // Both through URL, so a default port ("localhost:80" and "http://localhost") compares equal.
    return host !== undefined && new URL(origin).host === new URL(`http://${host}`).host;
  } catch {
    return false;
  }
}
