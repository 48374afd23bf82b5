/**
 * What the guard and the admin API need from the rules, whichever store holds them: the rules
 * directory of one guard (RulesStore) or the shared Redis store of a fleet (SharedRulesStore).
 */
import type { EventEmitter } from 'node:events';
import type { RuleError } from '../policy/compile.js';
import type { RulesSnapshot } from './schemas.js';
import type { AuditEntry } from './audit-log.js';
import type { Version } from './history.js';
import type { ChangeOptions, ChangeResult } from './rules-change.js';
import type { FleetView } from './shared-rules-store.js';

/** Emits 'change' (RulesSnapshot) after each applied change and 'reloadError' (RuleError[]) on a refused source. */
export interface RulesService extends EventEmitter {
  current(): RulesSnapshot;
  getSection(name: string): { value: unknown; etag: string };
  replaceSection(name: string, value: unknown, opts: ChangeOptions): Promise<ChangeResult>;
  addItem(name: string, item: unknown, opts: ChangeOptions): Promise<ChangeResult>;
  removeItem(name: string, item: unknown, opts: ChangeOptions): Promise<ChangeResult>;
  /** Several sections in one audited change (ctl rules import). */
  importSections(sections: Record<string, unknown>, opts: ChangeOptions): Promise<ChangeResult>;
  rollback(versionId: string, opts: { actor: string; force?: boolean }): Promise<ChangeResult>;
  /** Re-read the source now (files, or the shared store). */
  reload(reason: string): Promise<{ ok: boolean; errors?: RuleError[] }>;
  /** Newest first. */
  history(): Version[] | Promise<Version[]>;
  /** Newest first. */
  audit(limit?: number): AuditEntry[] | Promise<AuditEntry[]>;
  /** The fleet sharing this store (a single guard: only itself). */
  fleet(): Promise<FleetView>;
  close(): void | Promise<void>;
}
