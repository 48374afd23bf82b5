/**
 * SessionTimers: every timer of one session — delays (tarpits, greeting delay, error delay), the
 * idle timer (command or DATA silence), the whole-session timer — all cleared by clear() on close.
 */
import type { SmtpSession } from './session.js';

export class SessionTimers {
  private readonly timers = new Set<NodeJS.Timeout>();
  private idleTimer: NodeJS.Timeout | undefined;
  /** When the armed idle timer fires (Date.now() clock). */
  private idleDue = 0;
  /** When the client last sent or was sent something (Date.now() clock). */
  idleSince = 0;

  constructor(private readonly s: SmtpSession) {}

  /** Run fn after ms unless the session closes first. */
  after(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  /** Cancel a timer made by after(). */
  cancel(t: NodeJS.Timeout): void {
    this.timers.delete(t);
    clearTimeout(t);
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.after(ms, resolve));
  }

  /** The whole session's deadline (timeouts.session). */
  armSession(): void {
    this.after(this.s.svc.timeouts.sessionMs, () => this.s.onTimeout('session'));
  }

  /**
   * Activity: the silence starts again now. The timer is not moved on every call (a session calls
   * this a dozen times per message): it is re-armed only when it would fire too late for the limit
   * that now applies; when it fires early, onIdleTimer measures the silence and arms for the rest.
   */
  resetIdle(): void {
    if (this.s.phase === 'closed' || this.s.phase === 'closing') return;
    const now = Date.now();
    this.idleSince = now;
    const ms = this.idleTimerMs(this.idleLimitMs());
    if (this.idleTimer === undefined || this.idleDue > now + ms) this.armIdle(ms);
  }

  clear(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    clearTimeout(this.idleTimer);
  }

  /** The silence allowed in this phase: the DATA timeout while reading a message, else the command timeout. */
  private idleLimitMs(): number {
    const { phase, svc } = this.s;
    return phase === 'data' || phase === 'discard' ? svc.timeouts.dataMs : svc.timeouts.commandMs;
  }

  /** When to look next: a client holding a backend session others may wait for is looked at sooner (onIdleTimer). */
  private idleTimerMs(leftMs: number): number {
    const contended = this.s.seat.contendedIdleMs;
    return contended !== undefined ? Math.min(leftMs, contended) : leftMs;
  }

  private armIdle(ms: number): void {
    clearTimeout(this.idleTimer);
    this.idleDue = Date.now() + ms;
    this.idleTimer = setTimeout(this.onIdleTimer, ms);
  }

  /**
   * The idle timer. A client that holds a lent backend session while others wait for one gets
   * only the seat's contended silence (the stress timeout), as Postfix shortens smtpd_timeout
   * under stress: a few silent clients in mid-transaction must not starve everyone else. Otherwise
   * the full command/DATA timeout applies.
   */
  private readonly onIdleTimer = (): void => {
    this.idleTimer = undefined;
    if (this.s.phase === 'closed' || this.s.phase === 'closing') return;
    const left = this.idleSince + this.idleLimitMs() - Date.now();
    if (left > 0 && !this.s.seat.shedForWaiters(Date.now() - this.idleSince)) {
      this.armIdle(this.idleTimerMs(left));
      return;
    }
    this.s.onTimeout('idle');
  };
}
