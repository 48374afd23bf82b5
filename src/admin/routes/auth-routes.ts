/** The auth canary (issue 16): GET its state, POST to run one now. */
import type { FastifyInstance } from 'fastify';
import type { AdminDeps } from '../admin-server.js';
import { actorOf } from '../bearer-auth.js';
import { AdminError } from '../errors.js';

export function registerAuthRoutes(api: FastifyInstance, deps: AdminDeps): void {
  api.get(
    '/auth/canary',
    { schema: { tags: ['auth'], summary: 'Auth canary: does the backend accept random credentials? While it does, AUTH grants no relay' } },
    async () => {
      if (!deps.authCanary) throw new AdminError('RG_ERR_ADMIN_NOT_CONFIGURED', 'the auth canary is not available');
      return deps.authCanary.snapshot();
    },
  );

  api.post(
    '/auth/canary',
    { schema: { tags: ['auth'], summary: 'Run the auth canary now (a login with random credentials on a backend session of its own); answers with the state after the run' } },
    async (req) => {
      if (!deps.authCanary) throw new AdminError('RG_ERR_ADMIN_NOT_CONFIGURED', 'the auth canary is not available');
      const snap = deps.authCanary.snapshot();
      if (!snap.enabled) throw new AdminError('RG_ERR_ADMIN_NOT_CONFIGURED', 'the auth canary is off (authCanary.enabled: false, or no listener with auth: relay)');
      deps.log.info({ actor: actorOf(req) }, 'auth canary run requested');
      return deps.authCanary.run();
    },
  );
}
