/**
 * Routes outside /api/v1 auth: /healthz (the process answers), /readyz (rules loaded and a backend
 * reachable: what a load balancer or Kubernetes probe asks), /metrics (Prometheus text; a token is
 * needed only with admin.metricsAuth).
 */
import type { FastifyInstance } from 'fastify';
import type { AdminDeps } from '../admin-server.js';
import { identify, type AuthState } from '../bearer-auth.js';
import type { ErrorBody } from '../errors.js';

export function registerHealthRoutes(app: FastifyInstance, deps: AdminDeps, auth: AuthState): void {
  app.get('/healthz', { schema: { tags: ['health'], summary: 'The process is alive', security: [] } }, async () => ({ status: 'ok' }));

  app.get('/readyz', { schema: { tags: ['health'], summary: 'Rules are loaded and a backend answers', security: [] } }, async (_req, reply) => {
    const reasons: string[] = [];
    try {
      deps.rules.current();
    } catch {
      reasons.push('rules not loaded');
    }
    let backend = false;
    try {
      backend = await deps.checkBackend();
    } catch (err) {
      deps.log.debug({ err }, 'readiness backend check failed');
    }
    if (!backend) reasons.push('no backend reachable');
    // Detail, not a readiness condition: a tripped canary stops AUTH relaying, not the mail flow.
    const detail = authCanaryDetail(deps);
    return reasons.length === 0 ? { status: 'ready', ...detail } : reply.code(503).send({ status: 'not ready', reasons, ...detail });
  });

  app.get('/metrics', { schema: { tags: ['health'], summary: 'Prometheus metrics (text exposition format)' } }, async (req, reply) => {
    if (deps.config.admin.metricsAuth && !auth.open) {
      const who = identify(req, auth);
      if (!who) {
        const body: ErrorBody = { statusCode: 401, code: 'RG_ERR_ADMIN_UNAUTHORIZED', message: 'a bearer token is required for /metrics' };
        return reply.code(401).header('www-authenticate', 'Bearer realm="relay-guard"').send(body);
      }
    }
    const register = deps.metrics.register;
    const text = await register.metrics();
    return reply.header('content-type', register.contentType).send(text);
  });
}

/** /readyz detail: the auth canary's state in a few fields (the full state: GET /api/v1/auth/canary). */
function authCanaryDetail(deps: AdminDeps): { authCanary?: { state: string; accepted: boolean; lastRun?: string; lastResult?: string } } {
  const s = deps.authCanary?.snapshot();
  if (!s) return {};
  return {
    authCanary: {
      state: s.state,
      accepted: s.accepted,
      ...(s.lastRun ? { lastRun: s.lastRun.at, lastResult: s.lastRun.result } : {}),
    },
  };
}
