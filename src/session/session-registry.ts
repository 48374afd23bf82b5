/** Live sessions, for the admin API (list, close) and graceful shutdown. Bounded by the listeners' caps. */
export interface SessionInfo {
  readonly id: string;
  readonly listener: string;
  readonly clientIp: string;
  readonly clientPort: number;
  readonly helo: string | undefined;
  readonly mailFrom: string | undefined;
  readonly authUser: string | undefined;
  readonly tls: boolean;
  readonly state: string;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly messages: number;
  readonly startedAt: string;
  readonly ageSeconds: number;
  /**
   * The backend session this client's commands go over now ("serial:local port", as in the
   * transaction log line; with a lent backend session only while it is lent or dedicated to it).
   */
  readonly backendSession?: string;
}

export interface RegisteredSession {
  readonly id: string;
  info(): SessionInfo;
  /** Close with 421 (reason for the log). */
  terminate(reason: string): void;
  /** Shutdown: close now if idle, else after the current transaction. */
  drain(): void;
  /** Resolves when the session has ended. */
  readonly ended: Promise<void>;
}

/**
 * A registered session, held through a cell that remove() empties. V8 keeps the old backing table of
 * a Map that grew or was rehashed, with every entry it held, until a full GC; once the Map lives in
 * the old generation (after the first mark-compact), each of those dead tables keeps the sessions it
 * held alive through every young-generation GC in between. With a session added and removed per
 * connection, that was every closed session's objects (~10 KB) copied and promoted, about 1.9 MB per
 * scavenge in one-message connections. An emptied cell holds nothing.
 */
interface Held {
  session: RegisteredSession | undefined;
}

export class SessionRegistry {
  private readonly sessions = new Map<string, Held>();

  add(s: RegisteredSession): void {
    this.sessions.set(s.id, { session: s });
  }

  remove(id: string): void {
    const held = this.sessions.get(id);
    if (held) held.session = undefined;
    this.sessions.delete(id);
  }

  get(id: string): RegisteredSession | undefined {
    return this.sessions.get(id)?.session;
  }

  list(): SessionInfo[] {
    return this.all().map((s) => s.info());
  }

  get size(): number {
    return this.sessions.size;
  }

  all(): RegisteredSession[] {
    const out: RegisteredSession[] = [];
    for (const held of this.sessions.values()) if (held.session) out.push(held.session);
    return out;
  }
}
