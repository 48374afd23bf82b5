/**
 * BackendPool: a few open, already-greeted backend sessions lent to clients one transaction at a
 * time (MAIL … end-of-data). Many clients share few backend connections — the backend's
 * per-source limit (Exchange: 20) is never exceeded — and a one-message client costs no backend
 * connect, greeting or EHLO.
 *
 * Discipline: never two transactions on one backend session at once; `max` connections in all
 * (lent, idle, opening and detached for AUTH); `minIdle` kept warm; idle sessions checked with
 * NOOP; a session the backend closed, or that answered unexpectedly, is replaced; a client waits
 * at most `acquireTimeoutMs` for a free session, then gets 451 4.3.0 (never a silent hang).
 *
 * Who the client is (issue 10): acquire(client) tells a backend that offers it, per transaction,
 * with Postfix XFORWARD (written right before MAIL, pipelined with it; Postfix logs it as
 * "orig_client=") or else XCLIENT + EHLO (before acquire resolves; skipped when the session already
 * carries exactly this client; Postfix then writes the client into Received: and applies its
 * client restrictions to it).
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { BackendLink, isFailure, type BackendLinkOptions, type BackendTarget } from './backend-link.js';
import { ehloKeywords } from '../smtp/ehlo.js';
import type { Reply } from '../smtp/reply.js';
import type { Metrics } from '../observability/metrics.js';
import { advertisedAttributes, formatXclientLines, xforwardBeforeMail, type ForwardedClient } from './xclient.js';
import { sendCommand } from './backend-tls.js';

/** Delay before a pooled session whose preparation (backend STARTTLS) failed is opened again. */
const PREPARE_RETRY_MS = 500;
const PREPARE_RETRY_MAX_MS = 30_000;

/** The client a transaction is for (XFORWARD / XCLIENT attributes). */
export type PoolClient = ForwardedClient;

export interface BackendPoolOptions {
  readonly targets: readonly BackendTarget[];
  readonly link: BackendLinkOptions;
  /** Name the guard gives in its EHLO to the backend. */
  readonly ehloName: string;
  readonly minIdle: number;
  readonly max: number;
  readonly acquireTimeoutMs: number;
  readonly healthIntervalMs: number;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Run on each new backend session after its greeting, before the pool's EHLO (backend STARTTLS); false drops it. */
  readonly prepare?: (link: BackendLink) => Promise<boolean>;
  /** Send XFORWARD before each MAIL when the backend session offers it (Postfix). */
  readonly xforward?: boolean;
  /** Else send XCLIENT (then EHLO again) when the backend session offers it (Postfix). */
  readonly xclient?: boolean;
}

/** One open backend session of the pool: idle, lent for one transaction, or dedicated to one client (AUTH). */
export interface PoolSessionInfo {
  readonly backendSession: string;
  readonly state: 'idle' | 'lent' | 'dedicated';
  readonly idleSeconds?: number;
}

export interface PoolSnapshot {
  readonly backend: string;
  readonly minIdle: number;
  readonly max: number;
  readonly idle: number;
  readonly lent: number;
  readonly dedicated: number;
  readonly opening: number;
  readonly waiting: number;
  readonly sessions: readonly PoolSessionInfo[];
}

interface IdleEntry {
  readonly link: BackendLink;
  since: number;
}

export class BackendPool extends EventEmitter {
  /** The backend's EHLO reply, learned from the first pooled session (unfiltered). */
  capabilities: Reply | undefined;
  private readonly idle: IdleEntry[] = [];
  private readonly lent = new Set<BackendLink>();
  private readonly detached = new Set<BackendLink>();
  private opening = 0;
  private readonly waiters: Array<(link: BackendLink | undefined) => void> = [];
  private healthTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  /** Preparations (backend STARTTLS) failed in a row. */
  private prepareFailures = 0;
  private closed = false;
  private readonly label: string;
  /** The XCLIENT lines a session last accepted: the client it carries now. */
  private readonly xclientKeys = new WeakMap<BackendLink, string>();
  /** Sessions whose refusal of XFORWARD/XCLIENT was already logged. */
  private readonly refusalLogged = new WeakSet<BackendLink>();

  constructor(private readonly opts: BackendPoolOptions) {
    super();
    this.label = opts.targets[0]?.name ?? 'backend';
    // The size gauges are read when metrics are collected (a scrape), not written per transaction.
    Object.assign(opts.metrics.poolSessions, { collect: () => this.publishGauges() });
  }

