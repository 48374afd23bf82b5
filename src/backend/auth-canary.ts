/**
 * AuthCanary: does the backend accept ANY credentials? A legacy Exchange with the Guest account
 * enabled (or anonymous AUTH) answers 235 to junk, and the guard would then let anybody relay who
 * does STARTTLS + AUTH (issue 16). At start and every `authCanary.interval` the guard logs in
 * itself, with a random user name and password, on a backend session of its own (never one a
 * client uses, and closed afterwards). A 235 trips the canary: AUTH grants no relay (rule
 * auth-unproven, 451 4.7.0) until a later canary is refused. Logged as an error once per trip,
 * published as relay_guard_auth_canary_accepted and in /readyz and GET /api/v1/auth/canary.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import { ehloKeywords } from '../smtp/ehlo.js';
import { replyText, type Reply } from '../smtp/reply.js';
import { isFailure, type BackendFailure, type BackendLink } from './backend-link.js';
import { sendCommand } from './backend-tls.js';

/** refused: the backend refused junk (good); accepted: it took junk; not_offered: no AUTH; error: inconclusive. */
export type CanaryResult = 'refused' | 'accepted' | 'not_offered' | 'error';
export const CANARY_RESULTS: readonly CanaryResult[] = ['refused', 'accepted', 'not_offered', 'error'];

/** unknown until a run was conclusive; then the last conclusive result. */
export type CanaryState = 'off' | 'unknown' | 'refused' | 'accepted' | 'not_offered';

export interface CanaryRun {
  readonly at: string;
  readonly result: CanaryResult;
  readonly durationMs: number;
  readonly mechanism?: string;
  /** The backend's reply to the login (text capped), or why the run was inconclusive. */
  readonly detail?: string;
}

export interface CanarySnapshot {
  readonly enabled: boolean;
  readonly state: CanaryState;
  /** True while AUTH grants no relay because the backend accepted random credentials. */
  readonly accepted: boolean;
  readonly acceptedSince?: string;
  readonly intervalSeconds: number;
  readonly runs: number;
  readonly running: boolean;
  readonly lastRun?: CanaryRun;
  /** The last conclusive run (refused, accepted or not_offered). */
  readonly lastConclusive?: CanaryRun;
}

/** A backend session for one canary login, and how to let go of it (it is closed, never reused). */
export type CanaryLink = { link: BackendLink; release(): void } | { failure: string };

export interface AuthCanaryOptions {
  readonly enabled: boolean;
  readonly intervalMs: number;
  /** Name for the canary's own EHLO. */
  readonly ehloName: string;
  readonly openLink: () => Promise<CanaryLink>;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly now?: () => number;
}

const MAX_DETAIL = 200;

export class AuthCanary {
  private state: CanaryState;
  private acceptedSince: number | undefined;
  private runs = 0;
  private lastRun: CanaryRun | undefined;
  private lastConclusive: CanaryRun | undefined;
  private current: Promise<CanarySnapshot> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly now: () => number;

  constructor(private readonly opts: AuthCanaryOptions) {
    this.state = opts.enabled ? 'unknown' : 'off';
    this.now = opts.now ?? Date.now;
    opts.metrics.authCanaryAccepted.set(0);
    for (const result of CANARY_RESULTS) opts.metrics.authCanaryRuns.inc({ result }, 0);
  }

  /** AUTH grants no relay while this is true. */
  get accepted(): boolean {
    return this.state === 'accepted';
  }

