/**
 * RulesStore: the current immutable RulesSnapshot and every way to change it.
 *
 * Every change: validate (schema) → compile (open-relay guard) → persist atomically (YAML) →
 * record a version under rules/.history/ → append to rules/.audit.jsonl → swap the snapshot →
 * emit 'change'. Writes are serialised through one promise queue, so an If-Match check and the
 * write it guards are never interleaved with another writer (no lost updates).
 *
 * Hand edits: the directory is watched (debounced); a file whose content differs from what the
 * store last read or wrote triggers reload(). The composition root wires SIGHUP to reload() too.
 * A reload with an invalid file keeps the old snapshot, logs file and line, is counted, and emits
 * 'reloadError' (RuleError[]).
 *
 * Adding an item that is already present is idempotent (ok, nothing written); adding a sender rule
 * whose id exists with different content is a 409; removing an absent item is a 404.
 */
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { constants as fsConstants } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { FleetView } from './shared-rules-store.js';
import type { Metrics } from '../observability/metrics.js';
import type { RuleError } from '../policy/compile.js';
import type { RawRules, RulesSnapshot } from './schemas.js';
import { writeFileAtomic } from './atomic-write.js';
import { AuditLog, type AuditEntry, type AuditOperation } from './audit-log.js';
import { RulesHistory, type Version } from './history.js';
import { SECTIONS, SECTION_NAMES, isSectionName, type SectionName } from './schemas.js';
import { formatSectionText, parseSectionText } from './section-file.js';
import { changedSections, compileWithOverlay, readSection, formatRuleError, okResult, planChange, type ChangeOptions, type ChangeRequest, type ChangeResult, type RulesOverlay } from './rules-change.js';

export { formatRuleError, type ChangeOptions, type ChangeResult, type RulesOverlay } from './rules-change.js';

export type { AuditEntry } from './audit-log.js';
export type { Version } from './history.js';

export type MinimalLogger = {
  info(o: object, m: string): void;
  warn(o: object, m: string): void;
  error(o: object, m: string): void;
};

export interface RulesStoreOptions {
  log: MinimalLogger;
  metrics?: Metrics;
  /** Versions kept under .history/ (default 20). */
  historyLimit?: number;
  /** Watch the directory for hand edits (default false). */
  watch?: boolean;
  /** Debounce of file events in ms (default 100). */
  watchDebounceMs?: number;
  /**
   * Entries from the command line (--accepted-domain, --relay-network) added to the file sections
   * to the matchers of every snapshot. They are never written to rules/ and show neither in
   * getSection() nor in snapshot.raw.
   */
  overlay?: RulesOverlay;
  /** This guard's name (GET /api/v1/fleet; default: the host name). */
  guardName?: string;
}

/** The rules directory cannot be loaded at start. Names file, line and key of the first problem. */
/**
 * The rules directory cannot be written: the store records a version under .history/ at start and
 * persists admin API changes and the audit log there, so it refuses to start (main.ts: one line, exit 2).
 */
export class RulesDirError extends Error {
  readonly code = 'RG_ERR_RULES_DIR_NOT_WRITABLE';
  constructor(
    readonly dir: string,
    reason: string,
    options?: { cause?: unknown },
  ) {
    super(
      `rules directory ${dir} is not writable (${reason}): the guard records rule versions and the audit log there, so mount a writable volume on it or point --rules-dir (rulesDir) at a writable directory`,
      options,
    );
    this.name = 'RulesDirError';
  }
}

async function assertWritableDir(dir: string, open: () => Promise<void>): Promise<void> {
  try {
    await access(dir, fsConstants.W_OK);
    await open();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM' || code === 'ENOENT') throw new RulesDirError(dir, code, { cause: err });
    throw err;
  }
}

export class RulesLoadError extends Error {
  /** RG_ERR_RULES_EMPTY_FILE when the first problem is an empty file, else RG_ERR_RULES_LOAD. */
  readonly code: string;
  readonly errors: RuleError[];
  readonly file: string | undefined;
  readonly line: number | undefined;
  readonly key: string | undefined;

  constructor(errors: RuleError[]) {
    super(`invalid rules: ${errors.map(formatRuleError).join('; ')}`);
    this.name = 'RulesLoadError';
    this.code = errors[0]?.code === 'RG_ERR_RULES_EMPTY_FILE' ? 'RG_ERR_RULES_EMPTY_FILE' : 'RG_ERR_RULES_LOAD';
    this.errors = errors;
    this.file = errors[0]?.file;
    this.line = errors[0]?.line;
    this.key = errors[0]?.path;
  }
}

