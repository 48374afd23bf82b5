/**
 * Backend slots of per-client mode (issue 16 item 4). Exchange accepts 20 connections per source
 * address by default and sees every client as the guard, so the guard caps its backend connections
 * (backend.maxConnections). Without more, 20 idle sessions from one address would lock every other
 * client out until they time out. So each client address and prefix (/24 IPv4, /64 IPv6) has a
 * share (backend.maxPerAddress, backend.maxPerPrefix), enforced when the slots run out:
 *  - while slots are free anyone may take one (a single busy MTA is not slowed for nothing);
 *  - at the cap ("under stress", Postfix's stress mode) a client already at its share is refused
 *    (421 4.7.0); one within its share takes the slot of an idle session (between transactions) of
 *    an address over its share or more crowded than its own — the most crowded first, then the
 *    longest idle — which is closed with 421 4.4.2; only when none can be shed is it refused;
 *  - under stress every session idle between transactions keeps its slot only backend.stressTimeout
 *    (the per-client seat's idle check, per-client-seat.ts).
 */
import { formatIp, maskIp, parseHostAddress } from '../util/ip-address.js';
import { remembered } from '../util/remembered.js';

/** A session holding a slot, as the capacity sees it. */
export interface SlotHolder {
  /** How long the session has been idle between transactions (undefined: busy, never shed). */
  idleMs(): number | undefined;
  /** Close the session now (421), giving the slot up. */
  shed(): void;
}

export interface SlotShare {
  /** Most slots one client address may hold. */
  readonly maxPerAddress: number;
  /** Most slots one prefix (/24 IPv4, /64 IPv6) may hold. */
  readonly maxPerPrefix: number;
}

export type SlotRefusal = 'address' | 'prefix' | 'full';
export type SlotAcquired = { ok: true; release: () => void } | { ok: false; why: SlotRefusal };

interface Slot {
  readonly address: string;
  readonly prefix: string;
  /** Emptied on release: the set's dead backing tables may still hold the slot (session-registry.ts says why that matters). */
  holder: SlotHolder | undefined;
  released: boolean;
}

export class BackendCapacity {
  private readonly slots = new Set<Slot>();
  private readonly byAddress = new Map<string, number>();
  private readonly byPrefix = new Map<string, number>();
  private readonly share: SlotShare;

  constructor(
    private readonly max: number,
    share: Partial<SlotShare> = {},
  ) {
    this.share = { maxPerAddress: share.maxPerAddress ?? max, maxPerPrefix: share.maxPerPrefix ?? max };
  }

  /** A slot with no client address (tests, tools): only the cap applies. */
  tryAcquire(): (() => void) | undefined {
    const r = this.acquire(undefined, undefined);
    return r.ok ? r.release : undefined;
  }

  /**
   * A slot for this client, within its address's and prefix's share; at the cap an idle session of
   * a more crowded prefix is shed first.
   */
  acquire(clientIp: string | undefined, holder: SlotHolder | undefined): SlotAcquired {
    const { address, prefix } = keysOf(clientIp);
    const inAddress = this.byAddress.get(address) ?? 0;
    const inPrefix = this.byPrefix.get(prefix) ?? 0;
    if (this.slots.size >= this.max) {
      // At the cap: a client already at its share waits its turn; one within it takes the slot of an
      // idle session of a more crowded address or prefix.
      if (clientIp !== undefined && inAddress >= this.share.maxPerAddress) return { ok: false, why: 'address' };
      if (clientIp === undefined || !this.shedFor(inAddress, inPrefix)) return { ok: false, why: inPrefix >= this.share.maxPerPrefix ? 'prefix' : 'full' };
    }
    const slot: Slot = { address, prefix, holder, released: false };
    this.slots.add(slot);
    this.byAddress.set(address, inAddress + 1);
    this.byPrefix.set(prefix, inPrefix + 1);
    return { ok: true, release: () => this.free(slot) };
  }

  /** The cap is reached: idle sessions get only the stress timeout. */
  get stressed(): boolean {
    return this.slots.size >= this.max;
  }

  get inUse(): number {
    return this.slots.size;
  }

  /**
   * Shed the idle session of the most crowded address (then prefix, then the longest idle), if that
   * address holds more than its share or more slots than the newcomer would, or its prefix does.
   */
  private shedFor(newcomerAddress: number, newcomerPrefix: number): boolean {
    let victim: { slot: Slot; a: number; p: number; idle: number } | undefined;
    for (const slot of this.slots) {
      const idle = slot.holder?.idleMs();
      if (idle === undefined) continue;
      const a = this.byAddress.get(slot.address) ?? 0;
      const p = this.byPrefix.get(slot.prefix) ?? 0;
      // A neighbour in the newcomer's own prefix is crowded when its address holds more than the newcomer would.
      const crowded = a > this.share.maxPerAddress || a > newcomerAddress + 1 || (p > this.share.maxPerPrefix && p > newcomerPrefix + 1);
      if (!crowded) continue;
      if (!victim || a > victim.a || (a === victim.a && (p > victim.p || (p === victim.p && idle > victim.idle)))) victim = { slot, a, p, idle };
    }
    if (!victim) return false;
    const holder = victim.slot.holder;
    this.free(victim.slot);
    holder?.shed();
    return true;
  }

  private free(slot: Slot): void {
    if (slot.released) return;
    slot.released = true;
    slot.holder = undefined;
    this.slots.delete(slot);
    decrement(this.byAddress, slot.address);
    decrement(this.byPrefix, slot.prefix);
  }
}

function decrement(map: Map<string, number>, key: string): void {
  const n = (map.get(key) ?? 0) - 1;
  if (n <= 0) map.delete(key);
  else map.set(key, n);
}

const UNKNOWN_CLIENT = { address: '?', prefix: '?' } as const;

/** Address and prefix keys (/24, /64); a missing or unparseable address shares one key. */
function keysOf(clientIp: string | undefined): { readonly address: string; readonly prefix: string } {
  return clientIp === undefined ? UNKNOWN_CLIENT : keysOfAddress(clientIp);
}

/** The same few client addresses connect over and over: their keys are worked out once. */
const keysOfAddress = remembered((clientIp: string): { readonly address: string; readonly prefix: string } => {
  const a = parseHostAddress(clientIp);
  if (!a) return UNKNOWN_CLIENT;
  return { address: formatIp(a), prefix: `${formatIp(maskIp(a, a.family === 4 ? 24 : 64))}/${a.family === 4 ? 24 : 64}` };
});
