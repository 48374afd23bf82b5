/**
 * Bans as data: client addresses and networks refused at connect (before the backend is contacted).
 * Manual bans (admin API) are persisted to a YAML file with an atomic write and survive a restart;
 * automatic bans (rate limiter) live in memory, bounded, least recently added evicted first.
 * Time comes from the injected clock; expired bans are pruned lazily.
 * Local changes (add, remove) are told to change listeners (ban-sync.ts shares them through Redis);
 * bans from other guards come in through applyRemoteBan / applyRemoteRemoval, which tell nobody.
 */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import IPCIDR from 'ip-cidr';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import type { Clock } from '../clock.js';
import type { Metrics } from '../observability/metrics.js';
import { formatIp, ipInNetwork, maskIp, parseHostAddress, type IpNetwork } from '../util/ip-address.js';
import { remembered } from '../util/remembered.js';
import { internetWideReason } from '../policy/wide-networks.js';

export type BanSource = 'manual' | 'automatic';

export interface Ban {
  /** Canonical address ("192.0.2.7", "2001:db8::1") or network ("192.0.2.0/24"). */
  target: string;
  reason: string;
  source: BanSource;
  /** ISO 8601. */
  createdAt: string;
  /** ISO 8601; absent for a permanent ban. */
  expiresAt?: string;
}

export interface BanInput {
  /** An address or a CIDR network. */
  target: string;
  /** undefined = permanent. */
  durationMs?: number;
  reason: string;
  source: BanSource;
  /**
   * A manual ban of a network that covers the Internet (wider than IPv4 /8 or IPv6 /16, or covering
   * an IPv6 transition prefix such as 2002::/16: see wide-networks.ts) is refused without this.
   */
  force?: boolean;
}

/** A local change of the list, as told to change listeners. Expiry and eviction are not changes. */
export type BanChange = { op: 'add'; ban: Ban } | { op: 'remove'; target: string; ban: Ban };
export type BanChangeListener = (change: BanChange) => void;

/**
 * Widest networks taken from another guard (a shared store): IPv4 /8, IPv6 /16, as the widest
 * limiter prefixes (limits.yaml prefixV4/prefixV6). A local admin may ban wider; it is not shared.
 */
export const SHARED_MIN_PREFIX: Readonly<Record<4 | 6, number>> = { 4: 8, 6: 16 };

/** Whether a normalised target may be shared with or taken from other guards. */
export function isShareableTarget(n: { network?: IpNetwork }): boolean {
  return !n.network || (n.network.prefix >= SHARED_MIN_PREFIX[n.network.family] && internetWideReason(n.network) === undefined);
}

export type BanErrorCode = 'RG_ERR_BANS_BAD_TARGET' | 'RG_ERR_BANS_BAD_INPUT' | 'RG_ERR_BANS_TOO_WIDE' | 'RG_ERR_BANS_FULL' | 'RG_ERR_BANS_BAD_FILE';

export class BanError extends Error {
  override readonly name = 'BanError';
  /** HTTP status for the admin API. */
  readonly statusCode: number;
  constructor(readonly code: BanErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.statusCode = code === 'RG_ERR_BANS_BAD_FILE' ? 500 : code === 'RG_ERR_BANS_FULL' ? 409 : 400;
  }
}

export interface BanListOptions {
  /** YAML file for manual bans; without it manual bans live in memory only. */
  file?: string;
  clock: Clock;
  metrics?: Pick<Metrics, 'bansActive'>;
  /** Most bans kept (default 100 000). */
  maxEntries?: number;
  /** Told every local add and remove (same as addChangeListener). */
  onChange?: BanChangeListener;
}

interface Entry {
  ban: Ban;
  expiresAtMs: number; // Infinity when permanent
  network?: IpNetwork;
}

const MAX_REASON_CHARS = 200;
const PRUNE_INTERVAL_MS = 60_000;

