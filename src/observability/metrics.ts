/**
 * Every metric relay-guard exposes is declared here and nowhere else (the metric catalogue).
 * Label values come from closed sets listed in each Help text; never addresses, IPs, HELO or raw verbs.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export const KNOWN_VERBS = [
  'HELO', 'EHLO', 'MAIL', 'RCPT', 'DATA', 'BDAT', 'RSET', 'NOOP', 'QUIT', 'VRFY', 'EXPN', 'HELP',
  'STARTTLS', 'AUTH', 'TURN', 'ETRN', 'ATRN', 'XCLIENT', 'XFORWARD', 'XEXCH50', 'X-LINK2STATE', 'XRDST',
] as const;

/**
 * Rule ids of the refusals the guard makes itself (the `rule` label of
 * relay_guard_command_refusals_total), beside the ids an operator names: sender rules in rules/,
 * limit ids in rules/limits.yaml and `policy-service:<name>`. A closed vocabulary: never client text.
 */
export const REFUSAL_RULES = [
  // a connection: admission, the backend seat, talking before the greeting, the PROXY header
  'shutting-down', 'ban', 'connection-capacity', 'backend-capacity', 'backend-client-share', 'dnsbl', 'early-talker', 'proxy-refused',
  // a command line the codec cannot take, or more pipelined input than the guard may hold
  'line-too-long', 'bad-bytes', 'unknown-verb', 'command-syntax', 'bad-sequence', 'http-request', 'tls-on-plain', 'input-overflow', 'too-many-errors',
  // verbs, STARTTLS, AUTH
  'verb-not-allowed', 'starttls-not-offered', 'starttls-in-transaction',
  'auth-already-done', 'ehlo-required', 'auth-in-transaction', 'auth-not-offered', 'auth-requires-tls', 'auth-mechanism-unknown',
  // MAIL (the envelope judge)
  'helo-required', 'nested-mail', 'too-many-transactions', 'sender-syntax', 'parameter-syntax', 'unsupported-parameter',
  'smtputf8-required', 'auth-required', 'anti-spoofing',
  // RCPT (the envelope judge)
  'mail-required', 'recipient-syntax', 'too-many-recipients', 'relay-denied', 'routing-tricks', 'encapsulated-address',
  'auth-unproven', 'recipient-unknown', 'directory-unavailable',
  // DATA and the message
  'no-valid-recipients', 'message-too-large', 'smuggling',
] as const;

export function verbLabel(verb: string): string {
  const v = verb.toUpperCase();
  return (KNOWN_VERBS as readonly string[]).includes(v) ? v : 'other';
}

/**
 * How often the event-loop delay behind nodejs_eventloop_lag_* is sampled. prom-client's default, 10 ms,
 * is a timer that wakes the process 100 times a second: at rest the guard then used 6.6–6.8 ms of CPU
 * per second, against 2.2 at 100 ms (0.5 with no default metrics at all). A stall long enough to
 * matter still shows.
 */
export const EVENT_LOOP_SAMPLE_MS = 100;

