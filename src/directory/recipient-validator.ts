/**
 * RecipientValidator: answers "is this a recipient of ours?" for the session, once policy has said
 * "this is one of our domains, validate it". It returns lookup results only; policy turns them into
 * replies (known → accept, unknown → 550 5.1.1, error → 451 4.4.3).
 *
 * - list mode: rules/recipients.txt (or --recipients-file), watched and reloaded on change; a bad
 *   file keeps the previous list.
 * - ldap mode: LdapDirectory, built lazily and rebuilt when the ldap settings change; positive and
 *   negative answers cached (bounded LRU with TTLs); concurrent lookups of one address share a query.
 * - lookup() never throws: every fault is { result: 'error' }, so our own failure is never a bounce.
 */
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { LRUCache } from 'lru-cache';
import type { Metrics } from '../observability/metrics.js';
import { LdapDirectory, type LdapDirectoryDeps } from './ldap-directory.js';
import { RecipientList } from './recipient-list.js';
import {
  DEFAULT_RECIPIENTS_FILE,
  recipientValidationMode,
  resolveLdapSettings,
  type RecipientValidationMode,
  type RecipientValidationRules,
  type ResolvedLdapSettings,
} from './schema.js';

export interface MinimalLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export type RecipientLookupResult = 'known' | 'unknown' | 'error';
export type RecipientLookupSource = 'list' | 'ldap' | 'cache';

export interface RecipientLookup {
  result: RecipientLookupResult;
  source: RecipientLookupSource;
  detail?: string;
}

export interface ListReloadResult {
  ok: boolean;
  entries?: number;
  error?: string;
}

export interface RecipientCacheStats {
  size: number;
  max: number;
  hits: number;
  misses: number;
  /** Searches actually sent to the directory. */
  ldapQueries: number;
}

export interface RecipientValidatorOptions {
  rulesDir: string;
  rules: () => RecipientValidationRules;
  metrics?: Metrics;
  log: MinimalLogger;
  /** --recipients-file: overrides list.file and turns on list mode for every accepted domain. */
  recipientsFile?: string;
  /** Quiet period after the last change event before the list is re-read (default 100 ms). */
  watchDebounceMs?: number;
  /** Passed to LdapDirectory (e.g. the environment holding bindPasswordEnv). */
  ldap?: LdapDirectoryDeps;
}

/** Events: 'listReloaded' (ListReloadResult) after every reload attempt triggered by a file change. */
export class RecipientValidator extends EventEmitter {
  private readonly opts: RecipientValidatorOptions;
  private readonly debounceMs: number;
  private list: RecipientList | undefined;
  private listPath: string | undefined;
  private listLoading: { path: string; done: Promise<ListReloadResult> } | undefined;
  private watcher: FSWatcher | undefined;
  private debounceTimer: NodeJS.Timeout | undefined;
  private ldap: { key: string; settings: ResolvedLdapSettings; directory: LdapDirectory; cache: LRUCache<string, 'known' | 'unknown'> } | undefined;
  private readonly inFlight = new Map<string, Promise<RecipientLookup>>();
  private hits = 0;
  private misses = 0;
  private retiredQueries = 0;
  private lastErrorLogMs = 0;
  private suppressedErrors = 0;
  private closed = false;

  constructor(opts: RecipientValidatorOptions) {
    super();
    this.opts = opts;
    this.debounceMs = opts.watchDebounceMs ?? 100;
  }

  /** Load the list if any domain uses list mode (throws if it cannot: bad config fails loudly at startup). */
  async start(): Promise<void> {
    if (!this.listInUse()) return;
    const res = await this.loadList(this.currentListPath());
    if (!res.ok) {
      throw Object.assign(new Error(`recipient list: ${res.error ?? 'unreadable'}`), { code: 'RG_ERR_DIRECTORY_LIST' });
    }
  }

  /** The validation mode of an accepted domain; with --recipients-file, 'list' for every domain. */
  mode(domain: string): RecipientValidationMode {
    if (this.opts.recipientsFile !== undefined) return 'list';
    return recipientValidationMode(domain, this.opts.rules());
  }

