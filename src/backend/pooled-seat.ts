/**
 * PooledSeat: the guard greets the client itself; a pre-greeted backend session is borrowed from
 * the BackendPool for each transaction (MAIL … end-of-data) and given back after it. AUTH or a
 * private verb binds a backend session to the client for good (dedicate): from then on it behaves
 * like the client's own session, and losing it ends the connection.
 */
import type { BackendFailure, BackendLink } from './backend-link.js';
import type { BackendPool } from './backend-pool.js';
import { isFailure } from './backend-link.js';
import { reply, type Reply } from '../smtp/reply.js';
import type { BackendSeat, BackendSeats, SeatClient, SeatEvents, SeatOpening } from './seat.js';

export interface PooledSeatsOptions {
  readonly pool: BackendPool;
  readonly hostname: string;
  /** backend.pool.stressTimeout: the silence allowed to a client holding a lent session while others wait. */
  readonly stressIdleMs: number;
}

/** Client strings in logs are capped. */
function cap(s: string | undefined, n = 256): string | undefined {
  return s === undefined ? undefined : s.length > n ? `${s.slice(0, n)}…` : s;
}

export class PooledSeats implements BackendSeats {
  constructor(private readonly opts: PooledSeatsOptions) {}

  create(client: SeatClient, events: SeatEvents): BackendSeat {
    return new PooledSeat(this.opts, client, events);
  }
}

class PooledSeat implements BackendSeat {
  private current: BackendLink | undefined;
  /** The lent backend session's 'closed' listener, removed when it is given back. */
  private readonly onClosed = (failure: BackendFailure): void => {
    if (!this.abandoned) this.events.lost(failure);
  };
  /** The client holds its backend session for good (AUTH, a private verb). */
  private dedicated = false;
  private abandoned = false;
  private released = false;

  constructor(
    private readonly opts: PooledSeatsOptions,
    private readonly client: SeatClient,
    private readonly events: SeatEvents,
  ) {}

  get link(): BackendLink | undefined {
    return this.current;
  }

  get own(): BackendLink | undefined {
    return this.dedicated ? this.current : undefined;
  }

  get replaceable(): boolean {
    return !this.dedicated;
  }

  private get lent(): boolean {
    return this.current !== undefined && !this.dedicated;
  }

  get contendedIdleMs(): number | undefined {
    return this.lent ? this.opts.stressIdleMs : undefined;
  }

  async open(): Promise<SeatOpening> {
    return { ok: true, greeting: reply(220, undefined, `${this.opts.hostname} ESMTP`), source: 'guard' };
  }

  async forTransaction(): Promise<BackendLink | undefined> {
    const { pool } = this.opts;
    const login = this.client.authUser();
    const link = await pool.acquire({
      clientIp: this.client.clientIp,
      clientPort: this.client.clientPort,
      helo: this.client.helo() ?? '',
      esmtp: this.client.esmtp(),
      ...(login !== undefined ? { login } : {}),
    });
    if (!link) {
      this.events.log().warn({}, 'pool: no backend session for this transaction (see the pool log for why)');
      return undefined;
    }
    if (this.released) {
      pool.release(link, true);
      return undefined;
    }
    this.abandoned = false;
    this.current = link;
    link.on('closed', this.onClosed);
    // The transaction's own line (message accepted / rejected by backend) carries backendSession;
    // every lending is logged at debug level (a line per message at info costs a measurable share).
    const log = this.events.log();
    if (log.isLevelEnabled('debug')) log.debug({ backendSession: link.tag, backendPort: link.socket.localPort, clientPort: this.client.clientPort, helo: cap(this.client.helo()) }, 'pool: backend session lent');
    return link;
  }

  /**
   * A backend session out of the pool for this client for good — the one it holds (never to be lent
   * on after AUTH or a private verb went over it), else a free one — greeted with the client's HELO
   * (not in mid-transaction: EHLO would reset it).
   */
  async dedicate(inTransaction: boolean): Promise<BackendLink | undefined> {
    if (this.dedicated) return this.current;
    const held = this.current;
    const link = held ?? (await this.forTransaction());
    if (!link) return undefined;
    this.opts.pool.detach(link);
    this.dedicated = true;
    if (held && inTransaction) return link;
    const r = await new Promise<Reply | undefined>((resolve) =>
      link.send('EHLO', Buffer.from(`EHLO ${this.client.helo() ?? this.opts.hostname}\r\n`, 'latin1'), (e) => resolve(isFailure(e) ? undefined : e)),
    );
    return r && r.code === 250 ? link : undefined;
  }

  endTransaction(clean: boolean): void {
    const link = this.current;
    if (!link || this.dedicated) return;
    link.off('closed', this.onClosed);
    this.current = undefined;
    if (link.isClosed) this.opts.pool.discard(link, 'closed');
    else this.opts.pool.release(link, clean);
  }

  abandon(): void {
    const link = this.current;
    if (link && !this.dedicated) {
      link.off('closed', this.onClosed);
      this.current = undefined;
      this.opts.pool.discard(link, 'unexpected_reply');
      return;
    }
    this.abandoned = true;
    link?.close(false);
  }

  release(state: { inMessage: boolean; inTransaction: boolean }): void {
    this.released = true;
    const link = this.current;
    if (!link || link.isClosed) return;
    if (!this.dedicated) {
      // An interrupted DATA poisons the backend session; anything else is RSET and reused.
      if (state.inMessage) this.abandon();
      else this.endTransaction(!state.inTransaction);
    } else if (state.inMessage || state.inTransaction) this.abandon();
    else {
      this.abandoned = true;
      link.close(true);
    }
  }

  dropLost(): boolean {
    const link = this.current;
    if (!link || this.dedicated) return false;
    link.off('closed', this.onClosed);
    this.current = undefined;
    this.opts.pool.discard(link, 'closed');
    return true;
  }

  capabilities(): Reply {
    const hostname = this.opts.hostname;
    const caps = this.opts.pool.capabilities ?? reply(250, undefined, hostname, 'PIPELINING', '8BITMIME', 'ENHANCEDSTATUSCODES');
    return { ...caps, lines: [hostname, ...caps.lines.slice(1)] };
  }

  shedForWaiters(idleMs: number): boolean {
    if (!this.lent || this.opts.pool.waiting === 0) return false;
    this.events.log().info({ idleMs, waiting: this.opts.pool.waiting }, 'pool: silent client released its backend session for waiting clients');
    return true;
  }
}