  /**
   * The first run, awaited at most `waitMs` (a slow backend must not hold the listeners back: the
   * run finishes in the background), then one run every interval.
   */
  async start(waitMs: number): Promise<void> {
    if (!this.opts.enabled) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.run().then(() => undefined), new Promise<void>((r) => (timer = setTimeout(r, waitMs)))]);
    clearTimeout(timer);
    if (this.stopped) return;
    this.timer = setInterval(() => void this.run(), this.opts.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
  }

  /** Run now (a run already under way is shared). Never throws. */
  run(): Promise<CanarySnapshot> {
    if (!this.opts.enabled) return Promise.resolve(this.snapshot());
    this.current ??= this.runOnce().finally(() => {
      this.current = undefined;
    });
    return this.current;
  }

  snapshot(): CanarySnapshot {
    return {
      enabled: this.opts.enabled,
      state: this.state,
      accepted: this.accepted,
      ...(this.acceptedSince !== undefined ? { acceptedSince: new Date(this.acceptedSince).toISOString() } : {}),
      intervalSeconds: Math.round(this.opts.intervalMs / 1000),
      runs: this.runs,
      running: this.current !== undefined,
      ...(this.lastRun ? { lastRun: this.lastRun } : {}),
      ...(this.lastConclusive ? { lastConclusive: this.lastConclusive } : {}),
    };
  }

  private async runOnce(): Promise<CanarySnapshot> {
    const started = this.now();
    let outcome: { result: CanaryResult; mechanism?: string; detail?: string };
    try {
      outcome = await this.login();
    } catch (err) {
      outcome = { result: 'error', detail: `internal error: ${(err as Error).message}` };
      this.opts.log.error({ err }, 'auth canary failed');
    }
    const run: CanaryRun = {
      at: new Date(started).toISOString(),
      result: outcome.result,
      durationMs: this.now() - started,
      ...(outcome.mechanism ? { mechanism: outcome.mechanism } : {}),
      ...(outcome.detail ? { detail: outcome.detail.slice(0, MAX_DETAIL) } : {}),
    };
    this.record(run);
    return this.snapshot();
  }

  private record(run: CanaryRun): void {
    if (this.stopped) return;
    this.runs++;
    this.lastRun = run;
    this.opts.metrics.authCanaryRuns.inc({ result: run.result });
    const fields = { result: run.result, mechanism: run.mechanism, detail: run.detail, durationMs: run.durationMs };
    if (run.result === 'error') {
      // Inconclusive (backend down, busy, odd reply): the state stays as it was.
      this.opts.log.warn(fields, 'auth canary inconclusive');
      return;
    }
    this.lastConclusive = run;
    const was = this.state;
    this.state = run.result;
    if (run.result === 'accepted') {
      if (was !== 'accepted') {
        this.acceptedSince = Date.parse(run.at);
        // Once per trip: the state, the gauge and the alert carry it from here.
        this.opts.log.error(fields, 'auth canary accepted: the backend accepts random credentials; AUTH grants no relay until a canary is refused');
      } else this.opts.log.info(fields, 'auth canary run');
    } else {
      this.acceptedSince = undefined;
      if (was === 'accepted') this.opts.log.warn(fields, 'auth canary refused again: AUTH grants relay again');
      else this.opts.log.info(fields, 'auth canary run');
    }
    this.opts.metrics.authCanaryAccepted.set(this.state === 'accepted' ? 1 : 0);
  }

  /** One login with random credentials on a backend session of the canary's own. */
  private async login(): Promise<{ result: CanaryResult; mechanism?: string; detail?: string }> {
    const got = await this.opts.openLink();
    if ('failure' in got) return { result: 'error', detail: got.failure };
    const { link } = got;
    try {
      const ehlo = await sendCommand(link, 'EHLO', `EHLO ${this.opts.ehloName}`);
      if (isFailure(ehlo)) return { result: 'error', detail: `no reply to EHLO (${ehlo.failure})` };
      if (ehlo.code !== 250) return { result: 'error', detail: `EHLO refused: ${replyText(ehlo)}` };
      const offered = (ehloKeywords(ehlo).get('AUTH') ?? '').toUpperCase().split(/\s+/).filter(Boolean);
      if (!ehloKeywords(ehlo).has('AUTH')) return { result: 'not_offered' };
      const mechanism = offered.includes('PLAIN') ? 'PLAIN' : offered.includes('LOGIN') ? 'LOGIN' : undefined;
      if (!mechanism) return { result: 'error', detail: `no PLAIN or LOGIN among ${offered.join(' ')}` };
      // Random, and recognisable in the backend's log as the guard's own probe.
      const user = `relay-guard-canary-${randomBytes(6).toString('hex')}`;
      const password = randomBytes(18).toString('base64');
      const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
      let r: Reply | { failure: BackendFailure };
      if (mechanism === 'PLAIN') {
        r = await sendCommand(link, 'AUTH', `AUTH PLAIN ${b64(`\0${user}\0${password}`)}`);
      } else {
        r = await sendCommand(link, 'AUTH', 'AUTH LOGIN');
        if (!isFailure(r) && r.code === 334) r = await sendCommand(link, 'AUTH', b64(user));
        if (!isFailure(r) && r.code === 334) r = await sendCommand(link, 'AUTH', b64(password));
      }
      if (isFailure(r)) return { result: 'error', mechanism, detail: `no reply to AUTH (${r.failure})` };
      const detail = replyText(r);
      if (r.code === 235) return { result: 'accepted', mechanism, detail };
      if (r.code >= 500) return { result: 'refused', mechanism, detail };
      return { result: 'error', mechanism, detail };
    } finally {
      got.release();
    }
  }
}
