/**
 * Bearer-token check of the admin API (RFC 6750). 401 with WWW-Authenticate when the token is
 * missing or wrong, 403 when a read-only token asks for a write. The token id becomes the actor of
 * rule changes and the audit log.
 */
import type { FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify';
import type { AdminTokens, TokenIdentity } from './admin-tokens.js';
import type { ErrorBody } from './errors.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** A POST that changes nothing (the dry-run check): a read-only token may call it. */
    readOnly?: boolean;
  }
}

export interface AuthState {
  readonly tokens: AdminTokens;
  /** No token configured at all (allowed only on loopback, see assertAdminSafe). */
  readonly open: boolean;
}

/** Actor name used when the API is open (no token configured). */
export const OPEN_ACTOR = 'local';

const identities = new WeakMap<FastifyRequest, TokenIdentity>();

/** Who made this request: the token id, or OPEN_ACTOR. */
export function actorOf(req: FastifyRequest): string {
  return identities.get(req)?.id ?? OPEN_ACTOR;
}

const BEARER_RE = /^Bearer[ \t]+([\x21-\x7e]+)[ \t]*$/i;

function deny(reply: FastifyReply, status: 401 | 403, error: string | undefined, message: string): FastifyReply {
  const challenge = error === undefined ? 'Bearer realm="relay-guard"' : `Bearer realm="relay-guard", error="${error}"`;
  const body: ErrorBody = { statusCode: status, code: status === 401 ? 'RG_ERR_ADMIN_UNAUTHORIZED' : 'RG_ERR_ADMIN_FORBIDDEN', message };
  return reply.code(status).header('www-authenticate', challenge).send(body);
}

/** The identity of the request's bearer token: undefined when absent, null when wrong. */
export function identify(req: FastifyRequest, auth: AuthState): TokenIdentity | undefined | null {
  const header = req.headers.authorization;
  if (header === undefined || header === '') return undefined;
  const m = BEARER_RE.exec(header);
  if (!m?.[1]) return null;
  return auth.tokens.verify(m[1]) ?? null;
}

/** onRequest hook of every /api/v1 route (except the OpenAPI document). */
export function bearerAuth(auth: AuthState): onRequestHookHandler {
  return async function checkBearer(req, reply) {
    if (auth.open) return;
    const who = identify(req, auth);
    if (who === undefined) return deny(reply, 401, undefined, 'a bearer token is required');
    if (who === null) return deny(reply, 401, 'invalid_token', 'the bearer token is not valid');
    identities.set(req, who);
    const write = !['GET', 'HEAD', 'OPTIONS'].includes(req.method) && req.routeOptions.config.readOnly !== true;
    if (write && who.scope !== 'rw') return deny(reply, 403, 'insufficient_scope', `token "${who.id}" is read-only`);
  };
}
