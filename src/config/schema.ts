/**
 * Schema of relay-guard.yaml (the process configuration; policy data lives in rules/).
 * Keys are camelCase; durations are strings ("30s", "5m"); sizes are numbers of bytes or strings ("35MB").
 */
import { Type, type Static } from '@sinclair/typebox';
import { Duration } from '../util/duration.js';
import { DnsSchema, DnsblSchema } from '../dnsbl/schema.js';
import { PolicyServicesSchema } from '../policy-service/schema.js';

export { Duration };

/** A size: bytes as a number, or "512", "64KB", "35MB", "1GB" (1 KB = 1024 bytes). */
export const Size = Type.Union([
  Type.Integer({ minimum: 0 }),
  Type.String({ pattern: '^[0-9]+(B|KB|MB|GB)?$', description: 'bytes, or a number with KB, MB or GB' }),
]);

const HostPort = Type.Object(
  {
    host: Type.String({ minLength: 1, maxLength: 253 }),
    port: Type.Integer({ minimum: 1, maximum: 65535 }),
    name: Type.Optional(Type.String({ pattern: '^[a-z0-9][a-z0-9_-]{0,62}$' })),
  },
  { additionalProperties: false },
);

const TlsServer = Type.Object(
  {
    certFile: Type.Optional(Type.String()),
    keyFile: Type.Optional(Type.String()),
    minVersion: Type.Optional(Type.Union([Type.Literal('TLSv1.2'), Type.Literal('TLSv1.3')])),
    ciphers: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);

export const ListenerSchema = Type.Object(
  {
    name: Type.String({ pattern: '^[a-z0-9][a-z0-9_-]{0,62}$', description: 'used in logs and the listener metric label' }),
    address: Type.String({ default: '127.0.0.1' }),
    port: Type.Integer({ minimum: 0, maximum: 65535 }),
    kind: Type.Union([Type.Literal('mx'), Type.Literal('submission'), Type.Literal('smtps')], { default: 'mx' }),
    relay: Type.Union([Type.Literal('deny'), Type.Literal('allow')], {
      default: 'deny',
      description: 'allow = every client reaching this listener may relay (an internal interface); never-relay still applies',
    }),
    proxyProtocol: Type.Union([Type.Literal('off'), Type.Literal('optional'), Type.Literal('required')], { default: 'off' }),
    proxyNetworks: Type.Array(Type.String(), { default: [], description: 'load balancers allowed to send a PROXY header' }),
    starttls: Type.Boolean({ default: true, description: 'offer STARTTLS on mx and submission listeners' }),
    tls: Type.Optional(TlsServer),
    plaintextAuthNetworks: Type.Array(Type.String(), { default: [], description: 'client networks that may AUTH without TLS' }),
    auth: Type.Union([Type.Literal('relay'), Type.Literal('pass'), Type.Literal('off')], {
      default: 'relay',
      description: 'relay = a backend-accepted AUTH may relay (guarded by the auth canary); pass = AUTH goes to the backend but grants nothing here; off = AUTH not offered, the verb refused',
    }),
    maxConnections: Type.Integer({ minimum: 1, default: 1000 }),
  },
  { additionalProperties: false },
);

export const ConfigSchema = Type.Object(
  {
    listeners: Type.Array(ListenerSchema, { minItems: 1 }),
    backends: Type.Array(HostPort, { minItems: 1, description: 'tried in order on connect failure' }),
    backend: Type.Object(
      {
        connectTimeout: Duration,
        greetingTimeout: Duration,
        replyTimeout: Duration,
        dataReplyTimeout: Duration,
        sourceAddress: Type.Optional(Type.String({ description: 'local address for backend connections' })),
        maxConnections: Type.Integer({ minimum: 1, description: 'cap on concurrent backend connections (Exchange allows 20 per source)' }),
        maxPerAddress: Type.Optional(Type.Integer({ minimum: 1, description: 'most backend connections one client address may hold (per-client mode; default 5)' })),
        maxPerPrefix: Type.Optional(Type.Integer({ minimum: 1, description: 'most backend connections one /24 (IPv4) or /64 (IPv6) may hold (per-client mode; default 10)' })),
        stressTimeout: Type.Optional(Duration),
        tls: Type.Union([Type.Literal('off'), Type.Literal('starttls')]),
        tlsCaFile: Type.Optional(Type.String()),
        tlsRejectUnauthorized: Type.Boolean(),
        xclient: Type.Boolean({ description: 'send XCLIENT ADDR/NAME/HELO to backends that offer it (Postfix)' }),
        xforward: Type.Boolean({ description: 'send Postfix XFORWARD NAME/ADDR/PORT/PROTO/HELO/SOURCE before each MAIL to backends that offer it' }),
        proxyProtocol: Type.Union([Type.Literal('off'), Type.Literal('v1'), Type.Literal('v2')]),
        pool: Type.Object(
          {
            enabled: Type.Boolean({ description: 'lend pre-greeted backend sessions per transaction instead of one connection per client' }),
            minIdle: Type.Integer({ minimum: 0 }),
            max: Type.Integer({ minimum: 1, description: 'keep it below the backend per-source limit' }),
            acquireTimeout: Duration,
            healthInterval: Duration,
            stressTimeout: Duration,
          },
          { additionalProperties: false },
        ),
      },
      { additionalProperties: false },
    ),
    smtp: Type.Object(
      {
        hostname: Type.String({ minLength: 1 }),
        maxLineBytes: Type.Integer({ minimum: 512, maximum: 65536 }),
        maxRecipients: Type.Integer({ minimum: 1, maximum: 100000 }),
        maxMessageBytes: Size,
        maxTransactions: Type.Integer({ minimum: 1 }),
        softErrorLimit: Type.Integer({ minimum: 0 }),
        hardErrorLimit: Type.Integer({ minimum: 1 }),
        errorDelay: Duration,
        earlyTalker: Type.Union([Type.Literal('reject'), Type.Literal('allow')]),
        greetingDelay: Duration,
        smuggling: Type.Union([Type.Literal('reject'), Type.Literal('normalize')]),
        ehloAllow: Type.Array(Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9-]*$' })),
        vrfy: Type.Union([Type.Literal('refuse'), Type.Literal('252')]),
        trustedVerbs: Type.Array(Type.String(), { description: 'verbs (ETRN, TURN, X-verbs) forwarded for trusted clients only' }),
        dsn: Type.Optional(
          Type.Union([Type.Literal('trusted'), Type.Literal('all'), Type.Literal('off')], {
            description: 'DSN (RET, ENVID, NOTIFY, ORCPT) advertised and forwarded to: trusted clients (default), all clients, or nobody',
          }),
        ),
      },
      { additionalProperties: false },
    ),
    timeouts: Type.Object(
      {
        command: Duration,
        data: Duration,
        session: Duration,
        drain: Duration,
      },
      { additionalProperties: false },
    ),
    rulesDir: Type.String(),
    rulesStore: Type.Optional(Type.String({
      pattern: '^rediss?://[^\\s]+$',
      description: 'shared rules store of a fleet: redis://HOST:PORT[/DB]; rulesDir then only seeds an empty store',
    })),
    rulesStoreCache: Type.Optional(Type.String({ description: 'last-known-good copy of the shared rules (default <rulesDir>/.rules-store-cache.json)' })),
    guardName: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$', description: "this guard's name in the fleet, the audit log and the history (default: the host name)" })),
    recipientsFile: Type.Optional(Type.String()),
    log: Type.Object(
      { level: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l))) },
      { additionalProperties: false },
    ),
    admin: Type.Object(
      {
        enabled: Type.Boolean(),
        address: Type.String(),
        port: Type.Integer({ minimum: 0, maximum: 65535 }),
        tokenFile: Type.Optional(Type.String({ description: 'YAML list of { id, token, scope: ro|rw }' })),
        metricsAuth: Type.Boolean({ description: 'require a token for /metrics' }),
        hostNames: Type.Optional(
          Type.Array(Type.String({ pattern: '^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\\.?$', maxLength: 253 }), {
            maxItems: 100,
            description: 'names besides localhost and loopback literals that requests to the admin listener may carry in Host (DNS rebinding protection)',
          }),
        ),
        recentRefusals: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000, description: 'refusals kept in memory for the web console (default 1000)' })),
      },
      { additionalProperties: false },
    ),
    metrics: Type.Object(
      {
        address: Type.Optional(Type.String()),
        port: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535 })),
      },
      { additionalProperties: false, description: 'optional extra listener serving only /metrics' },
    ),
    dns: DnsSchema,
    dnsbl: Type.Optional(DnsblSchema),
    policyServices: PolicyServicesSchema,
    auth: Type.Object(
      {
        verify: Type.Union([Type.Literal('none'), Type.Literal('ldap')], {
          description: 'ldap = relay rights need the guard itself to bind to the directory (rules/recipient-validation.yaml ldap settings) with the credentials the client gave',
        }),
        ldapUserFilter: Type.Optional(
          Type.String({ minLength: 3, pattern: '^\\(.*\\{user\\}.*\\)$', description: 'filter finding the entry to bind as; {user} is the RFC 4515-escaped login' }),
        ),
      },
      { additionalProperties: false },
    ),
    authRelayUsers: Type.Array(Type.String({ minLength: 1, maxLength: 256 }), {
      description: 'logins whose AUTH may relay: exact names or globs (* ?), case-insensitive; empty = any',
    }),
    authCanary: Type.Object(
      {
        enabled: Type.Boolean({ description: 'log in with random credentials on a backend session at start and every interval' }),
        interval: Duration,
      },
      { additionalProperties: false },
    ),
    limits: Type.Object(
      {
        store: Type.Union([Type.Literal('memory'), Type.Literal('redis')]),
        redisUrl: Type.Optional(Type.String()),
        maxEntries: Type.Integer({ minimum: 100 }),
        bansFile: Type.Optional(Type.String({ description: 'manual bans, default <rulesDir>/bans.yaml' })),
      },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false },
);