  /** Validate one recipient (canonical local@domain, domain lower-case). Never throws. */
  async lookup(address: string, domain: string): Promise<RecipientLookup> {
    let out: RecipientLookup;
    let mode: RecipientValidationMode = 'list';
    try {
      mode = this.mode(domain);
      if (mode === 'off') return { result: 'known', source: 'list', detail: 'validation off for this domain' };
      out = mode === 'list' ? await this.lookupList(address) : await this.lookupLdap(address);
    } catch (err) {
      // A bug or a bad setting (e.g. an unusable duration) must never become a 550.
      out = { result: 'error', source: mode === 'ldap' ? 'ldap' : 'list', detail: 'internal error' };
      this.opts.log.error({ err, domain }, 'recipient lookup failed');
    }
    this.opts.metrics?.recipientLookups.inc({ source: out.source, result: out.result });
    return out;
  }

  /** Re-read the list file now (admin API / CLI). Keeps the previous list on failure. */
  async reloadList(): Promise<ListReloadResult> {
    return this.loadList(this.currentListPath());
  }

  get cacheStats(): RecipientCacheStats {
    const cache = this.ldap?.cache;
    return {
      size: cache?.size ?? 0,
      max: cache?.max ?? 0,
      hits: this.hits,
      misses: this.misses,
      ldapQueries: this.retiredQueries + (this.ldap?.directory.searches ?? 0),
    };
  }

  /** Forget every cached directory answer (e.g. after a mailbox was created or removed). */
  clearCache(): void {
    this.ldap?.cache.clear();
  }