function createMetricsShape(register: Registry = new Registry(), opts: { defaultMetrics?: boolean; version?: string } = {}) {
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  const registers = [register];
  const m = {
    register,
    connections: new Counter({
      name: 'relay_guard_connections_total',
      help: 'Client connections by listener and outcome (accepted, banned, dnsbl, limited, capacity, proxy_refused, early_talker, backend_unavailable, shutting_down)',
      labelNames: ['listener', 'outcome'] as const, registers,
    }),
    sessionsActive: new Gauge({
      name: 'relay_guard_sessions_active', help: 'Client sessions currently open, by listener',
      labelNames: ['listener'] as const, registers,
    }),
    commands: new Counter({
      name: 'relay_guard_commands_total', help: 'Client commands by verb (known verbs, or other)',
      labelNames: ['verb'] as const, registers,
    }),
    replies: new Counter({
      name: 'relay_guard_replies_total', help: 'Replies sent to clients by source (guard, backend) and class (2xx, 3xx, 4xx, 5xx)',
      labelNames: ['source', 'class'] as const, registers,
    }),
    rcptVerdicts: new Counter({
      name: 'relay_guard_rcpt_verdicts_total',
      help: 'RCPT verdicts by verdict (accept, reject, defer), mode (enforce, warn) and rule id',
      labelNames: ['verdict', 'mode', 'rule'] as const, registers,
    }),
    relayDenials: new Counter({
      name: 'relay_guard_relay_denials_total',
      help: 'Recipients refused as relay attempts (rule relay-denied, routing tricks, never-relay), by rule id',
      labelNames: ['rule'] as const, registers,
    }),
    commandRefusals: new Counter({
      name: 'relay_guard_command_refusals_total',
      help: 'Refusals the guard answered itself (a command, a message or a connection; never a backend reply), one per refusal, by rule id (built-in ids, sender rule ids, limit ids, policy-service:<name>)',
      labelNames: ['rule'] as const, registers,
    }),
    mailVerdicts: new Counter({
      name: 'relay_guard_mail_verdicts_total', help: 'MAIL FROM verdicts by verdict (accept, reject, defer), mode and rule id',
      labelNames: ['verdict', 'mode', 'rule'] as const, registers,
    }),
    messages: new Counter({
      name: 'relay_guard_messages_total',
      help: 'Messages by outcome (delivered, rejected_by_backend, smuggling, too_large, aborted, backend_failed)',
      labelNames: ['outcome'] as const, registers,
    }),
    messageBytes: new Counter({
      name: 'relay_guard_message_bytes_total', help: 'Bytes of message data forwarded to the backend', registers,
    }),
    messageSize: new Histogram({
      name: 'relay_guard_message_size_bytes', help: 'Size of messages the backend accepted',
      buckets: [1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 52428800], registers,
    }),
    protocolErrors: new Counter({
      name: 'relay_guard_protocol_errors_total',
      help: 'Protocol errors by kind (line_too_long, bad_bytes, bare_lf, bare_cr, bad_eod, unknown_verb, syntax, bad_sequence, early_talker, http, tls_on_plain, too_many_errors)',
      labelNames: ['kind'] as const, registers,
    }),
    smuggling: new Counter({
      name: 'relay_guard_smuggling_attempts_total',
      help: 'Messages with a bare CR or LF or a non-standard end-of-data, by kind (bare_lf, bare_cr, nul) and action (rejected, normalised)',
      labelNames: ['kind', 'action'] as const, registers,
    }),
    refusedVerbs: new Counter({
      name: 'relay_guard_refused_verbs_total', help: 'Commands refused by verb policy, by verb (known verbs, or other)',
      labelNames: ['verb'] as const, registers,
    }),
    auth: new Counter({
      name: 'relay_guard_auth_total', help: 'AUTH attempts by result (success, failure, aborted, refused)',
      labelNames: ['result'] as const, registers,
    }),
    authGrants: new Counter({
      name: 'relay_guard_auth_grants_total',
      help: 'Successful AUTHs (the backend said 235) by what the guard granted: relay, pass (listener auth: pass), not_listed (outside authRelayUsers), unproven (canary tripped or guard-side verification failed)',
      labelNames: ['grant'] as const, registers,
    }),
    authCanaryAccepted: new Gauge({
      name: 'relay_guard_auth_canary_accepted',
      help: '1 while the backend accepted the last auth canary (a login with random credentials): AUTH grants no relay until a canary is refused',
      registers,
    }),
    authCanaryRuns: new Counter({
      name: 'relay_guard_auth_canary_runs_total',
      help: 'Auth canary logins by result (refused, accepted, not_offered, error)',
      labelNames: ['result'] as const, registers,
    }),
    tlsHandshakes: new Counter({
      name: 'relay_guard_tls_handshakes_total', help: 'TLS handshakes with clients by kind (starttls, implicit) and result (success, failure)',
      labelNames: ['kind', 'result'] as const, registers,
    }),
    tlsCertExpiry: new Gauge({
      name: 'relay_guard_tls_certificate_expiry_timestamp_seconds', help: 'Expiry (notAfter) of the served certificate, unix seconds, by listener',
      labelNames: ['listener'] as const, registers,
    }),
    limitHits: new Counter({
      name: 'relay_guard_limit_hits_total', help: 'Rate-limit hits by limit name and action (tempfail, close, tarpit, ban)',
      labelNames: ['limit', 'action'] as const, registers,
    }),
    bansActive: new Gauge({
      name: 'relay_guard_bans_active', help: 'Bans in force, by source (manual, automatic)',
      labelNames: ['source'] as const, registers,
    }),
    limitStoreErrors: new Counter({
      name: 'relay_guard_limit_store_errors_total', help: 'Faults of the limit store by store (redis); the guard falls back to local counters',
      labelNames: ['store'] as const, registers,
    }),
    limitStoreFallback: new Gauge({
      name: 'relay_guard_limit_store_fallback', help: '1 while limits run on local counters because the shared store is unreachable', registers,
    }),
    backendConnectDuration: new Histogram({
      name: 'relay_guard_backend_connect_duration_seconds', help: 'Time to connect to a backend and read its greeting',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers,
    }),
    backendReplyDuration: new Histogram({
      name: 'relay_guard_backend_reply_duration_seconds', help: 'Time from forwarding a command to the backend reply, by verb',
      labelNames: ['verb'] as const,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers,
    }),
    backendUp: new Gauge({
      name: 'relay_guard_backend_up', help: '1 if the last connection attempt to the backend succeeded, by backend name',
      labelNames: ['backend'] as const, registers,
    }),
    backendConnections: new Gauge({
      name: 'relay_guard_backend_connections', help: 'Open connections to backends, by backend name',
      labelNames: ['backend'] as const, registers,
    }),
    backendErrors: new Counter({
      name: 'relay_guard_backend_errors_total', help: 'Backend faults by kind (connect, timeout, closed, protocol)',
      labelNames: ['kind'] as const, registers,
    }),
    recipientLookups: new Counter({
      name: 'relay_guard_recipient_lookups_total',
      help: 'Recipient validation lookups by source (list, ldap, cache) and result (known, unknown, error)',
      labelNames: ['source', 'result'] as const, registers,
    }),
    rulesReloads: new Counter({
      name: 'relay_guard_rules_reloads_total', help: 'Rule reloads by result (success, error)',
      labelNames: ['result'] as const, registers,
    }),
    rulesLastReload: new Gauge({
      name: 'relay_guard_rules_last_reload_timestamp_seconds', help: 'Time of the last successful rules reload, unix seconds', registers,
    }),
    rulesChanges: new Counter({
      name: 'relay_guard_rules_changes_total', help: 'Rule changes through the admin API by section and operation (replace, add, remove, rollback, import, seed)',
      labelNames: ['section', 'operation'] as const, registers,
    }),
    rulesStoreUp: new Gauge({
      name: 'relay_guard_rules_store_up',
      help: 'Shared rules store (--rules-store) by store (redis): 1 while it answers; 0 during an outage (rule changes answer 503, mail flows under the last rules). No series without a shared store',
      labelNames: ['store'] as const, registers,
    }),
    rulesStoreBehind: new Gauge({
      name: 'relay_guard_rules_store_behind',
      help: 'Shared rules store by store (redis): 1 while the rules this guard enforces differ from the store\'s current version (store unreachable, an invalid store entry refused, or not yet applied)',
      labelNames: ['store'] as const, registers,
    }),
    fleetGuards: new Gauge({
      name: 'relay_guard_fleet_guards',
      help: 'Live guards of the fleet (heartbeats in the shared rules store) by state (current, behind): behind = enforcing another rules version than the store\'s current one',
      labelNames: ['state'] as const, registers,
    }),
    internalErrors: new Counter({
      name: 'relay_guard_internal_errors_total', help: 'Unexpected errors by where (session, admin, rules, limits)',
      labelNames: ['where'] as const, registers,
    }),
    poolSessions: new Gauge({
      name: 'relay_guard_pool_sessions', help: 'Pooled backend sessions by backend and state (idle, busy)',
      labelNames: ['backend', 'state'] as const, registers,
    }),
    poolWaits: new Counter({
      name: 'relay_guard_pool_waits_total', help: 'Transactions that waited for a pooled backend session, by result (got, timeout)',
      labelNames: ['result'] as const, registers,
    }),
    poolReplacements: new Counter({
      name: 'relay_guard_pool_replacements_total', help: 'Pooled backend sessions replaced, by reason (closed, unexpected_reply, health_check, tls_failed)',
      labelNames: ['reason'] as const, registers,
    }),
    dnsblAnswers: new Counter({
      name: 'relay_guard_dnsbl_answers_total',
      help: 'DNS list queries by list (configured zone) and result (listed: A records, not_listed: NXDOMAIN or no A record, error, timeout); cache hits are not queries',
      labelNames: ['list', 'result'] as const, registers,
    }),
    dnsblCacheHits: new Counter({
      name: 'relay_guard_dnsbl_cache_hits_total', help: 'DNS list lookups answered from the cache, by list (configured zone)',
      labelNames: ['list'] as const, registers,
    }),
    dnsblQueryDuration: new Histogram({
      name: 'relay_guard_dnsbl_query_duration_seconds', help: 'Time a DNS list took to answer (or to time out), by list (configured zone)',
      labelNames: ['list'] as const,
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers,
    }),
    dnsblVerdicts: new Counter({
      name: 'relay_guard_dnsbl_verdicts_total', help: 'Clients scored against the DNS lists at connect, by verdict (pass, refuse; trusted clients are not scored)',
      labelNames: ['verdict'] as const, registers,
    }),
    policyServiceAnswers: new Counter({
      name: 'relay_guard_policy_service_answers_total',
      help: 'Answers of Postfix policy services by service (configured name) and action (ok, dunno, reject, defer, defer_if_permit, defer_if_reject, code_4xx, code_5xx, prepend, unknown)',
      labelNames: ['service', 'action'] as const, registers,
    }),
    policyServiceErrors: new Counter({
      name: 'relay_guard_policy_service_errors_total',
      help: 'Policy service requests without an answer, by service (configured name) and kind (timeout, connect, closed, protocol, overload); onError decides what the client gets',
      labelNames: ['service', 'kind'] as const, registers,
    }),
    policyServiceDuration: new Histogram({
      name: 'relay_guard_policy_service_duration_seconds', help: 'Time from a policy request to its answer (or failure), by service (configured name)',
      labelNames: ['service'] as const,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers,
    }),
    buildInfo: new Gauge({
      name: 'relay_guard_build_info', help: 'Always 1; the version label says which build runs',
      labelNames: ['version'] as const, registers,
    }),
  };
  return m;
}

