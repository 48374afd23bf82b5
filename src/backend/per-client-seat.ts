/**
 * PerClientSeat: each client gets its own backend session at connect time, within the backend
 * slot cap (BackendCapacity), through the connector (PROXY, backend STARTTLS, XCLIENT, XFORWARD).
 * It is the client's until the connection ends; losing it ends the connection.
 */
import type { Metrics } from '../observability/metrics.js';
import { reply, type Reply } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import type { BackendCapacity } from './backend-capacity.js';
import type { BackendFailure, BackendLink } from './backend-link.js';
import type { BackendConnector } from './connector.js';
import type { BackendSeat, BackendSeats, SeatClient, SeatEvents, SeatOpening } from './seat.js';

export interface PerClientSeatsOptions {
  readonly connector: BackendConnector;
  readonly capacity: BackendCapacity;
  /** Under stress (every slot taken) an idle client keeps its slot only this long (backend.stressTimeout). */
  readonly stressIdleMs?: number;
  readonly metrics: Metrics;
  readonly hostname: string;
}

export class PerClientSeats implements BackendSeats {
  constructor(private readonly opts: PerClientSeatsOptions) {}

  create(client: SeatClient, events: SeatEvents): BackendSeat {
    return new PerClientSeat(this.opts, client, events);
  }
}

class PerClientSeat implements BackendSeat {
  private current: BackendLink | undefined;
  private releaseSlot: (() => void) | undefined;
  /** Closed by the guard (abandoned or quit): its 'closed' event is no loss to report. */
  private abandoned = false;
  private released = false;
  readonly replaceable = false;

  constructor(
    private readonly opts: PerClientSeatsOptions,
    private readonly client: SeatClient,
    private readonly events: SeatEvents,
  ) {}

  get link(): BackendLink | undefined {
    return this.current;
  }

  get own(): BackendLink | undefined {
    return this.current;
  }

  async open(): Promise<SeatOpening> {
    const client = this.client;
    const holder = client.idleMs && client.shed ? { idleMs: () => client.idleMs!(), shed: () => client.shed!() } : undefined;
    const slot = this.opts.capacity.acquire(client.clientIp, holder);
    if (!slot.ok) {
      if (slot.why !== 'full') this.events.log().info({ ruleId: 'backend-client-share', share: slot.why }, 'backend slot refused: client share reached');
      return { ok: false, reply: slot.why === 'full' ? R.CAPACITY : R.CAPACITY_PER_CLIENT, outcome: 'capacity' };
    }
    this.releaseSlot = slot.release;
    const { clientIp, clientPort } = this.client;
    const local = this.opts.connector.namesLocalAddress ? this.client.local?.() : undefined;
    const res = await this.opts.connector.connect({ clientIp, clientPort, ...local });
    if (this.released) {
      if (res.ok) res.link.close(true);
      return { ok: false, reply: R.BACKEND_UNAVAILABLE, outcome: 'closed' };
    }
    if (!res.ok) {
      this.opts.metrics.backendErrors.inc({ kind: res.failure === 'timeout' ? 'timeout' : 'connect' });
      this.events.log().warn({ failure: res.failure, backend: res.target?.name ?? res.target?.host }, 'backend unavailable');
      return { ok: false, reply: R.BACKEND_UNAVAILABLE, outcome: 'backend_unavailable' };
    }
    this.current = res.link;
    res.link.on('closed', (failure: BackendFailure) => {
      if (!this.abandoned) this.events.lost(failure);
    });
    return { ok: true, greeting: res.greeting, source: 'backend' };
  }

  /** Never asked: the client's own backend session carries every transaction. */
  async forTransaction(): Promise<BackendLink | undefined> {
    return this.current;
  }

  async dedicate(): Promise<BackendLink | undefined> {
    return this.current;
  }

  endTransaction(): void {}

  abandon(): void {
    this.abandoned = true;
    this.current?.close(false);
  }

  release(state: { inMessage: boolean; inTransaction: boolean }): void {
    this.released = true;
    const link = this.current;
    if (link && !link.isClosed) {
      if (state.inMessage || state.inTransaction) this.abandon();
      else {
        this.abandoned = true;
        link.close(true);
      }
    }
    this.releaseSlot?.();
  }

  dropLost(): boolean {
    return false;
  }

  capabilities(): Reply {
    return reply(250, undefined, this.opts.hostname, 'PIPELINING', '8BITMIME', 'ENHANCEDSTATUSCODES');
  }

  /** Looked at every stressTimeout while idle: the slot may be wanted (the cap is reached). */
  get contendedIdleMs(): number | undefined {
    return this.opts.stressIdleMs;
  }

  /** Under stress an idle client (between transactions) keeps its slot only stressTimeout. */
  shedForWaiters(idleMs: number): boolean {
    const stress = this.opts.stressIdleMs;
    if (stress === undefined || !this.opts.capacity.stressed || idleMs < stress || this.client.idleMs?.() === undefined) return false;
    this.events.log().info({ idleMs, inUse: this.opts.capacity.inUse }, 'backend slots under stress: idle client gives its slot up');
    return true;
  }
}