  /** Open the warm sessions; resolves once the first one answered (or all failed). */
  async start(): Promise<void> {
    const first = this.open('warm');
    for (let i = 1; i < this.opts.minIdle; i++) void this.open('warm');
    await first;
    this.healthTimer = setInterval(() => this.healthCheck(), Math.max(1000, Math.floor(this.opts.healthIntervalMs / 2)));
    this.healthTimer.unref();
  }

  /** Connections in all: idle, lent, detached and being opened. */
  get total(): number {
    return this.idle.length + this.lent.size + this.detached.size + this.opening;
  }

  /** Clients waiting for a free session now. */
  get waiting(): number {
    return this.waiters.length;
  }

  /** Open, greeted sessions (idle, lent or detached): the backend answered on each of them. */
  get live(): number {
    return this.idle.length + this.lent.size + this.detached.size;
  }

  get idleCount(): number {
    return this.idle.length;
  }

  /** What the admin API shows (GET /api/v1/pool): sizes, waiters, and every open backend session. */
  snapshot(now = Date.now()): PoolSnapshot {
    const sessions: PoolSessionInfo[] = [
      ...this.idle.map((e) => ({ backendSession: e.link.tag, state: 'idle' as const, idleSeconds: Math.round((now - e.since) / 1000) })),
      ...[...this.lent].map((l) => ({ backendSession: l.tag, state: 'lent' as const })),
      ...[...this.detached].map((l) => ({ backendSession: l.tag, state: 'dedicated' as const })),
    ];
    return {
      backend: this.label,
      minIdle: this.opts.minIdle,
      max: this.opts.max,
      idle: this.idle.length,
      lent: this.lent.size,
      dedicated: this.detached.size,
      opening: this.opening,
      waiting: this.waiters.length,
      sessions,
    };
  }

  /**
   * A backend session for one transaction, or undefined after acquireTimeoutMs (or when the
   * backend failed while being told who `client` is: the session is then discarded).
   */
  async acquire(client?: PoolClient): Promise<BackendLink | undefined> {
    const link = await this.take();
    if (!link || !client || (!this.opts.xforward && !this.opts.xclient)) return link;
    if (await this.tellBackend(link, client)) return link;
    return undefined;
  }

  private take(): Promise<BackendLink | undefined> {
    if (this.closed) return Promise.resolve(undefined);
    const entry = this.idle.pop();
    if (entry) {
      this.lend(entry.link);
      this.topUp();
      return Promise.resolve(entry.link);
    }
    return new Promise((resolve) => {
      let done = false;
      const timer = setTimeout(() => {
        if (done) return;
        done = true;
        const i = this.waiters.indexOf(handoff);
        if (i >= 0) this.waiters.splice(i, 1);
        this.opts.metrics.poolWaits.inc({ result: 'timeout' });
        resolve(undefined);
      }, this.opts.acquireTimeoutMs);
      const handoff = (link: BackendLink | undefined) => {
        if (done) {
          if (link) this.giveBack(link);
          return;
        }
        done = true;
        clearTimeout(timer);
        this.opts.metrics.poolWaits.inc({ result: 'got' });
        resolve(link);
      };
      this.waiters.push(handoff);
      this.topUp();
    });
  }

  /**
   * Give a session back after a transaction. `clean`: the transaction ended with the backend's reply
   * to end-of-data, or never started; otherwise the session is RSET first (RFC 5321 §4.1.1.5).
   */
  release(link: BackendLink, clean: boolean): void {
    if (!this.lent.delete(link)) return;
    if (link.isClosed || this.closed) {
      this.topUp();
      return;
    }
    if (link.awaiting('DATA') || link.inMessage) {
      // Given back in the middle of a message (the client was cut off or banned after DATA): an
      // RSET would be read as message text, and so would the next client's commands. Never reuse it.
      this.replace(link, 'unexpected_reply');
      return;
    }
    // Clean and quiet: straight back. Commands still unanswered on it (pipelined behind a refused
    // MAIL): RSET after them, and back only when that is answered, so no reply is left for the next client.
    if (clean && link.outstanding === 0) {
      this.giveBack(link);
      return;
    }
    this.lent.add(link);
    link.send('RSET', Buffer.from('RSET\r\n'), (r) => {
      this.lent.delete(link);
      if (isFailure(r) || r.code !== 250) {
        this.replace(link, 'unexpected_reply');
        return;
      }
      this.giveBack(link);
    });
  }

