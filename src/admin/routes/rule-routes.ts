/**
 * Rules as resources: one set of routes per section (so every body has its own JSON schema, and the
 * OpenAPI document shows it), a catch-all for unknown sections (404), history, rollback, reload and audit.
 * ETag / If-Match (RFC 9110 §8.8.3, §13.1.1) give optimistic concurrency: the store checks the
 * precondition and writes inside one queue, so a stale writer gets 412 and nothing is lost.
 */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ChangeResult } from '../../rules/rules-store.js';
import { SECTIONS, SECTION_NAMES, type SectionName } from '../../rules/schemas.js';
import type { AdminDeps } from '../admin-server.js';
import { actorOf } from '../bearer-auth.js';
import { AdminError, type ErrorBody } from '../errors.js';

const SectionParams = Type.Object({ section: Type.String() });
const ItemParams = Type.Object({ value: Type.String({ minLength: 1 }) });
const SectionItemParams = Type.Object({ section: Type.String(), value: Type.String() });

const RollbackBody = Type.Object(
  { version: Type.String({ minLength: 1, maxLength: 128, pattern: '^[0-9A-Za-z_-]+$', description: 'A version id from GET /api/v1/rules/history' }) },
  { additionalProperties: false },
);
const ImportBody = Type.Object(
  {
    sections: Type.Record(Type.String({ pattern: '^[a-z-]{1,40}$' }), Type.Unknown(), {
      description: `Section name (${SECTION_NAMES.join(', ')}) → its whole value; each is checked against its section schema`,
    }),
  },
  { additionalProperties: false },
);
const AuditQuery = Type.Object({ limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,6}$', description: 'Newest N entries (1–1000, default 100)' })) });

const IfMatchHeaders = Type.Object({
  'if-match': Type.Optional(Type.String({ description: 'ETag from a previous GET: the change is refused with 412 if the section changed since' })),
});

const ForceQuery = Type.Object({
  force: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')], { description: 'true: allow a change that leaves no accepted domain (409 otherwise)' })),
});

function ifMatchOf(req: FastifyRequest): { ifMatch?: string; force?: boolean } {
  const h = req.headers['if-match'];
  const force = (req.query as { force?: string } | undefined)?.force === 'true' ? { force: true } : {};
  return typeof h === 'string' && h.trim() !== '' ? { ifMatch: h.trim(), ...force } : force;
}

function unknownSection(section: string): never {
  throw new AdminError('RG_ERR_ADMIN_UNKNOWN_SECTION', `unknown rules section ${JSON.stringify(section.slice(0, 64))} (known: ${SECTION_NAMES.join(', ')})`);
}

/** Send a store result: the new value and ETag, or the store's refusal with its status. */
function sendChange(reply: FastifyReply, section: SectionName | undefined, r: ChangeResult): FastifyReply {
  if (!r.ok) {
    const body: ErrorBody = { statusCode: r.status, code: r.code, message: r.message, ...(r.errors ? { errors: r.errors } : {}) };
    return reply.code(r.status).send(body);
  }
  reply.header('etag', r.etag);
  if (section === undefined) return reply.send({ etag: r.etag, version: r.version });
  return reply.send({ section, value: r.snapshot.raw[SECTIONS[section].rawKey], etag: r.etag, version: r.version });
}

export function registerRuleRoutes(api: FastifyInstance, deps: AdminDeps): void {
  const store = deps.rules;

  api.get('/rules', { schema: { tags: ['rules'], summary: 'Every rules section with its ETag' } }, async () => {
    const sections: Record<string, { value: unknown; etag: string }> = {};
    for (const name of SECTION_NAMES) sections[name] = store.getSection(name);
    return { version: store.current().version, sections };
  });

  api.put(
    '/rules',
    {
      schema: {
        tags: ['rules'],
        summary: 'Import several sections as one audited change (relay-guard ctl rules import DIR): validated, open-relay checked, all or nothing; sections not named are kept',
        querystring: ForceQuery,
        body: ImportBody,
      },
    },
    async (req, reply) => {
      const { sections } = req.body as { sections: Record<string, unknown> };
      return sendChange(reply, undefined, await store.importSections(sections, { ...ifMatchOf(req), actor: actorOf(req) }));
    },
  );

  api.get('/fleet', { schema: { tags: ['rules'], summary: 'Every live guard sharing the rules store, with the rules version it enforces and whether it is behind' } }, async () => store.fleet());

  api.get('/rules/history', { schema: { tags: ['rules'], summary: 'Rule set versions, newest first' } }, async () => ({ versions: await store.history() }));

  api.post('/rules/rollback', { schema: { tags: ['rules'], summary: 'Make a previous version current again', body: RollbackBody, querystring: ForceQuery } }, async (req, reply) => {
    const { version } = req.body as { version: string };
    return sendChange(reply, undefined, await store.rollback(version, { ...ifMatchOf(req), actor: actorOf(req) }));
  });

  api.post(
    '/rules/reload',
    { schema: { tags: ['rules'], summary: 'Re-read the rules files now, as SIGHUP does (hand edits); an invalid file leaves the rules in force unchanged' } },
    async (req, reply) => {
      const r = await store.reload(`admin ${actorOf(req)}`);
      if (!r.ok) {
        if (r.errors?.[0]?.code === 'RG_ERR_RULES_STORE_UNAVAILABLE') {
          return reply.code(503).send({ statusCode: 503, code: 'RG_ERR_RULES_STORE_UNAVAILABLE', message: r.errors[0].message } satisfies ErrorBody);
        }
        const body: ErrorBody = { statusCode: 400, code: 'RG_ERR_RULES_INVALID', message: 'rules not reloaded; the rules in force are unchanged', ...(r.errors ? { errors: r.errors } : {}) };
        return reply.code(400).send(body);
      }
      return { version: store.current().version };
    },
  );

  api.get('/audit', { schema: { tags: ['rules'], summary: 'Audit log of rule changes, newest first', querystring: AuditQuery } }, async (req) => {
    const q = req.query as { limit?: string };
    const limit = Math.min(1000, Math.max(1, q.limit === undefined ? 100 : Number(q.limit)));
    return { entries: await store.audit(limit) };
  });

  for (const name of SECTION_NAMES) {
    const spec = SECTIONS[name];
    const tags = ['rules'];
    api.get(`/rules/${name}`, { schema: { tags, summary: `The ${name} section (${spec.description})` } }, async (_req, reply) => {
      const s = store.getSection(name);
      return reply.header('etag', s.etag).send({ section: name, value: s.value, etag: s.etag });
    });

    api.put(
      `/rules/${name}`,
      { schema: { tags, summary: `Replace the whole ${name} section`, headers: IfMatchHeaders, querystring: ForceQuery, body: spec.schema } },
      async (req, reply) => sendChange(reply, name, await store.replaceSection(name, req.body, { ...ifMatchOf(req), actor: actorOf(req) })),
    );

    if (spec.kind === 'list' && spec.itemSchema !== undefined) {
      const body = Type.Object({ value: spec.itemSchema }, { additionalProperties: false });
      api.post(`/rules/${name}`, { schema: { tags, summary: `Add one item to ${name}`, headers: IfMatchHeaders, body } }, async (req, reply) =>
        sendChange(reply, name, await store.addItem(name, (req.body as { value: unknown }).value, { ...ifMatchOf(req), actor: actorOf(req) })),
      );
      api.delete(
        `/rules/${name}/:value`,
        { schema: { tags, summary: `Remove one item (URL-encoded${name === 'senders' ? ' rule id' : ''}) from ${name}`, headers: IfMatchHeaders, querystring: ForceQuery, params: ItemParams } },
        async (req, reply) => sendChange(reply, name, await store.removeItem(name, (req.params as { value: string }).value, { ...ifMatchOf(req), actor: actorOf(req) })),
      );
    } else {
      const notAList = async (): Promise<never> => {
        throw new AdminError('RG_ERR_ADMIN_NOT_A_LIST', `section ${name} is an object: replace it with PUT /api/v1/rules/${name}`);
      };
      api.post(`/rules/${name}`, { schema: { hide: true } }, notAList);
      api.delete(`/rules/${name}/:value`, { schema: { hide: true } }, notAList);
    }
  }

  // Anything else under /rules/ names a section that does not exist.
  const hidden = { hide: true };
  api.get('/rules/:section', { schema: { ...hidden, params: SectionParams } }, async (req) => unknownSection((req.params as { section: string }).section));
  api.put('/rules/:section', { schema: { ...hidden, params: SectionParams } }, async (req) => unknownSection((req.params as { section: string }).section));
  api.post('/rules/:section', { schema: { ...hidden, params: SectionParams } }, async (req) => unknownSection((req.params as { section: string }).section));
  api.delete('/rules/:section/:value', { schema: { ...hidden, params: SectionItemParams } }, async (req) => unknownSection((req.params as { section: string }).section));
}