export type Config = Static<typeof ConfigSchema>;
export type ListenerConfig = Static<typeof ListenerSchema>;

/** Defaults merged under the file (and the file under the command line flags). */
export const DEFAULT_CONFIG: Config = {
  listeners: [{ name: 'mx', address: '127.0.0.1', port: 2525, kind: 'mx', relay: 'deny', proxyProtocol: 'off', proxyNetworks: [], starttls: true, plaintextAuthNetworks: [], auth: 'relay', maxConnections: 1000 }],
  backends: [{ host: '127.0.0.1', port: 2526 }],
  backend: {
    connectTimeout: '10s',
    greetingTimeout: '30s',
    replyTimeout: '5m',
    dataReplyTimeout: '10m',
    maxConnections: 20,
    maxPerAddress: 5,
    maxPerPrefix: 10,
    stressTimeout: '10s',
    tls: 'off',
    tlsRejectUnauthorized: true,
    xclient: false,
    xforward: false,
    proxyProtocol: 'off',
    pool: { enabled: false, minIdle: 2, max: 10, acquireTimeout: '10s', healthInterval: '30s', stressTimeout: '10s' },
  },
  smtp: {
    hostname: 'relay-guard',
    maxLineBytes: 512,
    maxRecipients: 100,
    maxMessageBytes: '35MB',
    maxTransactions: 100,
    softErrorLimit: 10,
    hardErrorLimit: 20,
    errorDelay: '250ms',
    earlyTalker: 'reject',
    greetingDelay: '0s',
    smuggling: 'reject',
    ehloAllow: ['PIPELINING', 'SIZE', '8BITMIME', 'SMTPUTF8', 'DSN', 'ENHANCEDSTATUSCODES', 'HELP'],
    vrfy: '252',
    trustedVerbs: ['ETRN'],
    dsn: 'trusted',
  },
  timeouts: { command: '5m', data: '3m', session: '30m', drain: '30s' },
  rulesDir: 'rules',
  log: { level: 'info' },
  admin: { enabled: true, address: '127.0.0.1', port: 8025, metricsAuth: false },
  metrics: {},
  limits: { store: 'memory', maxEntries: 100000 },
  dns: { timeout: '5s' },
  policyServices: [],
  auth: { verify: 'none' },
  authRelayUsers: [],
  authCanary: { enabled: true, interval: '15m' },
};

/** Active Directory: the login as sAMAccountName, userPrincipalName or mail. */
export const DEFAULT_LDAP_USER_FILTER = '(|(sAMAccountName={user})(userPrincipalName={user})(mail={user}))';

export function parseSize(s: number | string): number {
  if (typeof s === 'number') return s;
  const m = /^([0-9]+)(B|KB|MB|GB)?$/.exec(s);
  if (!m) throw new RangeError(`bad size ${JSON.stringify(s)}`);
  const mult = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 }[m[2] ?? 'B'] ?? 1;
  return Number(m[1]) * mult;
}
