/**
 * PolicyServiceClient: one Postfix policy service over TCP. Requests go over connections that are
 * kept open and reused (the protocol's point: "the server must not close the connection, so that
 * the same connection can be used multiple times"), at most `maxConnections`, one request at a time
 * each; further requests wait in a bounded queue.
 *
 * Bounded everything: each answer line and the whole answer have a size limit, each request a timeout
 * (waiting, connecting and answering together); a connection that breaks the protocol (too long,
 * bytes when no request is out) or times out is closed and never reused. A request whose reused
 * connection turns out closed by the server (idle timeout on its side) is sent once more on a new
 * one, as Postfix retries. Idle connections close after `maxIdleMs` and at `maxAgeMs` of age
 * (Postfix smtpd_policy_service_max_idle / max_ttl).
 */
import net from 'node:net';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import { actionLabel, parsePolicyAction, type ServiceAnswer } from './policy-action.js';
import { formatPolicyRequest, type PolicyRequestFacts } from './policy-request.js';

export const MAX_ANSWER_LINE_BYTES = 4096;
export const MAX_ANSWER_BYTES = 8192;
export const MAX_ANSWER_ATTRIBUTES = 32;

export type PolicyFailure = 'timeout' | 'connect' | 'closed' | 'protocol' | 'overload';

export type PolicyResult = { ok: true; attributes: Map<string, string>; action: string } | { ok: false; failure: PolicyFailure };

export interface PolicyServiceClientOptions {
  name: string;
  host: string;
  port: number;
  timeoutMs: number;
  onError: 'dunno' | 'tempfail';
  maxConnections?: number;
  maxWaiting?: number;
  maxIdleMs?: number;
  maxAgeMs?: number;
  policyContext?: string;
  metrics?: Metrics;
  log?: Logger;
}

interface Pending {
  wire: Buffer;
  deadline: number;
  timer: NodeJS.Timeout;
  resolve: (r: PolicyResult) => void;
  settled: boolean;
  retried: boolean;
}

class PolicyConnection {
  readonly socket: net.Socket;
  readonly openedAt = Date.now();
  private buf = '';
  private lines: string[] = [];
  private bytes = 0;
  current: Pending | undefined;
  /** Answers this connection carried: a close before the next answer's first byte is "stale", worth one retry. */
  served = 0;
  gotBytes = false;
  ready: Promise<boolean>;
  closed = false;
  idleTimer: NodeJS.Timeout | undefined;

  constructor(
    host: string,
    port: number,
    private readonly onAnswer: (c: PolicyConnection, r: PolicyResult) => void,
    private readonly onGone: (c: PolicyConnection, failure: PolicyFailure) => void,
  ) {
    this.socket = net.connect({ host, port });
    this.socket.setNoDelay(true);
    this.ready = new Promise((resolve) => {
      this.socket.once('connect', () => resolve(true));
      this.socket.once('error', () => resolve(false));
      this.socket.once('close', () => resolve(false));
    });
    this.socket.on('data', (d: Buffer) => this.onData(d));
    this.socket.on('error', () => this.gone('closed'));
    this.socket.on('close', () => this.gone('closed'));
  }

  send(p: Pending): void {
    this.current = p;
    this.gotBytes = false;
    this.buf = '';
    this.lines = [];
    this.bytes = 0;
    this.socket.write(p.wire);
  }

  private onData(d: Buffer): void {
    if (this.closed) return;
    if (!this.current) return this.gone('protocol'); // bytes nobody asked for: never trust this connection again
    this.gotBytes = true;
    this.bytes += d.length;
    if (this.bytes > MAX_ANSWER_BYTES) return this.gone('protocol');
    this.buf += d.toString('latin1');
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).replace(/\r$/, '');
      this.buf = this.buf.slice(nl + 1);
      if (line === '') {
        // The empty line ends the answer. A framed answer without a usable action is "garbage": DUNNO.
        const attributes = new Map<string, string>();
        for (const l of this.lines) {
          const eq = l.indexOf('=');
          if (eq > 0) attributes.set(l.slice(0, eq).toLowerCase(), l.slice(eq + 1));
        }
        const action = attributes.get('action') ?? this.lines.join(' ');
        if (this.buf.length > 0) {
          // More than one answer to one request: answer this one, then drop the connection.
          this.onAnswer(this, { ok: true, attributes, action });
          return this.gone('protocol');
        }
        this.lines = [];
        this.bytes = 0;
        return this.onAnswer(this, { ok: true, attributes, action });
      }
      if (this.lines.length >= MAX_ANSWER_ATTRIBUTES || line.includes('\0')) return this.gone('protocol');
      this.lines.push(line);
    }
    if (this.buf.length > MAX_ANSWER_LINE_BYTES) this.gone('protocol');
  }

  gone(failure: PolicyFailure): void {
    if (this.closed) return;
    this.closed = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.socket.destroy();
    this.onGone(this, failure);
  }
}

export class PolicyServiceClient {
  readonly name: string;
  readonly onError: 'dunno' | 'tempfail';
  private readonly idle: PolicyConnection[] = [];
  private readonly busy = new Set<PolicyConnection>();
  private readonly waiting: Pending[] = [];
  private readonly maxConnections: number;
  private readonly maxWaiting: number;
  private readonly maxIdleMs: number;
  private readonly maxAgeMs: number;
  private connecting = 0;
  private closed = false;

