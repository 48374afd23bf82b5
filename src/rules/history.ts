/**
 * RulesHistory: the last N complete rule sets, one JSON file each under rules/.history/, so any
 * change can be rolled back. File names sort by sequence: 00000042-<version>.json.
 */
import { mkdir, readdir, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { RawRules } from './schemas.js';
import { writeFileAtomic } from './atomic-write.js';

export interface Version {
  /** Content hash of the rule set (RulesSnapshot.version). */
  id: string;
  /** ISO 8601 time it became current. */
  time: string;
  actor: string;
  /** What produced it: load, replace, add, remove, rollback, reload. */
  operation: string;
  /** Sections that changed compared to the previous version. */
  sections: string[];
  /** Shared rules store: the guard that made the change, and the store revision. */
  guard?: string;
  rev?: number;
}

interface StoredVersion extends Version {
  seq: number;
  raw: RawRules;
}

const NAME_RE = /^(\d{8,})-([0-9a-f]+)\.json$/;

export class RulesHistory {
  readonly #dir: string;
  readonly #limit: number;
  /** Oldest first. */
  #versions: StoredVersion[] = [];

  private constructor(dir: string, limit: number) {
    this.#dir = dir;
    this.#limit = Math.max(1, limit);
  }

  static async open(dir: string, limit: number): Promise<RulesHistory> {
    const h = new RulesHistory(dir, limit);
    await mkdir(dir, { recursive: true });
    const names = (await readdir(dir)).filter((n) => NAME_RE.test(n)).sort();
    for (const name of names.slice(-h.#limit)) {
      try {
        const v = JSON.parse(await readFile(join(dir, name), 'utf8')) as StoredVersion;
        if (typeof v.id === 'string' && typeof v.seq === 'number' && v.raw !== null && typeof v.raw === 'object') h.#versions.push(v);
      } catch {
        // A damaged history file only costs that version.
      }
    }
    return h;
  }

  latest(): Version | undefined {
    const v = this.#versions.at(-1);
    return v === undefined ? undefined : meta(v);
  }

  async record(v: Version, raw: RawRules): Promise<void> {
    const seq = (this.#versions.at(-1)?.seq ?? 0) + 1;
    const stored: StoredVersion = { ...v, seq, raw };
    await writeFileAtomic(join(this.#dir, fileName(stored)), `${JSON.stringify(stored)}\n`);
    this.#versions.push(stored);
    while (this.#versions.length > this.#limit) {
      const old = this.#versions.shift();
      if (old) await unlink(join(this.#dir, fileName(old))).catch(() => undefined);
    }
  }

  /** Newest first. */
  list(): Version[] {
    return this.#versions.map(meta).reverse();
  }

  /** The rule set of a version (the newest one with that id). */
  rawOf(id: string): RawRules | undefined {
    for (let i = this.#versions.length - 1; i >= 0; i--) {
      const v = this.#versions[i];
      if (v?.id === id) return structuredClone(v.raw);
    }
    return undefined;
  }
}

function fileName(v: StoredVersion): string {
  return `${String(v.seq).padStart(8, '0')}-${v.id}.json`;
}

function meta(v: StoredVersion): Version {
  return { id: v.id, time: v.time, actor: v.actor, operation: v.operation, sections: [...v.sections] };
}
