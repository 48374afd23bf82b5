/**
 * The admin API: a Fastify instance with health, metrics, rules, bans, sessions, the dry-run check
 * and an OpenAPI document generated from the route schemas. buildAdminServer never listens (the
 * composition root does).
 */
import type { BackendCapabilities } from '../backend/capabilities.js';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { RecipientValidator } from '../directory/recipient-validator.js';
import type { DnsblScorer } from '../dnsbl/dnsbl-scorer.js';
import type { PolicyServices } from '../policy-service/policy-services.js';
import type { BanList } from '../limits/bans.js';
import type { RateLimiter } from '../limits/limiter.js';
import type { Metrics } from '../observability/metrics.js';
import type { RulesService } from '../rules/rules-service.js';
import type { SessionRegistry } from '../session/session-registry.js';
import type { PoolSnapshot } from '../backend/backend-pool.js';
import { bearerAuth, type AuthState } from './bearer-auth.js';
import { AdminTokens, assertAdminSafe } from './admin-tokens.js';
import { formatValidationErrors, installErrorHandlers } from './errors.js';
import { registerBanRoutes } from './routes/ban-routes.js';
import { registerCheckRoutes } from './routes/check-routes.js';
import { registerHealthRoutes } from './routes/health-routes.js';
import { registerRuleRoutes } from './routes/rule-routes.js';
import { registerSessionRoutes } from './routes/session-routes.js';
import { registerAuthRoutes } from './routes/auth-routes.js';
import type { CanarySnapshot } from '../backend/auth-canary.js';
import type { RefusalRing } from '../observability/refusal-ring.js';
import { registerConsole, registerConsoleApiRoutes } from './console/console-routes.js';
import { adminHostGuard, crossSiteGuard } from './browser-guards.js';

export { assertAdminSafe, isLoopbackAddress, ADMIN_TOKEN_ENV, AdminConfigError } from './admin-tokens.js';

export interface AdminDeps {
  config: Config;
  rules: RulesService;
  bans: BanList;
  sessions: SessionRegistry;
  metrics: Metrics;
  validator?: RecipientValidator;
  limiter?: RateLimiter;
  log: Logger;
  env: NodeJS.ProcessEnv;
  checkBackend: () => Promise<boolean>;
  /** Pooled mode: the pool's state now (GET /api/v1/pool); absent in per-client mode. */
  pool?: () => PoolSnapshot;
  /** Recent refusals for the web console (GET /api/v1/refusals). */
  refusals?: RefusalRing;
  /** DNS lists and policy services, for the dry-run check. */
  dnsbl?: DnsblScorer;
  policyServices?: PolicyServices;
  /** The backend's SMTPUTF8/DSN as sessions last saw them, for the dry-run check. */
  backendCaps?: BackendCapabilities;
  /** The auth canary (GET/POST /api/v1/auth/canary, /readyz detail). */
  authCanary?: { snapshot(): CanarySnapshot; run(): Promise<CanarySnapshot> };
}

/** Largest request body (a whole rules section fits many times over). */
export const ADMIN_BODY_LIMIT = 1024 * 1024;

export const ADMIN_API_PREFIX = '/api/v1';

export async function buildAdminServer(deps: AdminDeps): Promise<FastifyInstance> {
  assertAdminSafe(deps.config, deps.env);
  const tokens = AdminTokens.load(deps.config, deps.env);
  const auth: AuthState = { tokens, open: tokens.size === 0 };
  if (auth.open) {
    deps.log.warn(
      { address: deps.config.admin.address },
      'admin API has no token configured: it is open to every local user of this host (set RELAY_GUARD_ADMIN_TOKEN or admin.tokenFile)',
    );
  }

  const app = Fastify({
    loggerInstance: deps.log as FastifyBaseLogger,
    // Changes are logged by the routes with their actor; probes and scrapes are not logged at all.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: ADMIN_BODY_LIMIT,
    // URL-encoded list items (domains, CIDRs, sender rule ids) as path parameters.
    routerOptions: { maxParamLength: 1024 },
    return503OnClosing: true,
    ajv: {
      // Bodies are checked as sent: no coercion, no silent removal, no defaults filled in.
      customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false },
    },
    schemaErrorFormatter: (errors, dataVar) => formatValidationErrors(errors, dataVar),
  });
  installErrorHandlers(app, deps);
  // Before any route and any token check: a foreign Host (DNS rebinding) and a cross-site write are
  // refused whatever the request carries (browser-guards.ts).
  app.addHook('onRequest', adminHostGuard({ hostNames: deps.config.admin.hostNames ?? [], ipLiterals: !auth.open }));
  app.addHook('onRequest', crossSiteGuard());

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'relay-guard admin API',
        description: 'Change relay rules live, manage bans and sessions, and ask why a transaction would be refused.',
        version: '1.0.0',
      },
      components: { securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearerAuth: [] }],
    },
  });

  registerHealthRoutes(app, deps, auth);
  registerConsole(app);
  app.get(`${ADMIN_API_PREFIX}/openapi.json`, { schema: { hide: true } }, async () => app.swagger());

  await app.register(
    async (api) => {
      api.addHook('onRequest', bearerAuth(auth));
      registerRuleRoutes(api, deps);
      registerCheckRoutes(api, deps);
      registerBanRoutes(api, deps);
      registerSessionRoutes(api, deps);
      registerAuthRoutes(api, deps);
      registerConsoleApiRoutes(api, deps, auth);
    },
    { prefix: ADMIN_API_PREFIX },
  );
  return app;
}
