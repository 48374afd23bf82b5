/** Live sessions (close one with 421), the backend session pool, and the recipient list reload. */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { AdminDeps } from '../admin-server.js';
import { actorOf } from '../bearer-auth.js';
import { AdminError } from '../errors.js';

const SessionParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) });

export function registerSessionRoutes(api: FastifyInstance, deps: AdminDeps): void {
  api.get('/sessions', { schema: { tags: ['sessions'], summary: 'Live SMTP sessions: client, HELO, sender, state, bytes, age' } }, async () => ({
    sessions: deps.sessions.list(),
  }));

  api.get('/pool', { schema: { tags: ['sessions'], summary: 'Pooled mode: backend sessions (idle, lent, dedicated), clients waiting, sizes' } }, async () =>
    deps.pool ? { enabled: true, ...deps.pool() } : { enabled: false },
  );

  api.delete('/sessions/:id', { schema: { tags: ['sessions'], summary: 'Close a session with 421', params: SessionParams } }, async (req) => {
    const { id } = req.params as { id: string };
    const s = deps.sessions.get(id);
    if (!s) throw new AdminError('RG_ERR_ADMIN_UNKNOWN_SESSION', `no live session ${JSON.stringify(id)}`);
    deps.log.info({ actor: actorOf(req), sessionId: id }, 'session closed by admin');
    s.terminate(`closed by admin (${actorOf(req)})`);
    return { closed: id };
  });

  api.post('/recipients/reload', { schema: { tags: ['recipients'], summary: 'Re-read the recipient list file now' } }, async () => {
    if (!deps.validator) throw new AdminError('RG_ERR_ADMIN_NOT_CONFIGURED', 'recipient validation is not configured');
    const r = await deps.validator.reloadList();
    if (!r.ok) throw new AdminError('RG_ERR_ADMIN_CONFLICT', `recipient list not reloaded, the previous list stays in force: ${r.error ?? 'unreadable'}`);
    return r;
  });
}