/** Canonical form of a ban target, or a BanError. "192.0.2.9/24" becomes "192.0.2.0/24"; a /32 is a host. */
export function normalizeBanTarget(target: string): { target: string; network?: IpNetwork } {
  const t = typeof target === 'string' ? target.trim() : '';
  const bad = (): BanError => new BanError('RG_ERR_BANS_BAD_TARGET', `bad ban target ${JSON.stringify(String(target).slice(0, 64))}: want an IP address or a CIDR network`);
  if (t.length === 0 || t.length > 64) throw bad();
  const slash = t.indexOf('/');
  if (slash < 0) {
    const a = parseHostAddress(t);
    if (!a) throw bad();
    return { target: formatIp(a) };
  }
  const lenText = t.slice(slash + 1);
  if (!/^[0-9]{1,3}$/.test(lenText) || !IPCIDR.isValidCIDR(t)) throw bad();
  const raw = parseHostAddress(t.slice(0, slash));
  if (!raw) throw bad();
  let prefixLen = Number(lenText);
  // ::ffff:192.0.2.0/120 is the IPv4 network 192.0.2.0/24.
  if (raw.family === 4 && t.slice(0, slash).includes(':')) prefixLen -= 96;
  const bits = raw.family === 4 ? 32 : 128;
  if (prefixLen < 0 || prefixLen > bits) throw bad();
  if (prefixLen === bits) return { target: formatIp(raw) };
  const address = maskIp(raw, prefixLen);
  return { target: `${formatIp(address)}/${prefixLen}`, network: { family: address.family, prefix: prefixLen, network: address.value } };
}

export class BanList {
  private readonly exact = new Map<string, Entry>();
  private readonly networks = new Map<string, Entry>();
  private readonly clock: Clock;
  private readonly maxEntries: number;
  private lastPruneMs = -Infinity;
  private readonly listeners = new Set<BanChangeListener>();

  constructor(private readonly opts: BanListOptions) {
    this.clock = opts.clock;
    this.maxEntries = opts.maxEntries ?? 100_000;
    if (opts.onChange) this.listeners.add(opts.onChange);
    if (opts.file) this.load(opts.file);
    this.updateGauge();
  }

  get size(): number {
    return this.exact.size + this.networks.size;
  }

  /** Most bans kept. */
  get capacity(): number {
    return this.maxEntries;
  }

