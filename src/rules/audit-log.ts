/**
 * AuditLog: who changed which rules section, when, and how (before/after), one JSON line per change
 * in rules/.audit.jsonl (fsynced). The newest entries are also kept in memory for the admin API.
 */
import { open, readFile } from 'node:fs/promises';

export type AuditOperation = 'replace' | 'add' | 'remove' | 'rollback' | 'reload' | 'import' | 'seed';

export interface AuditEntry {
  /** ISO 8601 time of the change. */
  time: string;
  /** Who: an admin token id, "file" for a hand edit picked up by reload. */
  actor: string;
  section: string;
  operation: AuditOperation;
  before: unknown;
  after: unknown;
  /** The guard whose admin API took the change (shared rules store). */
  guard?: string;
  /** Rules version (content hash) after the change. */
  version: string;
}

const MAX_READ_BYTES = 4 * 1024 * 1024;

export class AuditLog {
  readonly #path: string;
  readonly #keep: number;
  #entries: AuditEntry[] = [];

  private constructor(path: string, keep: number) {
    this.#path = path;
    this.#keep = keep;
  }

  /** Open the log, reading the newest `keep` entries of an existing file (bounded read). */
  static async open(path: string, keep = 1000): Promise<AuditLog> {
    const log = new AuditLog(path, keep);
    let text = '';
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (text.length > MAX_READ_BYTES) text = text.slice(text.length - MAX_READ_BYTES);
    for (const line of text.split('\n').slice(-keep - 1)) {
      if (line.trim() === '') continue;
      try {
        log.#entries.push(JSON.parse(line) as AuditEntry);
      } catch {
        // A torn or foreign line: skip it; the file is append-only history, not configuration.
      }
    }
    log.#entries = log.#entries.slice(-keep);
    return log;
  }

  async append(entries: readonly AuditEntry[]): Promise<void> {
    if (entries.length === 0) return;
    const fh = await open(this.#path, 'a', 0o600);
    try {
      await fh.writeFile(entries.map((e) => `${JSON.stringify(e)}\n`).join(''), 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    this.#entries.push(...entries);
    if (this.#entries.length > this.#keep) this.#entries.splice(0, this.#entries.length - this.#keep);
  }

  /** Newest first. */
  list(limit = 100): AuditEntry[] {
    if (!(limit > 0)) return [];
    return this.#entries.slice(-limit).reverse();
  }
}