export function createMetrics(register: Registry = new Registry(), opts: { defaultMetrics?: boolean; version?: string } = {}) {
  const m = createMetricsShape(register, opts);
  m.buildInfo.set({ version: opts.version ?? '0.0.0' }, 1);
  zeroKnownSeries(m);
  // The counters a one-message session touches a dozen times between them.
  for (const c of [m.connections, m.commands, m.replies, m.rcptVerdicts, m.mailVerdicts, m.commandRefusals, m.messages] as Array<Counter<string>>) bufferIncrements(c);
  // …and the gauges and histograms touched once per session, backend connection or backend reply.
  for (const g of [m.sessionsActive, m.backendConnections] as Array<Gauge<string>>) bufferIncrements(g);
  for (const h of [m.backendReplyDuration, m.backendConnectDuration, m.messageSize] as Array<Histogram<string>>) bufferObservations(h);
  // …and the gauge set to the same value at every backend connection.
  skipUnchangedSets(m.backendUp as Gauge<string>);
  return m;
}

/**
 * A gauge set to the value it already has, over and over (backend_up: once per backend connection):
 * prom-client hears only of changes. Its series are never reset (reset() would make the memory stale).
 */
function skipUnchangedSets<T extends string>(metric: Gauge<T>): void {
  const direct = (metric.set as (labels: LabelValues<T> | number, value?: number) => void).bind(metric);
  const names = labelNamesOf<T>(metric);
  const tree = labelTree(names, (labels) => ({ labels: { ...labels }, value: Number.NaN }));
  Object.assign(metric, {
    set: (labels: LabelValues<T> | number, value?: number): void => {
      if (typeof labels === 'number' || value === undefined || names.length === 0) return direct(labels, value);
      const e = tree.get(labels);
      if (e.value === value) return;
      direct(labels, value);
      e.value = value;
    },
  });
}