type LoadResult = { ok: true; raw: RawRules; texts: Map<string, string | null> } | { ok: false; errors: RuleError[] };

export class RulesStore extends EventEmitter {
  readonly #dir: string;
  readonly #log: MinimalLogger;
  readonly #metrics: Metrics | undefined;
  readonly #history: RulesHistory;
  readonly #audit: AuditLog;
  readonly #debounceMs: number;
  #snapshot: RulesSnapshot;
  /** The rule files' content (snapshot.raw is this plus the overlay). */
  #raw: RawRules;
  readonly #overlay: RulesOverlay | undefined;
  /** Content of each section file as last read or written by the store (null: missing). */
  #known: Map<string, string | null>;
  #queue: Promise<unknown> = Promise.resolve();
  #watcher: FSWatcher | undefined;
  #debounce: NodeJS.Timeout | undefined;
  #closed = false;
  readonly #guardName: string;
  readonly #startedAt = new Date().toISOString();

  private constructor(dir: string, opts: RulesStoreOptions, raw: RawRules, snapshot: RulesSnapshot, texts: Map<string, string | null>, history: RulesHistory, audit: AuditLog) {
    super();
    this.#dir = dir;
    this.#log = opts.log;
    this.#metrics = opts.metrics;
    this.#snapshot = snapshot;
    this.#raw = raw;
    this.#overlay = opts.overlay;
    this.#known = texts;
    this.#history = history;
    this.#audit = audit;
    this.#debounceMs = opts.watchDebounceMs ?? 100;
    this.#guardName = opts.guardName ?? hostname();
  }

  static async open(dir: string, opts: RulesStoreOptions): Promise<RulesStore> {
    const loaded = await loadRulesDir(dir);
    if (!loaded.ok) throw new RulesLoadError(loaded.errors);
    const compiled = compileWithOverlay(loaded.raw, opts.overlay);
    if (!compiled.ok) throw new RulesLoadError(await locateErrors(dir, compiled.errors));
    let history!: RulesHistory;
    let audit!: AuditLog;
    await assertWritableDir(dir, async () => {
      history = await RulesHistory.open(join(dir, '.history'), opts.historyLimit ?? 20);
      audit = await AuditLog.open(join(dir, '.audit.jsonl'));
    });
    const store = new RulesStore(dir, opts, loaded.raw, compiled.snapshot, loaded.texts, history, audit);
    if (history.latest()?.id !== compiled.snapshot.version) {
      await history.record(versionMeta(compiled.snapshot.version, 'startup', 'load', []), loaded.raw);
    }
    opts.metrics?.rulesLastReload.set(Date.now() / 1000);
    opts.log.info({ version: compiled.snapshot.version, dir }, 'rules loaded');
    if (opts.watch) store.#startWatch();
    return store;
  }

  current(): RulesSnapshot {
    return this.#snapshot;
  }