  /** Entries in the loaded list, or undefined when none is loaded. */
  get listSize(): number | undefined {
    return this.list?.size;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.debounceTimer);
    this.watcher?.close();
    this.watcher = undefined;
    const ldap = this.ldap;
    this.ldap = undefined;
    await ldap?.directory.close();
  }

  // ── list mode ──────────────────────────────────────────────────────────────────────────────

  private listInUse(): boolean {
    if (this.opts.recipientsFile !== undefined) return true;
    const rules = this.opts.rules();
    return rules.default === 'list' || Object.values(rules.domains ?? {}).includes('list');
  }

  private currentListPath(): string {
    if (this.opts.recipientsFile !== undefined) return resolve(this.opts.recipientsFile);
    return resolve(this.opts.rulesDir, this.opts.rules().list?.file ?? DEFAULT_RECIPIENTS_FILE);
  }

  private async lookupList(address: string): Promise<RecipientLookup> {
    const path = this.currentListPath();
    // First use, or the rules now name another file. A file that cannot be loaded gives 'error'
    // until the watcher (or reloadList) loads a good version.
    if (this.listPath !== path) {
      // Concurrent first lookups share one load.
      await (this.listLoading?.path === path ? this.listLoading.done : this.loadList(path));
    }
    const list = this.listPath === path ? this.list : undefined;
    if (list === undefined) return { result: 'error', source: 'list', detail: 'recipient list unavailable' };
    return { result: list.lookup(address), source: 'list' };
  }

  /** Loads run one after the other, and each reads the file afresh: a change during a load is not lost. */
  private loadList(path: string): Promise<ListReloadResult> {
    const previous = this.listLoading?.done ?? Promise.resolve();
    const done = previous.then(() => this.doLoadList(path));
    const entry = { path, done };
    this.listLoading = entry;
    void done.finally(() => {
      if (this.listLoading === entry) this.listLoading = undefined;
    });
    return done;
  }

  private async doLoadList(path: string): Promise<ListReloadResult> {
    try {
      const list = await RecipientList.load(path);
      if (this.closed) return { ok: false, error: 'closed' };
      this.list = list;
      if (this.listPath !== path) {
        this.listPath = path;
        this.watchList(path);
      }
      this.opts.metrics?.rulesReloads.inc({ result: 'success' });
      this.opts.log.info({ file: path, entries: list.size }, 'recipient list loaded');
      return { ok: true, entries: list.size };
    } catch (err) {
      this.opts.metrics?.rulesReloads.inc({ result: 'error' });
      this.opts.log.error({ err, file: path }, 'recipient list not loaded');
      // A file named for the first time: no list yet, but watch it, so fixing it is picked up.
      // The same file again: keep the previous list.
      if (this.listPath !== path) {
        this.list = undefined;
        this.listPath = path;
        this.watchList(path);
      }
      return { ok: false, error: err instanceof Error ? err.message : String(err) };
    }
  }

  /** Watch the directory, not the file: editors and `mv` replace the file, which ends a file watch. */
  private watchList(path: string): void {
    this.watcher?.close();
    this.watcher = undefined;
    const name = basename(path);
    try {
      this.watcher = watch(dirname(path), { persistent: false }, (_event, filename) => {
        if (filename !== null && filename !== name) return;
        clearTimeout(this.debounceTimer);
        this.debounceTimer = setTimeout(() => void this.onListChanged(path), this.debounceMs);
      });
      this.watcher.on('error', (err) => this.opts.log.warn({ err, file: path }, 'recipient list watch failed'));
    } catch (err) {
      this.opts.log.warn({ err, file: path }, 'recipient list watch failed');
    }
  }

  private async onListChanged(path: string): Promise<void> {
    if (this.closed || this.listPath !== path) return;
    const res = await this.loadList(path);
    this.emit('listReloaded', res);
  }

  /**
   * auth.verify: ldap (issue 16): prove a login against the directory configured in
   * recipient-validation.yaml (`ldap`), whatever the domains' validation modes. Never throws:
   * 'error' when the directory is not configured or cannot be asked (the caller refuses relay).
   */
  async verifyCredentials(user: string, password: string, userFilter: string): Promise<'valid' | 'invalid' | 'error'> {
    let ldap: RecipientValidator['ldap'];
    try {
      ldap = this.currentLdap();
    } catch (err) {
      this.logDirectoryError(err);
      return 'error';
    }
    if (ldap === undefined) {
      this.opts.log.error({}, 'auth.verify is ldap but recipient-validation.yaml has no ldap settings: AUTH grants no relay');
      return 'error';
    }
    try {
      return await ldap.directory.verifyCredentials(user, password, userFilter);
    } catch (err) {
      this.logDirectoryError(err);
      return 'error';
    }
  }

  // ── ldap mode ──────────────────────────────────────────────────────────────────────────────

  private async lookupLdap(address: string): Promise<RecipientLookup> {
    const ldap = this.currentLdap();
    if (ldap === undefined) return { result: 'error', source: 'ldap', detail: 'ldap not configured' };
    const key = address.toLowerCase();
    const cached = ldap.cache.get(key);
    if (cached !== undefined) {
      this.hits++;
      return { result: cached, source: 'cache' };
    }
    this.misses++;
    const pending = this.inFlight.get(key);
    if (pending) return { ...(await pending), source: 'cache' };
    const query = this.queryLdap(ldap, address, key).finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, query);
    return query;
  }

  private async queryLdap(ldap: NonNullable<RecipientValidator['ldap']>, address: string, key: string): Promise<RecipientLookup> {
    try {
      const result = await ldap.directory.lookup(address);
      const ttl = result === 'known' ? ldap.settings.positiveTtlMs : ldap.settings.negativeTtlMs;
      if (this.ldap === ldap) ldap.cache.set(key, result, { ttl });
      return { result, source: 'ldap' };
    } catch (err) {
      this.logDirectoryError(err);
      const code = (err as { code?: unknown }).code;
      return { result: 'error', source: 'ldap', detail: typeof code === 'string' ? code : 'directory unavailable' };
    }
  }

  /** The directory for the current settings; rebuilt (with an empty cache) when they change. */
  private currentLdap(): RecipientValidator['ldap'] {
    const raw = this.opts.rules().ldap;
    if (raw === undefined) return undefined;
    const key = JSON.stringify(raw);
    if (this.ldap?.key === key) return this.ldap;
    const old = this.ldap;
    if (old) {
      this.retiredQueries += old.directory.searches;
      void old.directory.close();
    }
    const settings = resolveLdapSettings(raw);
    this.ldap = {
      key,
      settings,
      directory: new LdapDirectory(settings, this.opts.ldap),
      cache: new LRUCache<string, 'known' | 'unknown'>({ max: settings.cacheSize, ttl: settings.positiveTtlMs, ttlAutopurge: false }),
    };
    return this.ldap;
  }

  /** At most one error line per 10 s while the directory is down; the count of the rest goes with it. */
  private logDirectoryError(err: unknown): void {
    const now = Date.now();
    if (now - this.lastErrorLogMs < 10_000) {
      this.suppressedErrors++;
      return;
    }
    this.opts.log.warn({ err, suppressed: this.suppressedErrors }, 'recipient directory lookup failed');
    this.lastErrorLogMs = now;
    this.suppressedErrors = 0;
  }
}