type LabelValues<T extends string> = Partial<Record<T, string | number>>;

/**
 * Per-label-set accumulators for the buffered metrics below, found without building a key string:
 * one Map level per label name, keyed by the label's value. `create` runs the first time a label
 * set is seen (prom-client validates it then, so bad values are refused at once).
 */
function labelTree<T extends string, E extends { readonly labels: LabelValues<T> }>(names: readonly T[], create: (labels: LabelValues<T>) => E) {
  const root = new Map<unknown, unknown>();
  const entries: E[] = [];
  const last = names.length - 1;
  return {
    entries,
    get(labels: LabelValues<T>): E {
      let level = root;
      for (let i = 0; i < last; i++) {
        const v = labels[names[i]!];
        let next = level.get(v) as Map<unknown, unknown> | undefined;
        if (!next) {
          next = new Map();
          level.set(v, next);
        }
        level = next;
      }
      const leafValue = last >= 0 ? labels[names[last]!] : undefined;
      let e = level.get(leafValue) as E | undefined;
      if (!e) {
        e = create(labels);
        level.set(leafValue, e);
        entries.push(e);
      }
      return e;
    },
  };
}

function labelNamesOf<T extends string>(metric: unknown): readonly T[] {
  return (metric as { labelNames: readonly T[] }).labelNames;
}