  /** The section's value (a copy) and its ETag. Throws on an unknown section name. */
  getSection(name: string): { value: unknown; etag: string } {
    return readSection(this.#raw, name);
  }

  replaceSection(name: string, value: unknown, opts: ChangeOptions): Promise<ChangeResult> {
    return this.#change({ op: 'replace', section: name, value }, opts);
  }

  addItem(name: string, item: unknown, opts: ChangeOptions): Promise<ChangeResult> {
    return this.#change({ op: 'add', section: name, item }, opts);
  }

  /** Remove one item: a string entry, or a sender rule by id (string) or by value. */
  removeItem(name: string, item: unknown, opts: ChangeOptions): Promise<ChangeResult> {
    return this.#change({ op: 'remove', section: name, item }, opts);
  }

  /** Several sections in one audited change (ctl rules import); sections not named are kept. */
  importSections(sections: Record<string, unknown>, opts: ChangeOptions): Promise<ChangeResult> {
    return this.#change({ op: 'import', sections }, opts);
  }

  /** Re-read every file (file change, SIGHUP). An invalid rule set keeps the old snapshot. */
  reload(reason: string): Promise<{ ok: boolean; errors?: RuleError[] }> {
    return this.#serialise(() => this.#reloadNow(reason));
  }

  async #reloadNow(reason: string): Promise<{ ok: boolean; errors?: RuleError[] }> {
    {
      const loaded = await loadRulesDir(this.#dir);
      let errors: RuleError[] | undefined;
      if (!loaded.ok) errors = loaded.errors;
      else if (vanished(this.#known, loaded.texts, this.#dir).length > 0) errors = vanished(this.#known, loaded.texts, this.#dir);
      else {
        const compiled = compileWithOverlay(loaded.raw, this.#overlay);
        if (!compiled.ok) errors = await locateErrors(this.#dir, compiled.errors);
        else {
          this.#known = loaded.texts;
          const changed = changedSections(this.#raw, loaded.raw);
          if (changed.length > 0) await this.#commit(loaded.raw, compiled.snapshot, changed, 'file', 'reload');
          this.#metrics?.rulesReloads.inc({ result: 'success' });
          this.#metrics?.rulesLastReload.set(Date.now() / 1000);
          this.#log.info({ reason, version: this.#snapshot.version, sections: changed }, 'rules reloaded');
          return { ok: true };
        }
      }
      this.#metrics?.rulesReloads.inc({ result: 'error' });
      for (const e of errors) {
        this.#log.error({ reason, file: e.file, line: e.line, key: e.path, code: e.code, section: e.section, err: { message: e.message } }, 'rules reload failed');
      }
      this.emit('reloadError', errors);
      return { ok: false, errors };
    }
  }

  /** Newest first. */
  history(): Version[] {
    return this.#history.list();
  }

  rollback(versionId: string, opts: { actor: string; force?: boolean }): Promise<ChangeResult> {
    const raw = this.#history.rawOf(versionId);
    if (raw === undefined) return Promise.resolve({ ok: false, status: 404, code: 'RG_ERR_RULES_VERSION_NOT_FOUND', message: `no rules version ${JSON.stringify(versionId)} in history` });
    return this.#change({ op: 'rollback', raw }, opts);
  }

  /** Newest first. */
  audit(limit = 100): AuditEntry[] {
    return this.#audit.list(limit);
  }

  /** One guard with its own rules directory: the fleet is this guard. */
  async fleet(): Promise<FleetView> {
    return {
      shared: false,
      guards: [{ name: this.#guardName, rev: 0, version: this.#snapshot.version, behind: false, lastSeenSeconds: 0, startedAt: this.#startedAt, storeUp: true, self: true }],
    };
  }

  close(): void {
    this.#closed = true;
    if (this.#debounce) clearTimeout(this.#debounce);
    this.#debounce = undefined;
    this.#watcher?.close();
    this.#watcher = undefined;
  }

  // ── internals ──

  #serialise<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #change(req: ChangeRequest, opts: { ifMatch?: string; force?: boolean; actor: string }): Promise<ChangeResult> {
    return this.#serialise(async () => {
      const plan = planChange(this.#raw, this.#snapshot.version, req, opts, this.#overlay);
      if (plan.kind === 'refused') return plan.result;
      if (plan.kind === 'noop') return okResult(this.#snapshot, plan.section);
      for (const name of plan.changed) {
        const text = formatSectionText(name, plan.raw[SECTIONS[name].rawKey]);
        await writeFileAtomic(join(this.#dir, SECTIONS[name].file), text);
        this.#known.set(SECTIONS[name].file, text);
      }
      await this.#commit(plan.raw, plan.snapshot, plan.changed, opts.actor, plan.operation);
      for (const name of plan.changed) this.#metrics?.rulesChanges.inc({ section: name, operation: plan.operation });
      this.#log.info({ actor: opts.actor, operation: plan.operation, sections: plan.changed, version: plan.snapshot.version }, 'rules changed');
      return okResult(this.#snapshot, plan.section);
    });
  }

  /** Record history and audit, then swap the snapshot and tell listeners. */
  async #commit(nextRaw: RawRules, next: RulesSnapshot, changed: SectionName[], actor: string, operation: AuditOperation): Promise<void> {
    const before = this.#raw;
    const time = new Date().toISOString();
    await this.#history.record({ id: next.version, time, actor, operation, sections: [...changed] }, nextRaw);
    await this.#audit.append(changed.map((name) => ({
      time, actor, section: name, operation,
      before: before[SECTIONS[name].rawKey], after: nextRaw[SECTIONS[name].rawKey], version: next.version,
    })));
    this.#raw = structuredClone(nextRaw);
    this.#snapshot = next;
    this.emit('change', next);
  }

  #startWatch(): void {
    const files = new Set(SECTION_NAMES.map((n) => SECTIONS[n].file));
    try {
      this.#watcher = watch(this.#dir, { persistent: false }, (_event, filename) => {
        // Temporary files, .history and .audit.jsonl start with a dot and are not section files.
        if (filename !== null && !files.has(String(filename))) return;
        this.#scheduleCheck();
      });
      this.#watcher.on('error', (err) => {
        this.#metrics?.internalErrors.inc({ where: 'rules' });
        this.#log.error({ err, dir: this.#dir }, 'rules watch failed');
      });
    } catch (err) {
      this.#metrics?.internalErrors.inc({ where: 'rules' });
      this.#log.error({ err, dir: this.#dir }, 'rules watch failed');
    }
  }

  #scheduleCheck(): void {
    if (this.#closed) return;
    if (this.#debounce) clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => {
      this.#debounce = undefined;
      void this.#checkFiles().catch((err: unknown) => {
        this.#metrics?.internalErrors.inc({ where: 'rules' });
        this.#log.error({ err }, 'rules watch check failed');
      });
    }, this.#debounceMs);
    this.#debounce.unref();
  }

  /** Reload only when a section file differs from what the store itself last read or wrote. */
  #checkFiles(): Promise<unknown> {
    return this.#serialise(async () => {
      if (this.#closed) return;
      const texts = await readSectionTexts(this.#dir);
      const differs = [...texts].some(([file, text]) => (this.#known.get(file) ?? null) !== text);
      if (differs) await this.#reloadNow('file change');
    });
  }
}