  /** Be told every local add and remove (not remote ones, not expiry). Returns the unsubscribe function. */
  addChangeListener(listener: BanChangeListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The ban that covers `ip`, if any. Malformed input is never banned (the session refuses it elsewhere). */
  check(ip: string): Ban | undefined {
    const key = exactKey(ip);
    if (key === undefined) return undefined;
    const now = this.clock.now();
    this.maybePrune(now);
    const hit = this.exact.get(key);
    if (hit) {
      if (hit.expiresAtMs > now) return hit.ban;
      this.delete(key);
    }
    if (this.networks.size === 0) return undefined;
    const a = parseHostAddress(ip)!;
    for (const [k, e] of this.networks) {
      if (!e.network || !ipInNetwork(a, e.network)) continue;
      if (e.expiresAtMs > now) return e.ban;
      this.delete(k);
    }
    return undefined;
  }

  /**
   * Add or replace a ban. An automatic ban never replaces a manual one of the same target (the
   * manual one is returned). A full list evicts the oldest automatic ban, or refuses a manual one.
   */
  add(input: BanInput): Ban {
    if (input === null || typeof input !== 'object') throw new BanError('RG_ERR_BANS_BAD_INPUT', 'ban must be an object');
    const { target, network } = normalizeBanTarget(input.target);
    if (input.source !== 'manual' && input.source !== 'automatic') throw new BanError('RG_ERR_BANS_BAD_INPUT', 'ban source must be manual or automatic');
    if (input.durationMs !== undefined && !(Number.isFinite(input.durationMs) && input.durationMs > 0)) {
      throw new BanError('RG_ERR_BANS_BAD_INPUT', 'ban duration must be a positive number of milliseconds');
    }
    const wide = network && input.source === 'manual' && input.force !== true ? internetWideReason(network) : undefined;
    if (wide !== undefined) {
      throw new BanError('RG_ERR_BANS_TOO_WIDE', `${wide}: a ban of it would refuse every client (or every IPv4 client); send force: true (ctl: --force) if that is really meant`);
    }
    const reason = String(input.reason ?? '').replace(/[\r\n\t]+/g, ' ').trim().slice(0, MAX_REASON_CHARS);
    const now = this.clock.now();
    const existing = this.entry(target);
    if (existing && existing.ban.source === 'manual' && input.source === 'automatic' && existing.expiresAtMs > now) return existing.ban;

    const expiresAtMs = input.durationMs === undefined ? Infinity : now + input.durationMs;
    const ban: Ban = { target, reason, source: input.source, createdAt: new Date(now).toISOString() };
    if (expiresAtMs !== Infinity) ban.expiresAt = new Date(expiresAtMs).toISOString();

    if (existing) this.delete(target);
    else this.makeRoom(now);
    const map = network ? this.networks : this.exact;
    map.set(target, network ? { ban, expiresAtMs, network } : { ban, expiresAtMs });
    if (input.source === 'manual' || existing?.ban.source === 'manual') this.persist();
    this.updateGauge();
    this.tell({ op: 'add', ban: { ...ban } });
    return ban;
  }

  /**
   * Take a ban made by another guard (a shared store), without telling change listeners. `raw` is
   * untrusted: it is validated like add()'s input, a network wider than SHARED_MIN_PREFIX, an
   * unknown source, a bad date or an expired ban is refused (undefined), never thrown. An automatic
   * ban never replaces a manual one in force; an identical ban is left as is.
   */
  applyRemoteBan(raw: unknown): Ban | undefined {
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return undefined;
    const b = raw as Record<string, unknown>;
    if (typeof b.target !== 'string' || (b.source !== 'manual' && b.source !== 'automatic')) return undefined;
    let norm: { target: string; network?: IpNetwork };
    try {
      norm = normalizeBanTarget(b.target);
    } catch {
      return undefined;
    }
    if (!isShareableTarget(norm)) return undefined;
    const now = this.clock.now();
    const expiresAtMs = b.expiresAt === undefined || b.expiresAt === null ? Infinity : typeof b.expiresAt === 'string' ? Date.parse(b.expiresAt) : NaN;
    if (Number.isNaN(expiresAtMs) || expiresAtMs <= now) return undefined;
    const createdAtMs = typeof b.createdAt === 'string' ? Date.parse(b.createdAt) : NaN;
    const reason = (typeof b.reason === 'string' ? b.reason : '').replace(/[\x00-\x1f\x7f]+/g, ' ').trim().slice(0, MAX_REASON_CHARS);
    const ban: Ban = { target: norm.target, reason, source: b.source, createdAt: new Date(Number.isNaN(createdAtMs) ? now : createdAtMs).toISOString() };
    if (expiresAtMs !== Infinity) ban.expiresAt = new Date(expiresAtMs).toISOString();

    const existing = this.entry(norm.target);
    if (existing && existing.expiresAtMs > now) {
      if (existing.ban.source === 'manual' && ban.source === 'automatic') return existing.ban;
      const e = existing.ban;
      if (e.source === ban.source && e.reason === ban.reason && e.createdAt === ban.createdAt && e.expiresAt === ban.expiresAt) return e;
    }
    if (existing) this.delete(norm.target);
    else {
      try {
        this.makeRoom(now);
      } catch {
        return undefined; // full of manual bans
      }
    }
    const map = norm.network ? this.networks : this.exact;
    map.set(norm.target, norm.network ? { ban, expiresAtMs, network: norm.network } : { ban, expiresAtMs });
    if (ban.source === 'manual' || existing?.ban.source === 'manual') this.persistQuietly();
    this.updateGauge();
    return ban;
  }

  /** Lift a ban because another guard lifted it, without telling change listeners. Never throws. */
  applyRemoteRemoval(rawTarget: unknown): boolean {
    if (typeof rawTarget !== 'string') return false;
    let target: string;
    try {
      target = normalizeBanTarget(rawTarget).target;
    } catch {
      return false;
    }
    const e = this.entry(target);
    if (!e) return false;
    this.delete(target);
    if (e.ban.source === 'manual') this.persistQuietly();
    this.updateGauge();
    return true;
  }

  /** Remove the ban of exactly this target (address or network). Returns false when there was none. */
  remove(target: string): boolean {
    const t = normalizeBanTarget(target).target;
    const e = this.entry(t);
    if (!e) return false;
    this.delete(t);
    if (e.ban.source === 'manual') this.persist();
    this.updateGauge();
    this.tell({ op: 'remove', target: t, ban: { ...e.ban } });
    return true;
  }

  /** Bans in force, networks after addresses, each group in insertion order. */
  list(): Ban[] {
    this.prune(this.clock.now());
    return [...this.exact.values(), ...this.networks.values()].map((e) => ({ ...e.ban }));
  }

  private tell(change: BanChange): void {
    for (const l of this.listeners) {
      try {
        l(change);
      } catch {
        // A listener's fault never undoes or fails the local change.
      }
    }
  }

  /** persist() for changes that came from elsewhere: a disk fault must not fail the sync path. */
  private persistQuietly(): void {
    try {
      this.persist();
    } catch {
      // The ban is in force in memory; the next local manual change rewrites the file.
    }
  }

  private entry(target: string): Entry | undefined {
    return this.exact.get(target) ?? this.networks.get(target);
  }

  private delete(target: string): void {
    if (!this.exact.delete(target)) this.networks.delete(target);
  }

  private makeRoom(now: number): void {
    if (this.size < this.maxEntries) return;
    this.prune(now);
    if (this.size < this.maxEntries) return;
    // Maps iterate in insertion order: the first automatic entry is the oldest one.
    for (const map of [this.exact, this.networks]) {
      for (const [k, e] of map) {
        if (e.ban.source === 'automatic') {
          map.delete(k);
          return;
        }
      }
    }
    throw new BanError('RG_ERR_BANS_FULL', `ban list is full (${this.maxEntries} manual bans)`);
  }

  private maybePrune(now: number): void {
    if (now - this.lastPruneMs >= PRUNE_INTERVAL_MS) this.prune(now);
  }

  private prune(now: number): void {
    this.lastPruneMs = now;
    let manualGone = false;
    for (const map of [this.exact, this.networks]) {
      for (const [k, e] of map) {
        if (e.expiresAtMs > now) continue;
        map.delete(k);
        if (e.ban.source === 'manual') manualGone = true;
      }
    }
    if (manualGone) this.persist();
    this.updateGauge();
  }

  private updateGauge(): void {
    const g = this.opts.metrics?.bansActive;
    if (!g) return;
    let manual = 0;
    for (const map of [this.exact, this.networks]) for (const e of map.values()) if (e.ban.source === 'manual') manual++;
    g.set({ source: 'manual' }, manual);
    g.set({ source: 'automatic' }, this.size - manual);
  }

  private load(file: string): void {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new BanError('RG_ERR_BANS_BAD_FILE', `cannot read ban file ${file}`, { cause: err });
    }
    let doc: unknown;
    try {
      doc = parseYaml(text);
    } catch (err) {
      throw new BanError('RG_ERR_BANS_BAD_FILE', `ban file ${file} is not valid YAML`, { cause: err });
    }
    if (doc === null || doc === undefined) return;
    const bans = (doc as { bans?: unknown }).bans;
    if (typeof doc !== 'object' || !Array.isArray(bans)) throw new BanError('RG_ERR_BANS_BAD_FILE', `ban file ${file}: want a "bans:" list`);
    const now = this.clock.now();
    for (const [i, raw] of bans.entries()) {
      const b = raw as Partial<Ban> | null;
      if (!b || typeof b.target !== 'string') throw new BanError('RG_ERR_BANS_BAD_FILE', `ban file ${file}: entry ${i} has no target`);
      const { target, network } = normalizeBanTarget(b.target);
      const createdAtMs = typeof b.createdAt === 'string' ? Date.parse(b.createdAt) : NaN;
      const expiresAtMs = b.expiresAt === undefined ? Infinity : Date.parse(String(b.expiresAt));
      if (Number.isNaN(expiresAtMs)) throw new BanError('RG_ERR_BANS_BAD_FILE', `ban file ${file}: entry ${i} has a bad expiresAt`);
      if (expiresAtMs <= now) continue;
      const ban: Ban = {
        target,
        reason: String(b.reason ?? '').slice(0, MAX_REASON_CHARS),
        source: 'manual',
        createdAt: new Date(Number.isNaN(createdAtMs) ? now : createdAtMs).toISOString(),
      };
      if (expiresAtMs !== Infinity) ban.expiresAt = new Date(expiresAtMs).toISOString();
      (network ? this.networks : this.exact).set(target, network ? { ban, expiresAtMs, network } : { ban, expiresAtMs });
    }
  }

  /** Write the manual bans: temp file, fsync, rename, fsync the folder (a crash leaves old or new, never half). */
  private persist(): void {
    const file = this.opts.file;
    if (!file) return;
    const manual: Ban[] = [];
    for (const map of [this.exact, this.networks]) for (const e of map.values()) if (e.ban.source === 'manual') manual.push(e.ban);
    const text =
      '# Manual bans of relay-guard, written by the guard (admin API). Edit with care; the guard rewrites this file.\n' +
      stringifyYaml({ bans: manual });
    const tmp = `${file}.${process.pid}.tmp`;
    const fd = openSync(tmp, 'w', 0o640);
    try {
      writeSync(fd, text);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
    try {
      const dfd = openSync(dirname(file), 'r');
      try {
        fsyncSync(dfd);
      } finally {
        closeSync(dfd);
      }
    } catch {
      // Some filesystems refuse fsync on a folder; the rename is still atomic.
    }
  }
}

/** A client address's exact-ban key (canonical text), worked out once per address: asked at every connect. */
const exactKey = remembered((ip: string): string | undefined => {
  const a = parseHostAddress(ip);
  return a ? formatIp(a) : undefined;
});
