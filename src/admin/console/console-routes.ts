/**
 * The web console: static files served by the admin listener at /console/ (no CDN: every byte comes
 * from src/admin/console/assets), and the few API routes only it needs (GET /api/v1/whoami,
 * /api/v1/overview, /api/v1/refusals). Everything else it does goes through the existing /api/v1
 * routes with the same bearer tokens, so the console can do nothing the API does not allow.
 *
 * The page itself holds no data: a browser without a token gets the login form, and every piece of
 * data comes from /api/v1, which answers 401 without a token. The token lives in the tab's
 * sessionStorage and travels only in the Authorization header (never in a URL, never in a cookie):
 * no ambient credential means a cross-site page has nothing to ride on, and the strict CSP (scripts
 * and styles from this origin only, no inline script or style) keeps injected markup inert.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { AdminDeps } from '../admin-server.js';
import { identify, OPEN_ACTOR, type AuthState } from '../bearer-auth.js';
import { AdminError, type ErrorBody } from '../errors.js';
import { ConsoleActivity } from './console-activity.js';

export const CONSOLE_PATH = '/console/';
export { CONSOLE_HEADER } from '../browser-guards.js';

export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};
const ASSET_NAME = /^[a-z0-9][a-z0-9-]*\.(html|js|css|svg)$/;

/** The assets next to this module (dist: copied there by `npm run build`). */
function assetsDir(): string {
  return fileURLToPath(new URL('./assets/', import.meta.url));
}

interface Asset {
  type: string;
  body: Buffer;
}

/** Every asset, read once: the set of servable names is fixed at start (no path from the URL reaches the file system). */
function loadAssets(dir: string): Map<string, Asset> {
  const out = new Map<string, Asset>();
  for (const name of readdirSync(dir)) {
    if (!ASSET_NAME.test(name)) continue;
    const type = TYPES[path.extname(name)];
    if (type) out.set(name, { type, body: readFileSync(path.join(dir, name)) });
  }
  if (!out.has('index.html')) throw new Error(`console assets missing in ${dir}`);
  return out;
}

function secure(reply: FastifyReply): FastifyReply {
  return reply
    .header('content-security-policy', CONSOLE_CSP)
    .header('x-content-type-options', 'nosniff')
    .header('x-frame-options', 'DENY')
    .header('referrer-policy', 'no-referrer')
    .header('cross-origin-opener-policy', 'same-origin')
    .header('cross-origin-resource-policy', 'same-origin')
    .header('cache-control', 'no-store');
}

/** The console pages and files, outside /api/v1 (they hold no data). */
export function registerConsole(app: FastifyInstance): void {
  const assets = loadAssets(assetsDir());
  const hidden = { schema: { hide: true } };
  app.get('/', hidden, async (_req, reply) => secure(reply).redirect(CONSOLE_PATH, 302));
  app.get('/console', hidden, async (_req, reply) => secure(reply).redirect(CONSOLE_PATH, 302));
  const send = (name: string, reply: FastifyReply): FastifyReply => {
    const a = assets.get(name);
    if (!a) {
      const body: ErrorBody = { statusCode: 404, code: 'RG_ERR_ADMIN_NOT_FOUND', message: 'no such console file' };
      return secure(reply).code(404).send(body);
    }
    return secure(reply).type(a.type).send(a.body);
  };
  app.get(CONSOLE_PATH, hidden, async (_req, reply) => send('index.html', reply));
  app.get(`${CONSOLE_PATH}:file`, { schema: { hide: true, params: Type.Object({ file: Type.String({ maxLength: 64 }) }) } }, async (req, reply) =>
    send((req.params as { file: string }).file, reply),
  );
}

const RefusalsQuery = Type.Object(
  {
    client: Type.Optional(Type.String({ maxLength: 256, description: 'Substring of the client address or HELO' })),
    sender: Type.Optional(Type.String({ maxLength: 256, description: 'Substring of MAIL FROM' })),
    recipient: Type.Optional(Type.String({ maxLength: 256, description: 'Substring of RCPT TO' })),
    rule: Type.Optional(Type.String({ maxLength: 128, description: 'Substring of the rule id' })),
    after: Type.Optional(Type.String({ pattern: '^[0-9]{1,15}$', description: 'Only refusals with a larger id' })),
    limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,6}$', description: 'Newest N (default 200, at most the ring size)' })),
  },
  { additionalProperties: false },
);
const RefusalParams = Type.Object({ id: Type.String({ pattern: '^[0-9]{1,15}$' }) });

/** The console's API routes, registered inside /api/v1 (bearer auth applies). */
export function registerConsoleApiRoutes(api: FastifyInstance, deps: AdminDeps, auth: AuthState): void {
  const activity = new ConsoleActivity({
    config: deps.config,
    metrics: deps.metrics,
    sessions: deps.sessions,
    bans: deps.bans,
    refusals: deps.refusals,
    rules: deps.rules,
    pool: deps.pool,
  });
  api.addHook('onReady', async () => activity.start());
  api.addHook('onClose', async () => activity.stop());

  api.get('/whoami', { schema: { tags: ['console'], summary: 'The token this request carries: id and scope (ro, rw)' } }, async (req) => {
    if (auth.open) return { id: OPEN_ACTOR, scope: 'rw', open: true };
    const who = identify(req, auth);
    return { id: who?.id, scope: who?.scope, open: false };
  });

  api.get('/overview', { schema: { tags: ['console'], summary: 'The console\'s "Now": sessions, per-minute counts, top refused clients and rules, backends, pool, limits' } }, async () =>
    activity.overview(),
  );

  api.get('/refusals', { schema: { tags: ['console'], summary: 'Recent refusals, newest first (a bounded in-memory ring: admin.recentRefusals)', querystring: RefusalsQuery } }, async (req) => {
    const ring = deps.refusals;
    if (!ring) return { refusals: [], held: 0, capacity: 0, total: 0 };
    const q = req.query as { client?: string; sender?: string; recipient?: string; rule?: string; after?: string; limit?: string };
    const refusals = ring.list({
      ...(q.client ? { client: q.client } : {}),
      ...(q.sender ? { sender: q.sender } : {}),
      ...(q.recipient ? { recipient: q.recipient } : {}),
      ...(q.rule ? { rule: q.rule } : {}),
      ...(q.after ? { after: Number(q.after) } : {}),
      limit: q.limit === undefined ? 200 : Math.max(1, Number(q.limit)),
    });
    return { refusals, held: ring.size, capacity: ring.capacity, total: ring.total };
  });

  api.get('/refusals/:id', { schema: { tags: ['console'], summary: 'One recent refusal', params: RefusalParams } }, async (req) => {
    const id = Number((req.params as { id: string }).id);
    const r = deps.refusals?.get(id);
    if (!r) throw new AdminError('RG_ERR_ADMIN_NOT_FOUND', `no refusal ${id} in the ring (it holds the most recent ${deps.refusals?.capacity ?? 0})`);
    return { refusal: r };
  });
}