// ── helpers ──

function versionMeta(id: string, actor: string, operation: string, sections: string[]): Version {
  return { id, time: new Date().toISOString(), actor, operation, sections };
}

async function readSectionTexts(dir: string): Promise<Map<string, string | null>> {
  const texts = new Map<string, string | null>();
  for (const name of SECTION_NAMES) {
    const file = SECTIONS[name].file;
    try {
      texts.set(file, await readFile(join(dir, file), 'utf8'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      texts.set(file, null);
    }
  }
  return texts;
}

/**
 * The rule set of a rules directory, validated and compiled, without opening a store (nothing is
 * written: the directory may be a read-only ConfigMap). Throws RulesLoadError like RulesStore.open.
 */
export async function readRulesDir(dir: string, overlay?: RulesOverlay): Promise<RulesSnapshot> {
  const loaded = await loadRulesDir(dir);
  if (!loaded.ok) throw new RulesLoadError(loaded.errors);
  const compiled = compileWithOverlay(loaded.raw, overlay);
  if (!compiled.ok) throw new RulesLoadError(await locateErrors(dir, compiled.errors));
  return compiled.snapshot;
}

/**
 * Section files the store had read or written that are gone now. A vanished file is not a new
 * policy (a half-done `mv`, a deploy that lost a file): the reload keeps the rules in force. Writing
 * `[]` (or the default value) is how a section is emptied on purpose.
 */
function vanished(known: ReadonlyMap<string, string | null>, now: ReadonlyMap<string, string | null>, dir: string): RuleError[] {
  const out: RuleError[] = [];
  for (const name of SECTION_NAMES) {
    const file = SECTIONS[name].file;
    if ((known.get(file) ?? null) !== null && (now.get(file) ?? null) === null) {
      out.push({ code: 'RG_ERR_RULES_FILE_VANISHED', section: name, file: join(dir, file), message: `${join(dir, file)} disappeared: the rules in force are kept (write [] or the default value to empty the section on purpose)` });
    }
  }
  return out;
}

/** Read and schema-check every section file; a missing file is the section's default. */
async function loadRulesDir(dir: string): Promise<LoadResult> {
  const texts = await readSectionTexts(dir);
  const raw: Record<string, unknown> = {};
  const errors: RuleError[] = [];
  for (const name of SECTION_NAMES) {
    const spec = SECTIONS[name];
    const text = texts.get(spec.file) ?? null;
    if (text === null) {
      raw[spec.rawKey] = structuredClone(spec.defaultValue);
      continue;
    }
    const parsed = parseSectionText(name, text, join(dir, spec.file));
    if (parsed.ok) raw[spec.rawKey] = parsed.value;
    else errors.push(...parsed.errors);
  }
  return errors.length > 0 ? { ok: false, errors } : { ok: true, raw: raw as RawRules, texts };
}

/** Give compile errors (which know section and path) their file and line. */
async function locateErrors(dir: string, errors: RuleError[]): Promise<RuleError[]> {
  const texts = await readSectionTexts(dir);
  return errors.map((e) => {
    if (!isSectionName(e.section) || e.file !== undefined) return e;
    const file = join(dir, SECTIONS[e.section].file);
    const text = texts.get(SECTIONS[e.section].file);
    if (text === null || text === undefined) return { ...e, file };
    const parsed = parseSectionText(e.section, text, file);
    const line = parsed.ok && e.path !== undefined ? parsed.lineOf(e.path) : undefined;
    return line === undefined ? { ...e, file } : { ...e, file, line };
  });
}
