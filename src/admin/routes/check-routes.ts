/** POST /api/v1/check: the dry run ("why was this refused?"). A read: read-only tokens may call it. */
import type { FastifyInstance } from 'fastify';
import type { AdminDeps } from '../admin-server.js';
import { CheckRequestSchema, dryRunCheck, type CheckRequest } from '../dry-run-check.js';

export function registerCheckRoutes(api: FastifyInstance, deps: AdminDeps): void {
  api.post(
    '/check',
    {
      config: { readOnly: true },
      schema: {
        tags: ['check'],
        summary: 'Dry run of one transaction: verdict, reply, deciding rule and every rule consulted',
        body: CheckRequestSchema,
      },
    },
    async (req) =>
      dryRunCheck(req.body as CheckRequest, {
        config: deps.config,
        rules: deps.rules,
        bans: deps.bans,
        ...(deps.validator ? { validator: deps.validator } : {}),
        ...(deps.dnsbl ? { dnsbl: deps.dnsbl } : {}),
        ...(deps.policyServices ? { policyServices: deps.policyServices } : {}),
        ...(deps.backendCaps ? { backendCaps: deps.backendCaps } : {}),
      }),
  );
}
