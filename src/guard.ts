/**
 * Composition root: createGuard(config) wires every module together and is the only file that
 * knows them all. It listens (SMTP listeners, admin API) but never exits the process.
 */
import { BackendCapabilities } from './backend/capabilities.js';
import path from 'node:path';
import { hostname } from 'node:os';
import http from 'node:http';
import { isIP, type AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import { Registry } from 'prom-client';
import type { Logger } from 'pino';
import type { FastifyInstance } from 'fastify';
import { DEFAULT_LDAP_USER_FILTER, type Config } from './config/schema.js';
import { maxMessageBytes, resolveTimeouts, type ResolvedTimeouts } from './config/load-config.js';
import { createMetrics, type Metrics } from './observability/metrics.js';
import { RulesStore } from './rules/rules-store.js';
import { SharedRulesStore } from './rules/shared-rules-store.js';
import type { RulesService } from './rules/rules-service.js';
import { SECTIONS, SECTION_NAMES } from './rules/schemas.js';
import { RateLimiter } from './limits/limiter.js';
import { BanList } from './limits/bans.js';
import { BanSync } from './limits/ban-sync.js';
import { MemoryLimitStore } from './limits/memory-store.js';
import { RedisLimitStore } from './limits/redis-store.js';
import { FallbackLimitStore } from './limits/fallback-store.js';
import type { LimitStore } from './limits/store.js';
import { systemClock, type Clock } from './clock.js';
import { RecipientValidator } from './directory/recipient-validator.js';
import { TlsContextManager } from './net/tls-context.js';
import { SmtpListener, compileNetworks, type AcceptedConnection } from './net/listeners.js';
import { BackendCapacity } from './backend/backend-capacity.js';
import type { BackendLink, BackendLinkOptions } from './backend/backend-link.js';
import { BackendConnector, backendReady } from './backend/connector.js';
import { PerClientSeats } from './backend/per-client-seat.js';
import { PooledSeats } from './backend/pooled-seat.js';
import { SessionRegistry } from './session/session-registry.js';
import { SmtpSession } from './session/session.js';
import { BackendPool } from './backend/backend-pool.js';
import { parseDuration } from './util/duration.js';
import type { GuardServices, ListenerRuntime } from './session/services.js';
import { buildAdminServer } from './admin/admin-server.js';
import { DEFAULT_RECENT_REFUSALS, RefusalRing } from './observability/refusal-ring.js';
import { DnsblScorer } from './dnsbl/dnsbl-scorer.js';
import { PolicyServices } from './policy-service/policy-services.js';
import { AuthCanary, type CanaryLink } from './backend/auth-canary.js';
import { compileRelayUsers } from './policy/auth-grant.js';

import { VERSION } from './version.js';

export { VERSION };

export interface GuardDeps {
  log: Logger;
  clock?: Clock;
  /** A fresh registry per guard (tests run several guards in one process). */
  registry?: Registry;
  /** Environment (admin token, LDAP password). */
  env?: NodeJS.ProcessEnv;
  /** Rules from the command line (--accepted-domain, --relay-network): added to the files' lists, never written to them. */
  overlay?: { acceptedDomains?: string[]; relayNetworks?: string[] };
}

export interface Guard {
  /** What sessions get, plus the pool itself (tests and the admin API look at it; sessions never do). */
  readonly services: GuardServices & { readonly pool: BackendPool | undefined };
  readonly metrics: Metrics;
  readonly rules: RulesService;
  readonly listeners: readonly SmtpListener[];
  readonly admin: FastifyInstance | undefined;
  /** The auth canary (issue 16): its state, and a run on demand. */
  readonly authCanary: AuthCanary;
  start(): Promise<void>;
  /** Graceful: stop accepting, 421 idle sessions, let transactions finish within the drain timeout. */
  close(): Promise<void>;
  /** SIGHUP: reload rules, certificates and the recipient list. */
  reload(): Promise<void>;
  /** Addresses actually bound (port 0 in tests). */
  address(listener?: string): { host: string; port: number };
  adminAddress(): { host: string; port: number } | undefined;
  /** The extra /metrics listener's address, when configured. */
  metricsAddress(): { host: string; port: number } | undefined;
}

export async function createGuard(config: Config, deps: GuardDeps): Promise<Guard> {
  const log = deps.log;
  const clock = deps.clock ?? systemClock;
  const env = deps.env ?? process.env;
  const metrics = createMetrics(deps.registry ?? new Registry(), { version: VERSION });
  publishRuleChangeSeries(metrics);
  const timeouts: ResolvedTimeouts = resolveTimeouts(config);
  const rulesDir = path.resolve(config.rulesDir);

  const guardName = config.guardName ?? hostname();
  let adminAddr: { host: string; port: number } | undefined;
  const rules: RulesService = config.rulesStore
    ? await SharedRulesStore.open({
        url: config.rulesStore,
        guardName,
        rulesDir,
        cacheFile: path.resolve(config.rulesStoreCache ?? path.join(rulesDir, '.rules-store-cache.json')),
        log: log.child({ component: 'rules' }),
        metrics,
        admin: () => (adminAddr ? `${adminAddr.host}:${adminAddr.port}` : undefined),
        ...(deps.overlay ? { overlay: deps.overlay } : {}),
      })
    : await RulesStore.open(rulesDir, { log: log.child({ component: 'rules' }), metrics, watch: true, guardName, ...(deps.overlay ? { overlay: deps.overlay } : {}) });

  const bans = new BanList({ file: config.limits.bansFile ?? path.join(rulesDir, 'bans.yaml'), clock, metrics });
  let store: LimitStore = new MemoryLimitStore({ max: config.limits.maxEntries, clock });
  let banSync: BanSync | undefined;
  if (config.limits.store === 'redis' && config.limits.redisUrl) {
    const shared = new RedisLimitStore({ url: config.limits.redisUrl });
    store = new FallbackLimitStore({
      primary: shared,
      local: store as MemoryLimitStore,
      clock,
      metrics,
      log: log.child({ component: 'limits' }),
    });
    // Bans shared through the same Redis; waits at most 2 s for the current bans, then starts anyway.
    banSync = new BanSync({ bans, redis: shared.redis, keyPrefix: shared.keyPrefix, clock, metrics, log: log.child({ component: 'bans' }) });
    await banSync.start();
  }
  const limiter = new RateLimiter({ store, rules: () => rules.current().raw.limits, bans, clock, metrics, log: log.child({ component: 'limits' }) });

  const validator = new RecipientValidator({
    rulesDir,
    rules: () => rules.current().raw.recipientValidation,
    metrics,
    log: log.child({ component: 'directory' }),
    ...(config.recipientsFile ? { recipientsFile: path.resolve(config.recipientsFile) } : {}),
    ldap: { env },
  });
  await validator.start();

  // TLS: one certificate manager per distinct `tls` block; a listener without its own block uses
  // the first one configured (or the self-signed default when there is none).
  const tlsManagers = new Map<string, TlsContextManager>();
  const defaultTls = config.listeners.find((l) => l.tls)?.tls ?? {};
  const tlsFor = async (lc: (typeof config.listeners)[number]): Promise<TlsContextManager | undefined> => {
    if (lc.kind !== 'smtps' && !lc.starttls) return undefined;
    const tlsConf = lc.tls ?? defaultTls;
    const key = JSON.stringify([tlsConf.certFile, tlsConf.keyFile, tlsConf.minVersion, tlsConf.ciphers]);
    const known = tlsManagers.get(key);
    if (known) return known;
    const mgr = await TlsContextManager.create({
      ...(tlsConf.certFile ? { certFile: tlsConf.certFile } : {}),
      ...(tlsConf.keyFile ? { keyFile: tlsConf.keyFile } : {}),
      ...(tlsConf.minVersion ? { minVersion: tlsConf.minVersion } : {}),
      ...(tlsConf.ciphers ? { ciphers: tlsConf.ciphers } : {}),
      hostname: config.smtp.hostname,
      log: log.child({ component: 'tls' }),
      watch: Boolean(tlsConf.certFile),
    });
    tlsManagers.set(key, mgr);
    return mgr;
  };
  const listenerTls = new Map<string, TlsContextManager | undefined>();
  for (const lc of config.listeners) {
    const mgr = await tlsFor(lc);
    listenerTls.set(lc.name, mgr);
    if (!mgr) continue;
    const setExpiry = () => metrics.tlsCertExpiry.set({ listener: lc.name }, Math.floor(mgr.notAfter.getTime() / 1000));
    setExpiry();
    mgr.on('reload', setExpiry);
  }

  // The `backend` metric label: the configured name, else the host name; never an IP address.
  const targets = config.backends.map((b, i) => ({ host: b.host, port: b.port, name: b.name ?? (isIP(b.host) ? `backend${i + 1}` : `${b.host}:${b.port}`) }));
  const backendLabels = targets.map((t) => t.name);
  for (const l of backendLabels) metrics.backendConnections.set({ backend: l }, 0);
  // Backend leg STARTTLS (issue 4): CA read once at start; a missing file fails loudly.
  const backendCa = config.backend.tlsCaFile ? readFileSync(path.resolve(config.backend.tlsCaFile)) : undefined;
  const backendLog = log.child({ component: 'backend' });
  const linkOptions: BackendLinkOptions = {
    connectTimeoutMs: timeouts.backendConnectMs,
    greetingTimeoutMs: timeouts.backendGreetingMs,
    replyTimeoutMs: timeouts.backendReplyMs,
    ...(config.backend.sourceAddress ? { sourceAddress: config.backend.sourceAddress } : {}),
    onReplyTime: (verb: string, s: number) => metrics.backendReplyDuration.observe({ verb: verb === 'DATA-END' ? 'DATA_END' : verb }, s),
  };
  const connector = new BackendConnector({
    targets,
    link: linkOptions,
    ehloName: config.smtp.hostname,
    proxyProtocol: config.backend.proxyProtocol,
    xclient: config.backend.xclient,
    xforward: config.backend.xforward,
    tls: {
      mode: config.backend.tls === 'starttls' ? 'starttls' : 'off',
      rejectUnauthorized: config.backend.tlsRejectUnauthorized,
      handshakeTimeoutMs: timeouts.backendGreetingMs,
      ...(backendCa ? { ca: backendCa } : {}),
    },
    metrics,
    log: backendLog,
  });

  const pool = config.backend.pool.enabled
    ? new BackendPool({
        targets,
        link: linkOptions,
        ehloName: config.smtp.hostname,
        minIdle: config.backend.pool.minIdle,
        max: Math.min(config.backend.pool.max, config.backend.maxConnections),
        acquireTimeoutMs: parseDuration(config.backend.pool.acquireTimeout),
        healthIntervalMs: parseDuration(config.backend.pool.healthInterval),
        prepare: async (link: BackendLink) => (await connector.secure(link)).ok,
        metrics,
        log: log.child({ component: 'pool' }),
        xforward: config.backend.xforward,
        xclient: config.backend.xclient,
      })
    : undefined;

  // DNS lists (at connect, before the backend) and Postfix policy services (at RCPT / DATA).
  const dnsbl = config.dnsbl ? new DnsblScorer({ config: config.dnsbl, dns: config.dns, metrics, log: log.child({ component: 'dnsbl' }) }) : undefined;
  const policyServices = config.policyServices.length > 0 ? new PolicyServices(config.policyServices, { metrics, log: log.child({ component: 'policy-service' }) }) : undefined;
  if (config.auth.verify === 'ldap' && rules.current().raw.recipientValidation.ldap === undefined) {
    // Not fatal (the rules may get LDAP settings later), but until then no AUTH grants relay.
    log.error({}, 'auth.verify is ldap but rules/recipient-validation.yaml has no ldap settings: AUTH grants no relay');
  }
  const capacity = new BackendCapacity(config.backend.maxConnections, {
    maxPerAddress: Math.min(config.backend.maxPerAddress ?? 5, config.backend.maxConnections),
    maxPerPrefix: Math.min(config.backend.maxPerPrefix ?? 10, config.backend.maxConnections),
  });
  /**
   * The auth canary's own backend session (issue 16): pooled, a session taken out of the pool for
   * good (closed after the login, the pool opens another); per-client, a connection of its own
   * within backend.maxConnections. Either way never one a client uses.
   */
  const canaryLink = async (): Promise<CanaryLink> => {
    if (pool) {
      const link = await pool.acquire();
      if (!link) return { failure: 'no pooled backend session free' };
      pool.detach(link);
      return { link, release: () => link.close(true) };
    }
    const release = capacity.tryAcquire();
    if (!release) return { failure: 'backend connection cap reached' };
    const r = await connector.connectOwn();
    if (!r.ok) {
      release();
      return { failure: `backend unavailable (${r.failure})` };
    }
    return {
      link: r.link,
      release: () => {
        r.link.close(true);
        release();
      },
    };
  };
  // Only where an AUTH could grant relay: a listener with `auth: relay`.
  const canaryWanted = config.authCanary.enabled && config.listeners.some((l) => l.auth === 'relay');
  const canary = new AuthCanary({
    enabled: canaryWanted,
    intervalMs: parseDuration(config.authCanary.interval),
    ehloName: config.smtp.hostname,
    openLink: canaryLink,
    metrics,
    log: log.child({ component: 'auth-canary' }),
  });

  let shuttingDown = false;
  const registry = new SessionRegistry();
  // The console's recent refusals exist only where the admin listener can show them.
  const refusals = config.admin.enabled ? new RefusalRing(config.admin.recentRefusals ?? DEFAULT_RECENT_REFUSALS) : undefined;
  const backendCaps = new BackendCapabilities();
  const services: GuardServices & { readonly pool: BackendPool | undefined } = {
    config,
    timeouts,
    maxMessageBytes: maxMessageBytes(config),
    ehloAllow: new Set(config.smtp.ehloAllow.map((k) => k.toUpperCase())),
    backendCaps,
    rules,
    limiter,
    bans,
    validator,
    // The one place that knows the backend mode: sessions get a seat and never ask which kind.
    seats: pool
      ? new PooledSeats({ pool, hostname: config.smtp.hostname, stressIdleMs: timeouts.poolStressMs })
      : new PerClientSeats({
          connector,
          capacity,
          stressIdleMs: parseDuration(config.backend.stressTimeout ?? '10s'),
          metrics,
          hostname: config.smtp.hostname,
        }),
    pool,
    registry,
    metrics,
    log,
    refusals,
    dnsbl,
    policyServices,
    auth: {
      canaryAccepted: () => canary.accepted,
      relayUsers: compileRelayUsers(config.authRelayUsers),
      ...(config.auth.verify === 'ldap'
        ? { verify: (user: string, password: string) => validator.verifyCredentials(user, password, config.auth.ldapUserFilter ?? DEFAULT_LDAP_USER_FILTER) }
        : {}),
    },
    shuttingDown: () => shuttingDown,
  };

  const listeners = config.listeners.map((lc) => {
    const plaintextAuth = compileNetworks(lc.plaintextAuthNetworks, `listener ${lc.name} plaintextAuthNetworks`);
    const runtime: ListenerRuntime = {
      config: lc,
      tls: listenerTls.get(lc.name),
      plaintextAuth: (ip) => plaintextAuth.containsText(ip),
    };
    return new SmtpListener(
      lc,
      listenerTls.get(lc.name),
      (c: AcceptedConnection) => {
        const session = new SmtpSession(c.socket, runtime, services, { clientIp: c.clientIp, clientPort: c.clientPort, tls: c.tls });
        void session.start();
      },
      metrics,
      log,
    );
  });

  // Readiness. Pooled mode: a greeted pooled session proves the backend answers, and the probe
  // then opens no connection beyond pool.max (the backend's per-source limit).
  const checkBackend = async (): Promise<boolean> => (pool !== undefined && pool.live > 0) || backendReady(targets, timeouts.backendConnectMs, config.backend.proxyProtocol);
  const admin = config.admin.enabled
    ? await buildAdminServer({ config, rules, bans, sessions: registry, metrics, validator, limiter, log: log.child({ component: 'admin' }), env, checkBackend, ...(refusals ? { refusals } : {}), ...(dnsbl ? { dnsbl } : {}), ...(policyServices ? { policyServices } : {}), backendCaps, ...(pool ? { pool: () => pool.snapshot() } : {}), authCanary: canary })
    : undefined;
  // Optional listener serving only /metrics (config `metrics`), e.g. for a scraper on another network.
  const metricsServer =
    config.metrics.port !== undefined
      ? http.createServer((req, res) => {
          if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
            res.writeHead(404).end();
            return;
          }
          metrics.register.metrics().then(
            (text) => res.writeHead(200, { 'content-type': metrics.register.contentType }).end(text),
            () => res.writeHead(500).end(),
          );
        })
      : undefined;

  return {
    services,
    metrics,
    rules,
    listeners,
    admin,
    authCanary: canary,
    async start() {
      await pool?.start();
      // The first canary before the listeners open (waited for at most 5 s; it finishes in the background).
      await canary.start(5000);
      for (const l of listeners) {
        const a = await l.listen();
        log.info({ listener: l.config.name, address: a.address, port: a.port, kind: l.config.kind }, 'listening');
      }
      if (metricsServer) {
        await new Promise<void>((resolve, reject) => {
          metricsServer.once('error', reject);
          metricsServer.listen(config.metrics.port, config.metrics.address ?? '127.0.0.1', () => resolve());
        });
        log.info({ address: config.metrics.address ?? '127.0.0.1', port: (metricsServer.address() as AddressInfo).port }, 'metrics listening');
      }
      if (admin) {
        await admin.listen({ host: config.admin.address, port: config.admin.port });
        const a = admin.server.address();
        if (a && typeof a === 'object') adminAddr = { host: a.address, port: a.port };
        log.info({ address: adminAddr?.host, port: adminAddr?.port }, 'admin api listening');
      }
    },
    async close() {
      shuttingDown = true;
      canary.stop();
      await Promise.all(listeners.map((l) => l.close()));
      const sessions = registry.all();
      for (const s of sessions) s.drain();
      const drained = Promise.all(sessions.map((s) => s.ended));
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([drained, new Promise<void>((r) => (timer = setTimeout(r, timeouts.drainMs)))]);
      clearTimeout(timer);
      for (const s of registry.all()) s.terminate('shutdown');
      await Promise.race([Promise.all(registry.all().map((s) => s.ended)), new Promise<void>((r) => setTimeout(r, 1000).unref())]);
      await pool?.close();
      if (metricsServer) await new Promise<void>((resolve) => metricsServer.close(() => resolve()));
      if (admin) await admin.close();
      await rules.close();
      for (const m of tlsManagers.values()) m.close();
      await validator.close();
      dnsbl?.close();
      policyServices?.close();
      await banSync?.close();
      await store.close();
    },
    async reload() {
      await rules.reload('sighup');
      for (const m of tlsManagers.values()) await m.reload();
      await validator.reloadList();
    },
    address(name?: string) {
      const l = name ? listeners.find((x) => x.config.name === name) : listeners[0];
      if (!l) throw new Error(`no listener ${name}`);
      const a = l.address;
      return { host: a.address, port: a.port };
    },
    adminAddress: () => adminAddr,
    metricsAddress: () => {
      const a = metricsServer?.address();
      return a && typeof a === 'object' ? { host: a.address, port: a.port } : undefined;
    },
  };
}

/**
 * Rule-change series at 0 from the start, like createMetrics does for its own closed label sets:
 * the dashboards' increase() sees a series before the first admin change instead of "no data".
 * Sections come from the rules table; add/remove exist for list sections only.
 */
function publishRuleChangeSeries(metrics: Metrics): void {
  for (const section of SECTION_NAMES) {
    const ops = SECTIONS[section].kind === 'list' ? ['replace', 'add', 'remove', 'rollback'] : ['replace', 'rollback'];
    for (const operation of ops) metrics.rulesChanges.inc({ section, operation }, 0);
  }
}
