/**
 * Configuration of DNS block and allow lists (relay-guard.yaml `dnsbl`) and of the resolver the
 * guard asks (`dns`). Postscreen's model: every list that lists the client adds its weight (negative
 * for an allow list); a score at or above the threshold refuses the client at connect.
 */
import { Type, type Static } from '@sinclair/typebox';
import { Duration } from '../util/duration.js';

const Zone = Type.String({ minLength: 1, maxLength: 200, pattern: '^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\\.?$' });

export const DnsblListSchema = Type.Object(
  {
    zone: Type.String({ ...Zone, description: 'the list\'s DNS zone, e.g. zen.spamhaus.org' }),
    weight: Type.Integer({ minimum: -1000, maximum: 1000, default: 1, description: 'added to the score when the list answers (negative: an allow list)' }),
    match: Type.Optional(Type.String({ maxLength: 200, description: 'postscreen filter on the A records, e.g. 127.0.0.[2..11] (default: any 127.x answer but 127.255.255.x)' })),
  },
  { additionalProperties: false },
);

export const DnsblSchema = Type.Object(
  {
    threshold: Type.Integer({ minimum: 1, maximum: 100000, default: 1, description: 'refuse at connect when the score reaches this' }),
    lists: Type.Array(DnsblListSchema, { minItems: 1, maxItems: 64 }),
    reply: Type.Optional(Type.String({ minLength: 1, maxLength: 400, pattern: '^[\\x20-\\x7e]*$', description: 'reply text; {client} and {zone} are replaced (default names neither list nor score: "Service unavailable; client [{client}] blocked using {zone}")' })),
    listeners: Type.Optional(Type.Array(Type.String({ maxLength: 63 }), { description: 'listener names whose clients are scored (default: every mx listener; never score submission clients on dynamic addresses)' })),
    cacheSize: Type.Integer({ minimum: 1, maximum: 10_000_000, default: 100000, description: 'answers kept (bounded LRU)' }),
    minTtl: Type.Optional(Duration),
    maxTtl: Type.Optional(Duration),
  },
  { additionalProperties: false },
);

export const DnsSchema = Type.Object(
  {
    servers: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 300 }), { minItems: 1, maxItems: 8, description: 'HOST or HOST:PORT ([v6]:PORT); default: the system resolver' })),
    timeout: Duration,
  },
  { additionalProperties: false },
);

export type DnsblConfig = Static<typeof DnsblSchema>;
export type DnsblListConfig = Static<typeof DnsblListSchema>;
export type DnsConfig = Static<typeof DnsSchema>;

export const DEFAULT_DNS: DnsConfig = { timeout: '5s' };
