/**
 * BackendSeat: a client's place at the backend, as the session sees it. Two implementations, and
 * the session never asks which one it holds:
 *  - PerClientSeat (per-client-seat.ts): one backend session connected for this client at connect
 *    time (PROXY, backend STARTTLS, XCLIENT, XFORWARD run by the connector), its own until it ends;
 *  - PooledSeat (pooled-seat.ts): the guard greets; a pre-greeted backend session is borrowed for each
 *    transaction and given back after it, or kept for good once AUTH or a private verb went over it.
 *
 * What the session asks, in its own words: "a backend session for this connection / this
 * transaction / this AUTH" (open, forTransaction, dedicate), "give it back clean" (endTransaction),
 * "abandon it" (abandon: never an end-of-data), "the client is gone" (release), and "what do I tell
 * the client when it is lost" (replaceable: only the transaction is lost, or the connection).
 */
import type { Logger } from 'pino';
import type { Reply } from '../smtp/reply.js';
import type { BackendFailure, BackendLink } from './backend-link.js';

/** What a seat may know of its client (read when needed: HELO and login change during the session). */
export interface SeatClient {
  readonly clientIp: string;
  readonly clientPort: number;
  /** The guard address the client reached (an outbound PROXY header names it; read only then: a getsockname). */
  local?(): { readonly localIp?: string; readonly localPort?: number };
  /** The HELO/EHLO name the client gave last (undefined before one, and after STARTTLS). */
  helo(): string | undefined;
  /** The client said EHLO rather than HELO. */
  esmtp(): boolean;
  /** The identity the client authenticated as. */
  authUser(): string | undefined;
  /** How long the client has been idle between transactions (undefined: busy). Backend slot fairness. */
  idleMs?(): number | undefined;
  /** Close the client's connection now (421 4.4.2): its backend slot goes to another client. */
  shed?(): void;
}

export interface SeatEvents {
  /** The backend session the client holds closed by itself (not after abandon or release). */
  lost(failure: BackendFailure): void;
  /** The session's logger (with its sessionId): seat lines belong to the session's story. */
  log(): Logger;
}

export type SeatOpening =
  /** `source`: whether the greeting is the backend's (relayed) or the guard's own. */
  | { ok: true; greeting: Reply; source: 'backend' | 'guard' }
  /** No backend session for this client: the connection is refused with this reply (`outcome` names why). */
  | { ok: false; reply: Reply; outcome: 'capacity' | 'backend_unavailable' | 'closed' };

export interface BackendSeat {
  /** The backend session the client holds now: its own, or one lent for this transaction. */
  readonly link: BackendLink | undefined;
  /**
   * The backend session that is this client's for the whole connection, if any: HELO/EHLO, AUTH,
   * QUIT and private verbs go to it. Without one the guard answers HELO, EHLO and QUIT itself.
   */
  readonly own: BackendLink | undefined;
  /**
   * Losing the backend session now ends only the transaction (the client may start another on
   * another backend session: 451, no close); otherwise it ends the connection.
   */
  readonly replaceable: boolean;

  /** At connect: a backend session for this connection, or the guard's own greeting. */
  open(): Promise<SeatOpening>;
  /** At MAIL when the client holds none: a backend session for this transaction (undefined: none free in time). */
  forTransaction(): Promise<BackendLink | undefined>;
  /** AUTH or a private verb: a backend session that stays this client's, greeted with its HELO (undefined: none). */
  dedicate(inTransaction: boolean): Promise<BackendLink | undefined>;
  /** The transaction ended: give a lent backend session back (clean: nothing of this client's is left on it). */
  endTransaction(clean: boolean): void;
  /** Drop the backend session without ever sending it an end-of-data (invariant 3). */
  abandon(): void;
  /** The client is gone: mid-message or mid-transaction abandon, else QUIT politely or give back. */
  release(state: { inMessage: boolean; inTransaction: boolean }): void;
  /** The backend closed the session the client holds: drop it; true when only the transaction is lost. */
  dropLost(): boolean;
  /** The backend's capabilities, for an EHLO the guard answers itself (first line: the guard's name). */
  capabilities(): Reply;
  /** Silence allowed while the client holds a backend session others may wait for (undefined: no such bound). */
  readonly contendedIdleMs: number | undefined;
  /** A silent client holds a backend session others wait for: true (and logged) when it should go. */
  shedForWaiters(idleMs: number): boolean;
}

/** Makes one seat per client connection (guard.ts chooses the implementation). */
export interface BackendSeats {
  create(client: SeatClient, events: SeatEvents): BackendSeat;
}
