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

export class SessionRegistry {
  private readonly sessions = new Map<string, RegisteredSession>();

  add(s: RegisteredSession): void {
    this.sessions.set(s.id, s);
  }

  remove(id: string): void {
    this.sessions.delete(id);
  }

  get(id: string): RegisteredSession | undefined {
    return this.sessions.get(id);
  }

  list(): SessionInfo[] {
    return [...this.sessions.values()].map((s) => s.info());
  }

  get size(): number {
    return this.sessions.size;
  }

  all(): RegisteredSession[] {
    return [...this.sessions.values()];
  }
}
