/**
 * Schema of rules/limits.yaml: rate limits, concurrency limits and automatic bans.
 * Pure: no I/O. Durations are strings ("30s", "5m", "1h"), src/util/duration.ts.
 */
import { Type, type Static } from '@sinclair/typebox';
import { Duration } from '../util/duration.js';

/** What is counted. `concurrent` counts open connections (released on close); the rest are rates. */
export const LimitEventSchema = Type.Union([
  Type.Literal('connection'),
  Type.Literal('concurrent'),
  Type.Literal('message'),
  Type.Literal('recipient'),
  Type.Literal('relay-denied'),
  Type.Literal('unknown-recipient'),
  Type.Literal('auth-failure'),
  Type.Literal('protocol-error'),
]);
export type LimitEventName = Static<typeof LimitEventSchema>;

/** Who is counted: the client address, its network prefix, the authenticated user, or the envelope sender. */
export const LimitKeySchema = Type.Union([
  Type.Literal('ip'),
  Type.Literal('prefix'),
  Type.Literal('user'),
  Type.Literal('sender'),
]);
export type LimitKeyKind = Static<typeof LimitKeySchema>;

/** What happens when the limit is exceeded. */
export const LimitActionSchema = Type.Union([
  Type.Literal('tempfail'), // 450 4.7.1 for this command
  Type.Literal('close'), // 421 4.7.0 and close
  Type.Literal('tarpit'), // delay, then continue
  Type.Literal('ban'), // 421 4.7.0, close, and ban the client address
]);
export type LimitAction = Static<typeof LimitActionSchema>;

export const LimitReplySchema = Type.Object(
  {
    code: Type.Integer({ minimum: 400, maximum: 599 }),
    enhanced: Type.Optional(Type.String({ pattern: '^[245]\\.[0-9]{1,3}\\.[0-9]{1,3}$' })),
    text: Type.String({ minLength: 1, maxLength: 200, pattern: '^[^\\r\\n]*$' }),
  },
  { additionalProperties: false },
);
export type LimitReply = Static<typeof LimitReplySchema>;

export const LimitRuleSchema = Type.Object(
  {
    id: Type.String({ pattern: '^[a-z0-9]+(-[a-z0-9]+)*$', maxLength: 64, description: 'Stable kebab-case id (metric label `limit`)' }),
    event: LimitEventSchema,
    key: LimitKeySchema,
    limit: Type.Integer({ minimum: 1, maximum: 10_000_000 }),
    window: Type.Optional(Duration),
    action: LimitActionSchema,
    tarpit: Type.Optional(Duration),
    ban: Type.Optional(Duration),
    maxBan: Type.Optional(Duration),
    exemptTrusted: Type.Optional(Type.Boolean()),
    enabled: Type.Optional(Type.Boolean()),
    reply: Type.Optional(LimitReplySchema),
  },
  { additionalProperties: false },
);
export type LimitRule = Static<typeof LimitRuleSchema>;

export const LimitsSchema = Type.Object(
  {
    enabled: Type.Boolean(),
    prefixV4: Type.Integer({ minimum: 8, maximum: 32 }),
    prefixV6: Type.Integer({ minimum: 16, maximum: 128 }),
    limits: Type.Array(LimitRuleSchema, { maxItems: 200 }),
  },
  { additionalProperties: false },
);
export type LimitsRules = Static<typeof LimitsSchema>;

/** Defaults used when a rate limit gives no window. */
export const DEFAULT_WINDOW = '1m';
/** Defaults used when a `tarpit` limit gives no delay, and a `ban` limit no duration. */
export const DEFAULT_TARPIT = '2s';
export const DEFAULT_BAN = '10m';
export const DEFAULT_MAX_BAN = '24h';

/**
 * Shipped defaults (also rules/limits.yaml). Chosen so that legitimate mail never hits them:
 * a busy MTA opens a handful of parallel connections and retries slowly, while harvesters,
 * password guessers and relay probers produce dozens of failures in minutes.
 */
export const DEFAULT_LIMITS: LimitsRules = {
  enabled: true,
  prefixV4: 24,
  prefixV6: 64,
  limits: [
    { id: 'concurrent-per-ip', event: 'concurrent', key: 'ip', limit: 20, action: 'close', exemptTrusted: true },
    { id: 'concurrent-per-prefix', event: 'concurrent', key: 'prefix', limit: 100, action: 'close', exemptTrusted: true },
    { id: 'connections-per-ip', event: 'connection', key: 'ip', limit: 120, window: '1m', action: 'close', exemptTrusted: true },
    { id: 'connections-per-prefix', event: 'connection', key: 'prefix', limit: 600, window: '1m', action: 'close', exemptTrusted: true },
    { id: 'relay-denied-per-ip', event: 'relay-denied', key: 'ip', limit: 10, window: '10m', action: 'ban', ban: '1h', maxBan: '24h', exemptTrusted: true },
    { id: 'unknown-recipient-per-ip', event: 'unknown-recipient', key: 'ip', limit: 20, window: '10m', action: 'ban', ban: '1h', maxBan: '24h', exemptTrusted: true },
    { id: 'auth-failures-per-ip', event: 'auth-failure', key: 'ip', limit: 10, window: '15m', action: 'ban', ban: '1h', maxBan: '24h', exemptTrusted: true },
    { id: 'protocol-errors-per-ip', event: 'protocol-error', key: 'ip', limit: 20, window: '10m', action: 'ban', ban: '30m', maxBan: '24h', exemptTrusted: true },
    { id: 'messages-per-ip', event: 'message', key: 'ip', limit: 600, window: '1h', action: 'tempfail', exemptTrusted: true },
    { id: 'recipients-per-sender', event: 'recipient', key: 'sender', limit: 500, window: '1h', action: 'tempfail', exemptTrusted: true },
    { id: 'messages-per-user', event: 'message', key: 'user', limit: 1000, window: '1h', action: 'tempfail', exemptTrusted: false },
    { id: 'recipients-per-user', event: 'recipient', key: 'user', limit: 5000, window: '1h', action: 'tempfail', exemptTrusted: false },
  ],
};