  constructor(private readonly opts: PolicyServiceClientOptions) {
    this.name = opts.name;
    this.onError = opts.onError;
    this.maxConnections = opts.maxConnections ?? 4;
    this.maxWaiting = opts.maxWaiting ?? this.maxConnections * 64;
    this.maxIdleMs = opts.maxIdleMs ?? 300_000;
    this.maxAgeMs = opts.maxAgeMs ?? 1_000_000;
    const m = opts.metrics;
    if (m) {
      for (const action of ['ok', 'dunno', 'reject', 'defer', 'defer_if_permit', 'defer_if_reject', 'code_4xx', 'code_5xx', 'prepend', 'unknown']) m.policyServiceAnswers.inc({ service: this.name, action }, 0);
      for (const kind of ['timeout', 'connect', 'closed', 'protocol', 'overload']) m.policyServiceErrors.inc({ service: this.name, kind }, 0);
    }
  }

  /** Ask the service; the answer as the stage evaluation wants it. Never throws. */
  async ask(facts: PolicyRequestFacts): Promise<ServiceAnswer> {
    const started = performance.now();
    const wire = formatPolicyRequest({ ...facts, policyContext: facts.policyContext ?? this.opts.policyContext });
    const r = await this.request(wire);
    const m = this.opts.metrics;
    m?.policyServiceDuration.observe({ service: this.name }, (performance.now() - started) / 1000);
    if (!r.ok) {
      m?.policyServiceErrors.inc({ service: this.name, kind: r.failure });
      this.opts.log?.warn({ policyService: this.name, failure: r.failure, onError: this.onError }, 'policy service did not answer');
      return { service: this.name, answered: false, failure: r.failure, onError: this.onError };
    }
    const action = parsePolicyAction(r.action);
    m?.policyServiceAnswers.inc({ service: this.name, action: actionLabel(action) });
    if (action.kind === 'unknown') this.opts.log?.warn({ policyService: this.name, action: r.action.slice(0, 200) }, 'policy service answered an unknown action: treated as DUNNO');
    return { service: this.name, answered: true, action, raw: r.action.slice(0, 512) };
  }

  /** Send one request; resolves with the answer or a failure within the timeout. */
  request(wire: Buffer): Promise<PolicyResult> {
    return new Promise((resolve) => {
      if (this.closed) return resolve({ ok: false, failure: 'closed' });
      const p: Pending = {
        wire,
        deadline: Date.now() + this.opts.timeoutMs,
        settled: false,
        retried: false,
        resolve: (r) => {
          if (p.settled) return;
          p.settled = true;
          clearTimeout(p.timer);
          resolve(r);
        },
        timer: setTimeout(() => this.timedOut(p), this.opts.timeoutMs),
      };
      if (this.waiting.length >= this.maxWaiting) return p.resolve({ ok: false, failure: 'overload' });
      this.waiting.push(p);
      this.dispatch();
    });
  }

  private timedOut(p: Pending): void {
    const i = this.waiting.indexOf(p);
    if (i >= 0) this.waiting.splice(i, 1);
    p.resolve({ ok: false, failure: 'timeout' });
    // The connection carrying it may still answer later: it can never be reused.
    for (const c of this.busy) if (c.current === p) c.gone('closed');
  }

  private dispatch(): void {
    while (this.waiting.length > 0) {
      let c = this.idle.pop();
      while (c && (c.closed || Date.now() - c.openedAt > this.maxAgeMs)) {
        if (!c.closed) c.gone('closed');
        c = this.idle.pop();
      }
      if (c) {
        if (c.idleTimer) clearTimeout(c.idleTimer);
        this.busy.add(c);
        c.send(this.waiting.shift()!);
        continue;
      }
      if (this.busy.size + this.connecting >= this.maxConnections) return;
      // Open one more connection; the next waiting request goes out on it once it is up.
      if (this.connecting >= this.waiting.length) return;
      this.open();
    }
  }

  private open(): void {
    this.connecting++;
    const conn = new PolicyConnection(this.opts.host, this.opts.port, (c, r) => this.answered(c, r), (c, f) => this.lost(c, f));
    void conn.ready.then((up) => {
      this.connecting--;
      if (!up) {
        // Connection refused or reset: every request waiting right now fails (nothing to wait for).
        const failed = this.waiting.splice(0, this.waiting.length);
        for (const p of failed) p.resolve({ ok: false, failure: 'connect' });
        return;
      }
      if (this.closed) return conn.gone('closed');
      this.idle.push(conn);
      this.dispatch();
      if (!this.busy.has(conn)) this.parkIdle(conn);
    });
  }

  private answered(c: PolicyConnection, r: PolicyResult): void {
    c.served++;
    const p = c.current;
    c.current = undefined;
    this.busy.delete(c);
    if (!c.closed && !this.closed) {
      this.idle.push(c);
      this.parkIdle(c);
    }
    p?.resolve(r);
    this.dispatch();
  }

  private parkIdle(c: PolicyConnection): void {
    if (c.idleTimer) clearTimeout(c.idleTimer);
    c.idleTimer = setTimeout(() => c.gone('closed'), this.maxIdleMs);
    c.idleTimer.unref();
  }

  private lost(c: PolicyConnection, failure: PolicyFailure): void {
    this.busy.delete(c);
    const i = this.idle.indexOf(c);
    if (i >= 0) this.idle.splice(i, 1);
    const p = c.current;
    c.current = undefined;
    if (p && !p.settled) {
      // A reused connection closed by the server before it said anything: try once more on a new one.
      if (failure === 'closed' && c.served > 0 && !c.gotBytes && !p.retried && Date.now() < p.deadline && !this.closed) {
        p.retried = true;
        this.waiting.unshift(p);
      } else p.resolve({ ok: false, failure });
    }
    this.dispatch();
  }

  /** Connections open (idle + busy), for tests and the admin view. */
  get openConnections(): number {
    return this.idle.length + this.busy.size;
  }

  close(): void {
    this.closed = true;
    for (const p of this.waiting.splice(0)) p.resolve({ ok: false, failure: 'closed' });
    for (const c of [...this.idle, ...this.busy]) c.gone('closed');
  }
}