/**
 * Increments (and, for a gauge, decrements) of a busy metric add to a plain number kept under the
 * label values; prom-client gets the sums when it collects (a scrape, get()). Its own inc() hashes
 * and validates the label object on every call, a measurable share of a one-message session's CPU.
 * A gauge's set() first hands over what is pending, so the order of set and inc is kept.
 */
function bufferIncrements<T extends string>(metric: Counter<T> | Gauge<T>): void {
  const isGauge = metric instanceof Gauge;
  const direct = (metric.inc as (labels: LabelValues<T>, value: number) => void).bind(metric);
  const names = labelNamesOf<T>(metric);
  const tree = labelTree(names, (labels) => {
    direct(labels, 0); // validates the label names, creates the series
    return { labels: { ...labels }, n: 0 };
  });
  const add = (labels: LabelValues<T> | number | undefined, value: number | undefined, sign: 1 | -1): void => {
    // prom-client lets NaN through (its check is `value && …`); a metric must never become NaN.
    if (value !== undefined && !Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${value}`);
    if (labels === undefined || typeof labels === 'number' || names.length === 0 || (!isGauge && value !== undefined && !(value > 0))) {
      // Unlabelled, a number only, or a value a counter refuses: prom-client's own path (dec never gets here).
      direct((typeof labels === 'object' ? labels : {}) as LabelValues<T>, typeof labels === 'number' ? labels : (value ?? 1));
      return;
    }
    tree.get(labels).n += sign * (value ?? 1);
  };
  const flush = (): void => {
    for (const e of tree.entries) {
      if (e.n === 0) continue;
      const n = e.n;
      e.n = 0;
      direct(e.labels, n);
    }
  };
  if (isGauge) {
    const directDec = metric.dec.bind(metric);
    const directSet = metric.set.bind(metric) as (labels: LabelValues<T> | number, value?: number) => void;
    Object.assign(metric, {
      inc: (labels?: LabelValues<T> | number, value?: number) => add(labels, value, 1),
      dec: (labels?: LabelValues<T> | number, value?: number) => {
        if (labels === undefined || typeof labels === 'number' || names.length === 0) return directDec(...([labels, value] as [never, never]));
        add(labels, value, -1);
      },
      set: (labels: LabelValues<T> | number, value?: number) => {
        flush();
        directSet(labels, value);
      },
      collect: flush,
    });
  } else Object.assign(metric, { inc: (labels?: LabelValues<T> | number, value?: number) => add(labels, value, 1), collect: flush });
}

/** The parts of prom-client's Histogram this module buffers into (prom-client 15: hashMap of series). */
interface HistogramSeries {
  labels: Record<string, string | number>;
  bucketValues: Record<number, number>;
  sum: number;
  count: number;
}

/**
 * Observations of a busy histogram are counted per bucket under the label values and added to
 * prom-client's series when it collects: its observe() hashes and validates the labels on every
 * call (a backend reply each). The first observation of a label set goes through prom-client
 * (validation, series creation); the rest are added in at a scrape, with the same bucket rule
 * (the first upper bound ≥ the value; above the last bound only count and sum).
 */
function bufferObservations<T extends string>(hist: Histogram<T>): void {
  const direct = (hist.observe as (labels: LabelValues<T>, value: number) => void).bind(hist);
  const names = labelNamesOf<T>(hist);
  const bounds = (hist as unknown as { upperBounds: readonly number[] }).upperBounds;
  const internals = hist as unknown as { hashMap: Record<string, HistogramSeries> };
  interface Entry {
    readonly labels: LabelValues<T>;
    readonly counts: number[];
    sum: number;
    n: number;
  }
  const tree = labelTree<T, Entry>(names, (labels) => ({ labels: { ...labels }, counts: bounds.map(() => 0), sum: 0, n: -1 }));
  const sameLabels = (a: Record<string, string | number>, b: LabelValues<T>): boolean => names.every((k) => String(a[k]) === String(b[k]));
  const observe = (labels: LabelValues<T> | number | undefined, value?: number): void => {
    const v = typeof labels === 'number' ? labels : value;
    const l = typeof labels === 'object' ? labels : ({} as LabelValues<T>);
    if (v === undefined || !Number.isFinite(v)) throw new TypeError(`Value is not a valid number: ${v}`);
    const e = tree.get(l);
    if (e.n < 0) {
      direct(l, v); // validates the labels and creates the series
      e.n = 0;
      return;
    }
    let i = 0;
    while (i < bounds.length && v > bounds[i]!) i++;
    if (i < bounds.length) e.counts[i]!++;
    e.sum += v;
    e.n++;
  };
  const flush = (): void => {
    const series = Object.values(internals.hashMap);
    for (const e of tree.entries) {
      if (e.n <= 0) continue;
      let target = series.find((x) => sameLabels(x.labels, e.labels));
      if (!target) {
        hist.zero(e.labels as never); // the series was reset since: start it again
        target = Object.values(internals.hashMap).find((x) => sameLabels(x.labels, e.labels));
        if (!target) continue;
      }
      for (let i = 0; i < bounds.length; i++) {
        if (e.counts[i] === 0) continue;
        target.bucketValues[bounds[i]!] = (target.bucketValues[bounds[i]!] ?? 0) + e.counts[i]!;
        e.counts[i] = 0;
      }
      target.sum += e.sum;
      target.count += e.n;
      e.sum = 0;
      e.n = 0;
    }
  };
  Object.assign(hist, { observe, collect: flush });
}

/**
 * Publish every series of the closed label sets at 0 from the start, so dashboards and alerts
 * (rate(), increase()) see a series before its first event instead of "no data".
 */
function zeroKnownSeries(m: ReturnType<typeof createMetricsShape>): void {
  type Incable = { inc(labels: Record<string, string>, value: number): void };
  const each = (counter: unknown, sets: Record<string, readonly string[]>) => {
    const c = counter as Incable;
    const keys = Object.keys(sets);
    const walk = (i: number, acc: Record<string, string>): void => {
      if (i === keys.length) return c.inc(acc, 0);
      for (const v of sets[keys[i]!]!) walk(i + 1, { ...acc, [keys[i]!]: v });
    };
    walk(0, {});
  };
  each(m.messages, { outcome: ['delivered', 'rejected_by_backend', 'smuggling', 'too_large', 'aborted', 'backend_failed'] });
  each(m.protocolErrors, { kind: ['line_too_long', 'bad_bytes', 'bare_lf', 'bare_cr', 'bad_eod', 'unknown_verb', 'syntax', 'bad_sequence', 'early_talker', 'http', 'tls_on_plain', 'too_many_errors'] });
  each(m.smuggling, { kind: ['bare_lf', 'bare_cr', 'nul'], action: ['rejected', 'normalised'] });
  each(m.auth, { result: ['success', 'failure', 'aborted', 'refused'] });
  each(m.authGrants, { grant: ['relay', 'pass', 'not_listed', 'unproven'] });
  each(m.authCanaryRuns, { result: ['refused', 'accepted', 'not_offered', 'error'] });
  each(m.tlsHandshakes, { kind: ['starttls', 'implicit'], result: ['success', 'failure'] });
  each(m.limitStoreErrors, { store: ['redis'] });
  each(m.rulesReloads, { result: ['success', 'error'] });
  each(m.backendErrors, { kind: ['connect', 'timeout', 'closed', 'protocol'] });
  each(m.relayDenials, { rule: ['relay-denied', 'routing-tricks', 'encapsulated-address'] });
  each(m.rcptVerdicts, { verdict: ['reject'], mode: ['enforce'], rule: ['relay-denied', 'routing-tricks', 'encapsulated-address', 'recipient-unknown'] });
  each(m.rcptVerdicts, { verdict: ['accept'], mode: ['enforce'], rule: ['accepted-domains', 'relay-networks', 'authenticated'] });
  each(m.internalErrors, { where: ['session', 'admin', 'rules', 'limits'] });
  each(m.replies, { source: ['guard', 'backend'], class: ['2xx', '3xx', '4xx', '5xx'] });
  each(m.recipientLookups, { source: ['list', 'ldap', 'cache'], result: ['known', 'unknown', 'error'] });
  each(m.limitHits, { limit: ['none'], action: ['tempfail', 'close', 'tarpit', 'ban'] });
  each(m.commandRefusals, { rule: ['relay-denied', 'routing-tricks', 'recipient-unknown', 'too-many-recipients', 'verb-not-allowed', 'unknown-verb', 'command-syntax', 'line-too-long', 'early-talker', 'ban', 'smuggling'] });
  each(m.refusedVerbs, { verb: ['VRFY', 'EXPN', 'BDAT', 'TURN', 'ETRN', 'ATRN', 'XEXCH50', 'X-LINK2STATE', 'other'] });
  each(m.dnsblVerdicts, { verdict: ['pass', 'refuse'] });
  m.limitStoreFallback.set(0);
  m.bansActive.set({ source: 'manual' }, 0);
  m.bansActive.set({ source: 'automatic' }, 0);
}

export type Metrics = ReturnType<typeof createMetricsShape>;