  /** Drop a lent session that must not be reused (aborted mid-DATA, backend failure). */
  discard(link: BackendLink, reason: 'closed' | 'unexpected_reply'): void {
    if (!this.lent.delete(link) && !this.detached.delete(link)) return;
    this.replace(link, reason);
  }

  /** Take a lent session out of the pool for one client for good (AUTH binds it to that client). */
  detach(link: BackendLink): void {
    if (!this.lent.delete(link)) return;
    this.detached.add(link);
    link.once('closed', () => {
      this.detached.delete(link);
      this.topUp();
    });
    this.topUp();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.healthTimer);
    clearTimeout(this.retryTimer);
    for (const w of this.waiters.splice(0)) w(undefined);
    for (const e of this.idle.splice(0)) e.link.close(true);
  }

  private lend(link: BackendLink): void {
    this.lent.add(link);
  }

  /**
   * XFORWARD when offered and configured (hooked before the next MAIL), else XCLIENT + EHLO. False
   * when the backend failed or answered out of step: the session is then discarded.
   */
  private async tellBackend(link: BackendLink, client: PoolClient): Promise<boolean> {
    link.beforeMail = undefined;
    const caps = link.capabilities;
    if (this.opts.xforward && caps.has('XFORWARD')) {
      link.beforeMail = xforwardBeforeMail(() => client, (l, r) => this.refused(l, 'XFORWARD', r));
      return true;
    }
    if (!this.opts.xclient || !caps.has('XCLIENT')) return true;
    const advertised = advertisedAttributes(caps.get('XCLIENT'));
    const lines = formatXclientLines(client, advertised);
    const key = lines.join('\n');
    if (lines.length === 0 || this.xclientKeys.get(link) === key) return true;
    // Postfix takes the HELO name from the EHLO that must follow XCLIENT, not from XCLIENT's HELO
    // attribute (seen with Postfix 3.7): that EHLO gives the client's own name.
    const ehloName = client.helo !== '' && !/\s/.test(client.helo) ? client.helo : this.opts.ehloName;
    let r = await this.xclient(link, lines, ehloName);
    let reason = 'no reply, or out of step';
    if (r === 'refused' && this.xclientKeys.has(link)) {
      reason = 'refused while the session carries another client';
      // The session still carries another client: fall back to the address alone, else drop it.
      const bare = formatXclientLines(client, new Set(['ADDR', 'PORT'].filter((a) => advertised.has(a))));
      r = bare.length > 0 ? await this.xclient(link, bare, ehloName) : 'failed';
      if (r === 'refused') r = 'failed';
    }
    if (r === 'refused') return true;
    if (r === 'failed') {
      this.opts.log.warn({ backendSession: link.tag, reason }, 'pool: backend session dropped during XCLIENT');
      this.discard(link, link.isClosed ? 'closed' : 'unexpected_reply');
      return false;
    }
    this.xclientKeys.set(link, key);
    return true;
  }

  /**
   * XCLIENT lines, then EHLO: Postfix answers XCLIENT with a new 220 greeting and the client must
   * say EHLO again (XCLIENT_README).
   */
  private async xclient(link: BackendLink, lines: readonly string[], ehloName: string): Promise<'sent' | 'refused' | 'failed'> {
    let accepted = 0;
    for (const line of lines) {
      const r = await sendCommand(link, 'XCLIENT', line);
      if (isFailure(r)) return 'failed';
      if (r.code !== 220 && r.code !== 250) {
        this.refused(link, 'XCLIENT', r);
        if (accepted === 0) return 'refused';
        break;
      }
      accepted++;
    }
    this.xclientKeys.delete(link);
    const e = await sendCommand(link, 'EHLO', `EHLO ${ehloName}`);
    if (isFailure(e) || e.code !== 250) return 'failed';
    link.pipelining = link.capabilities.has('PIPELINING');
    return accepted === lines.length ? 'sent' : 'failed';
  }

  private refused(link: BackendLink, verb: string, r: Reply): void {
    if (this.refusalLogged.has(link)) return;
    this.refusalLogged.add(link);
    this.opts.log.warn({ backendSession: link.tag, verb, code: r.code, reply: r.lines.join(' ').slice(0, 200) }, `pool: backend refused ${verb}; it sees the guard as the client`);
  }

  private giveBack(link: BackendLink): void {
    // An XFORWARD hook belongs to the transaction that borrowed the session.
    link.beforeMail = undefined;
    if (this.closed || link.isClosed) {
      link.close(true);
      return;
    }
    const waiter = this.waiters.shift();
    if (waiter) {
      this.lend(link);
      waiter(link);
      return;
    }
    this.idle.push({ link, since: Date.now() });
  }

  private replace(link: BackendLink, reason: 'closed' | 'unexpected_reply' | 'health_check'): void {
    link.close(false);
    this.opts.metrics.poolReplacements.inc({ reason });
    this.topUp();
  }

  /** Keep minIdle warm and serve waiters, within max. */
  private topUp(): void {
    if (this.closed) return;
    const want = Math.max(this.opts.minIdle - this.idle.length - this.opening, this.waiters.length - this.opening);
    for (let i = 0; i < want && this.total < this.opts.max; i++) void this.open(this.waiters.length > 0 ? 'demand' : 'warm');
  }

  private async open(why: 'warm' | 'demand'): Promise<void> {
    if (this.total >= this.opts.max) return;
    this.opening++;
    const started = performance.now();
    const r = await BackendLink.connect(this.opts.targets, this.opts.link);
    if (!r.ok) {
      this.opening--;
      this.opts.metrics.backendErrors.inc({ kind: r.failure === 'timeout' ? 'timeout' : 'connect' });
      this.opts.metrics.backendUp.set({ backend: this.label }, 0);
      this.opts.log.warn({ failure: r.failure, why }, 'pool: backend connect failed');
      // Waiters time out by themselves; do not spin on a dead backend.
      return;
    }
    const link = r.link;
    const greeted = r.greeting.code === 220;
    const prepared = greeted && (!this.opts.prepare || (await this.opts.prepare(link)));
    if (greeted && !prepared) {
      // The backend leg's STARTTLS failed (a bad certificate, or plaintext after its 220): this
      // session is dropped, never used. Another is opened a little later (not at once: a backend
      // that always fails must not be hammered).
      this.opts.metrics.poolReplacements.inc({ reason: 'tls_failed' });
      this.retrySoon();
    }
    const ready = await new Promise<boolean>((resolve) => {
      if (!prepared || link.isClosed) return resolve(false);
      link.send('EHLO', Buffer.from(`EHLO ${this.opts.ehloName}\r\n`, 'latin1'), (e) => {
        if (isFailure(e) || e.code !== 250) return resolve(false);
        this.capabilities = e;
        link.pipelining = ehloKeywords(e).has('PIPELINING');
        resolve(true);
      });
    });
    this.opening--;
    if (!ready || this.closed) {
      link.close(!this.closed);
      return;
    }
    this.prepareFailures = 0;
    this.opts.metrics.backendConnectDuration.observe((performance.now() - started) / 1000);
    this.opts.metrics.backendUp.set({ backend: this.label }, 1);
    this.opts.metrics.backendConnections.inc({ backend: this.label });
    link.once('closed', () => {
      this.opts.metrics.backendConnections.dec({ backend: this.label });
      const i = this.idle.findIndex((e) => e.link === link);
      if (i >= 0) {
        // The backend closed an idle session (its idle timeout, a restart): replace it quietly.
        this.idle.splice(i, 1);
        this.opts.metrics.poolReplacements.inc({ reason: 'closed' });
        this.topUp();
      }
    });
    this.giveBack(link);
  }

  /**
   * topUp once, later (one timer at a time): PREPARE_RETRY_MS after the first failure in a row,
   * doubling with each further one up to PREPARE_RETRY_MAX_MS; a prepared session resets it.
   */
  private retrySoon(): void {
    this.prepareFailures++;
    if (this.retryTimer !== undefined || this.closed) return;
    const delay = Math.min(PREPARE_RETRY_MS * 2 ** Math.min(this.prepareFailures - 1, 16), PREPARE_RETRY_MAX_MS);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.topUp();
    }, delay);
    this.retryTimer.unref();
  }

  private healthCheck(): void {
    const now = Date.now();
    for (const e of [...this.idle]) {
      if (now - e.since < this.opts.healthIntervalMs) continue;
      const i = this.idle.indexOf(e);
      if (i < 0) continue;
      this.idle.splice(i, 1);
      this.lent.add(e.link);
      e.link.send('NOOP', Buffer.from('NOOP\r\n'), (r) => {
        this.lent.delete(e.link);
        if (isFailure(r) || r.code !== 250) this.replace(e.link, 'health_check');
        else this.giveBack(e.link);
      });
    }
  }

  private publishGauges(): void {
    this.opts.metrics.poolSessions.set({ backend: this.label, state: 'idle' }, this.idle.length);
    this.opts.metrics.poolSessions.set({ backend: this.label, state: 'busy' }, this.lent.size + this.detached.size);
  }
}
