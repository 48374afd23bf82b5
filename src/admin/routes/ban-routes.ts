/** Bans: list, add (address or CIDR, optional duration), remove (URL-encoded target). */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { Duration, parseDuration } from '../../util/duration.js';
import type { AdminDeps } from '../admin-server.js';
import { actorOf } from '../bearer-auth.js';
import { AdminError } from '../errors.js';

const BanBody = Type.Object(
  {
    target: Type.String({ minLength: 1, maxLength: 64, description: 'An IP address or a CIDR network ("192.0.2.7", "198.51.100.0/24")' }),
    duration: Type.Optional(Duration),
    reason: Type.String({ minLength: 1, maxLength: 200, pattern: '^[^\\r\\n\\x00]*$', description: 'Why (logged and listed)' }),
    force: Type.Optional(Type.Boolean({ description: 'Required to ban a network that covers the Internet (wider than IPv4 /8 or IPv6 /16, or an IPv6 transition prefix such as 2002::/16); else 400 RG_ERR_BANS_TOO_WIDE' })),
  },
  { additionalProperties: false },
);
const BanParams = Type.Object({ target: Type.String({ minLength: 1, maxLength: 64 }) });

export function registerBanRoutes(api: FastifyInstance, deps: AdminDeps): void {
  api.get('/bans', { schema: { tags: ['bans'], summary: 'Bans in force' } }, async () => ({ bans: deps.bans.list() }));

  api.post('/bans', { schema: { tags: ['bans'], summary: 'Ban an address or network', body: BanBody } }, async (req) => {
    const body = req.body as { target: string; duration?: string; reason: string; force?: boolean };
    let durationMs: number | undefined;
    if (body.duration !== undefined) {
      try {
        durationMs = parseDuration(body.duration);
      } catch (err) {
        throw new AdminError('RG_ERR_ADMIN_VALIDATION', `body/duration ${(err as Error).message}`);
      }
      if (durationMs <= 0) throw new AdminError('RG_ERR_ADMIN_VALIDATION', 'body/duration must be longer than 0');
    }
    const ban = deps.bans.add({ target: body.target, reason: body.reason, source: 'manual', ...(durationMs === undefined ? {} : { durationMs }), ...(body.force === true ? { force: true } : {}) });
    deps.log.info({ actor: actorOf(req), target: ban.target, expiresAt: ban.expiresAt, reason: ban.reason, ...(body.force === true ? { force: true } : {}) }, 'ban added');
    return { ban };
  });

  api.delete('/bans/:target', { schema: { tags: ['bans'], summary: 'Lift the ban of exactly this target (URL-encoded)', params: BanParams } }, async (req) => {
    const { target } = req.params as { target: string };
    if (!deps.bans.remove(target)) throw new AdminError('RG_ERR_ADMIN_UNKNOWN_BAN', `no ban of ${JSON.stringify(target)}`);
    deps.log.info({ actor: actorOf(req), target }, 'ban removed');
    return { removed: target };
  });
}
