/**
 * RefusalRing: the most recent refusals, newest first, for the admin console's "who is trying and why".
 * Fed from exactly where the session writes its 'rcpt refused' and 'sender refused' log lines, with
 * the same fields those lines hold (client, HELO, sender, recipient, rule id, reply; the AUTH user
 * name, which the 'authenticated' line holds): never a message body, never an AUTH secret.
 * Bounded (invariant 4): a fixed-size array overwritten in a circle, each string capped as in the log.
 */

/** What the session hands over: one refused MAIL, RCPT or DATA, or a client refused at connect (DNS lists). */
export interface RefusalRecord {
  kind: 'rcpt' | 'sender' | 'data' | 'connect';
  sessionId: string;
  clientIp: string;
  listener: string;
  helo?: string | undefined;
  authUser?: string | undefined;
  /** The sender as judged ('' for the null sender <>). */
  mailFrom?: string | undefined;
  /** The recipient (kind 'rcpt'). */
  rcpt?: string | undefined;
  ruleId: string;
  /** The reply the client got, e.g. "550 5.7.1 Relaying denied". */
  reply: string;
}

/** The session's view: one call where it logs a refusal. */
export interface RefusalSink {
  record(r: RefusalRecord): void;
}

export interface Refusal extends RefusalRecord {
  /** Increasing serial number (a console asks "newer than id N"). */
  id: number;
  /** ISO 8601. */
  time: string;
}

export interface RefusalFilter {
  /** Substring of the client address or its HELO (case-insensitive). */
  client?: string;
  sender?: string;
  recipient?: string;
  /** Substring of the rule id. */
  rule?: string;
  /** Only refusals with a larger id. */
  after?: number;
  /** At most this many (newest first). */
  limit?: number;
}

export interface CountedKey {
  key: string;
  count: number;
}

/** Client strings are capped as the log caps them (src/session/session.ts). */
export const FIELD_CAP = 256;
export const DEFAULT_RECENT_REFUSALS = 1000;

function cap(s: string | undefined): string | undefined {
  return s === undefined ? undefined : s.length > FIELD_CAP ? `${s.slice(0, FIELD_CAP)}…` : s;
}

function has(field: string | undefined, needle: string | undefined): boolean {
  if (needle === undefined || needle === '') return true;
  return field !== undefined && field.toLowerCase().includes(needle.toLowerCase());
}

export class RefusalRing implements RefusalSink {
  readonly capacity: number;
  private readonly slots: (Refusal | undefined)[];
  /** Index of the next slot to write. */
  private next = 0;
  private serial = 0;

  constructor(
    capacity: number = DEFAULT_RECENT_REFUSALS,
    private readonly now: () => number = Date.now,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`refusal ring capacity must be a positive integer, got ${capacity}`);
    this.capacity = capacity;
    this.slots = new Array<Refusal | undefined>(capacity).fill(undefined);
  }

  /** Refusals recorded since start (also those already overwritten). */
  get total(): number {
    return this.serial;
  }

  /** Refusals held now (≤ capacity). */
  get size(): number {
    return Math.min(this.serial, this.capacity);
  }

  record(r: RefusalRecord): void {
    const entry: Refusal = {
      id: ++this.serial,
      time: new Date(this.now()).toISOString(),
      kind: r.kind,
      sessionId: r.sessionId,
      clientIp: r.clientIp,
      listener: r.listener,
      ruleId: r.ruleId,
      reply: cap(r.reply) ?? '',
    };
    // Only the fields that exist: a JSON answer without "helo": undefined noise.
    if (r.helo !== undefined) entry.helo = cap(r.helo);
    if (r.authUser !== undefined) entry.authUser = cap(r.authUser);
    if (r.mailFrom !== undefined) entry.mailFrom = cap(r.mailFrom);
    if (r.rcpt !== undefined) entry.rcpt = cap(r.rcpt);
    this.slots[this.next] = entry;
    this.next = (this.next + 1) % this.capacity;
  }

  /** Newest first. */
  *newestFirst(): Generator<Refusal> {
    for (let i = 1; i <= this.size; i++) {
      const e = this.slots[(this.next - i + this.capacity) % this.capacity];
      if (e) yield e;
    }
  }

  list(f: RefusalFilter = {}): Refusal[] {
    const limit = Math.max(1, Math.min(f.limit ?? this.capacity, this.capacity));
    const out: Refusal[] = [];
    for (const e of this.newestFirst()) {
      if (f.after !== undefined && e.id <= f.after) break;
      if (!(has(e.clientIp, f.client) || has(e.helo, f.client))) continue;
      if (!has(e.mailFrom, f.sender) || !has(e.rcpt, f.recipient) || !has(e.ruleId, f.rule)) continue;
      out.push(e);
      if (out.length >= limit) break;
    }
    return out;
  }

  get(id: number): Refusal | undefined {
    for (const e of this.newestFirst()) if (e.id === id) return e;
    return undefined;
  }

  /** The most refused clients and rules among the refusals held that are newer than windowMs. */
  top(windowMs: number, n = 10): { clients: CountedKey[]; rules: CountedKey[]; counted: number } {
    const since = this.now() - windowMs;
    const clients = new Map<string, number>();
    const rules = new Map<string, number>();
    let counted = 0;
    for (const e of this.newestFirst()) {
      if (Date.parse(e.time) < since) break;
      counted++;
      clients.set(e.clientIp, (clients.get(e.clientIp) ?? 0) + 1);
      rules.set(e.ruleId, (rules.get(e.ruleId) ?? 0) + 1);
    }
    const best = (m: Map<string, number>): CountedKey[] =>
      [...m].map(([key, count]) => ({ key, count })).sort((a, b) => b.count - a.count || a.key.localeCompare(b.key)).slice(0, n);
    return { clients: best(clients), rules: best(rules), counted };
  }
}
