/**
 * What a rules change does, decided in one place for both stores (the rules directory of one guard,
 * and the shared Redis store of a fleet): precondition (If-Match), schema, item identity, the
 * open-relay compile check and the "no accepted domain left" guard. Pure: the stores only persist
 * and publish the plan this returns.
 */
import { compileRules, type CompileResult, type RuleError } from '../policy/compile.js';
import type { RawRules, RulesSnapshot } from './schemas.js';
import { contentHash, deepFreeze, stableStringify } from '../policy/content-hash.js';
import { canonicalDomain } from '../policy/domain-name.js';
import { formatNetwork, parseNetwork } from '../util/ip-address.js';
import type { AuditOperation } from './audit-log.js';
import { SECTIONS, SECTION_NAMES, isSectionName, type SectionName } from './schemas.js';
import { validateItem, validateSection } from './section-file.js';

export interface RulesOverlay {
  acceptedDomains?: string[];
  relayNetworks?: string[];
}

export type ChangeFailure = { ok: false; status: 400 | 404 | 409 | 412 | 503; code: string; message: string; errors?: RuleError[] };

export type ChangeResult = { ok: true; etag: string; version: string; snapshot: RulesSnapshot } | ChangeFailure;

export interface ChangeOptions {
  /** An ETag list (If-Match): the change is refused with 412 when the section's ETag is not in it. */
  ifMatch?: string;
  actor: string;
  /** Allow a change that leaves no accepted domain at all (refused with 409 otherwise). */
  force?: boolean;
}

export type ChangeRequest =
  | { op: 'replace'; section: string; value: unknown }
  | { op: 'add'; section: string; item: unknown }
  | { op: 'remove'; section: string; item: unknown }
  | { op: 'rollback'; raw: RawRules }
  /** Several sections at once (ctl rules import): section name → value; absent sections are kept. */
  | { op: 'import'; sections: Record<string, unknown> };

export type ChangePlan =
  | { kind: 'refused'; result: ChangeFailure }
  | { kind: 'noop'; section?: SectionName }
  | { kind: 'change'; raw: RawRules; snapshot: RulesSnapshot; changed: SectionName[]; operation: AuditOperation; section?: SectionName };

/** Decide a change against the rule set in force (`current`: the files' or the store's content). */
export function planChange(current: RawRules, currentVersion: string, req: ChangeRequest, opts: { ifMatch?: string; force?: boolean }, overlay: RulesOverlay | undefined): ChangePlan {
  const refused = (result: ChangeFailure): ChangePlan => ({ kind: 'refused', result });
  let next: RawRules;
  let changed: SectionName[];
  let section: SectionName | undefined;
  const operation: AuditOperation = req.op;
  if (req.op === 'rollback') {
    next = structuredClone(req.raw);
    changed = changedSections(current, next);
  } else if (req.op === 'import') {
    const errors: RuleError[] = [];
    next = structuredClone(current) as RawRules;
    for (const [name, value] of Object.entries(req.sections)) {
      if (!isSectionName(name)) return refused(unknownSection(name));
      errors.push(...validateSection(name, value));
      (next as unknown as Record<string, unknown>)[SECTIONS[name].rawKey] = structuredClone(value);
    }
    if (errors.length > 0) return refused(invalid(errors));
    changed = changedSections(current, next);
  } else {
    const name = req.section;
    if (!isSectionName(name)) return refused(unknownSection(name));
    section = name;
    if (req.op === 'remove' && SECTIONS[name].kind !== 'list') return refused({ ok: false, status: 400, code: 'RG_ERR_RULES_NOT_A_LIST', message: `section ${name} is not a list` });
    const pre = precondition(current, name, opts.ifMatch);
    if (pre) return refused(pre);
    if (req.op === 'replace') {
      const errors = validateSection(name, req.value);
      if (errors.length > 0) return refused(invalid(errors));
      next = withSection(current, name, structuredClone(req.value));
    } else if (req.op === 'add') {
      const errors = validateItem(name, req.item);
      if (errors.length > 0) return refused(invalid(errors, errors[0]?.code === 'RG_ERR_RULES_NOT_A_LIST' ? errors[0].code : undefined));
      const list = current[SECTIONS[name].rawKey] as readonly unknown[];
      const key = itemKey(name, req.item);
      const existing = list.find((x) => itemKey(name, x) === key);
      if (existing !== undefined) {
        if (stableStringify(existing) === stableStringify(req.item)) return { kind: 'noop', section: name }; // idempotent
        return refused({ ok: false, status: 409, code: 'RG_ERR_RULES_DUPLICATE_ID', message: `${name} already holds an item with id ${JSON.stringify(key)}` });
      }
      next = withSection(current, name, [...list, structuredClone(req.item)]);
    } else {
      const list = current[SECTIONS[name].rawKey] as readonly unknown[];
      const key = itemKey(name, req.item);
      const kept = list.filter((x) => itemKey(name, x) !== key);
      if (kept.length === list.length) {
        return refused({ ok: false, status: 404, code: 'RG_ERR_RULES_ITEM_NOT_FOUND', message: `${JSON.stringify(typeof req.item === 'string' ? req.item : key)} is not in ${name}` });
      }
      next = withSection(current, name, kept);
    }
    changed = [name];
  }
  const compiled = compileWithOverlay(next, overlay);
  if (!compiled.ok) return refused(invalid(compiled.errors));
  if (compiled.snapshot.version === currentVersion || changedSections(current, next).length === 0) return { kind: 'noop', ...(section ? { section } : {}) };
  const emptied = emptiesAcceptedDomains(current, next, overlay);
  if (emptied && opts.force !== true) return refused(emptied);
  return { kind: 'change', raw: next, snapshot: compiled.snapshot, changed, operation, ...(section ? { section } : {}) };
}

export function changedSections(a: RawRules, b: RawRules): SectionName[] {
  return SECTION_NAMES.filter((n) => stableStringify(a[SECTIONS[n].rawKey]) !== stableStringify(b[SECTIONS[n].rawKey]));
}

export function etagOf(value: unknown): string {
  return `"${contentHash(value)}"`;
}

/** A section's value (a copy) and its ETag, from either store's rules. Throws on an unknown section name. */
export function readSection(raw: RawRules, name: string): { value: unknown; etag: string } {
  if (!isSectionName(name)) throw new Error(`unknown rules section ${JSON.stringify(name)}`);
  const value = raw[SECTIONS[name].rawKey];
  return { value: structuredClone(value), etag: etagOf(value) };
}

/** The result a successful (or idempotent) change answers with. */
export function okResult(s: RulesSnapshot, section: SectionName | undefined): ChangeResult {
  return { ok: true, etag: section === undefined ? `"${s.version}"` : etagOf(s.raw[SECTIONS[section].rawKey]), version: s.version, snapshot: s };
}

function precondition(current: RawRules, name: SectionName, ifMatch: string | undefined): ChangeFailure | undefined {
  if (ifMatch === undefined || ifMatch === '*') return undefined;
  const etag = etagOf(current[SECTIONS[name].rawKey]);
  const offered = ifMatch.split(',').map((t) => t.trim().replace(/^W\//, ''));
  if (offered.includes(etag)) return undefined;
  return { ok: false, status: 412, code: 'RG_ERR_RULES_PRECONDITION_FAILED', message: `${name} was changed by someone else (current ETag ${etag}); fetch it again and retry` };
}

export function compileWithOverlay(raw: RawRules, overlay: RulesOverlay | undefined): CompileResult<RawRules> {
  if (!overlay || ((overlay.acceptedDomains?.length ?? 0) === 0 && (overlay.relayNetworks?.length ?? 0) === 0)) return compileRules(raw);
  const merged: RawRules = {
    ...raw,
    acceptedDomains: [...new Set([...raw.acceptedDomains, ...(overlay.acceptedDomains ?? [])])],
    relayNetworks: [...new Set([...raw.relayNetworks, ...(overlay.relayNetworks ?? [])])],
  };
  const r = compileRules(merged);
  // snapshot.raw stays the files' content, so nothing from the command line is ever written back
  // by a client that edits what it read; the matchers (and the version) include the overlay.
  if (r.ok) return { ok: true, snapshot: Object.freeze({ ...r.snapshot, raw: deepFreeze(structuredClone(raw)) }) };
  // An error at an index past the file's own entries comes from the command line.
  return {
    ok: false,
    errors: r.errors.map((e) => {
      const index = Number(e.path?.split('/')[1]);
      const fileLen = e.section === 'accepted-domains' ? raw.acceptedDomains.length : e.section === 'relay-networks' ? raw.relayNetworks.length : Infinity;
      if (!(index >= fileLen)) return e;
      const { path: _path, ...rest } = e;
      void _path;
      return { ...rest, file: 'command line', message: `${e.message} (from the command line)` };
    }),
  };
}

function withSection(raw: Readonly<RawRules>, name: SectionName, value: unknown): RawRules {
  return { ...(structuredClone(raw) as RawRules), [SECTIONS[name].rawKey]: value };
}

/**
 * A change that leaves no accepted domain (files and command line) while some are accepted now:
 * every local recipient would become a permanent 550 at once. Refused unless the admin forces it.
 */
function emptiesAcceptedDomains(before: RawRules, after: RawRules, overlay: RulesOverlay | undefined): ChangeFailure | undefined {
  const extra = overlay?.acceptedDomains?.length ?? 0;
  if (after.acceptedDomains.length + extra > 0 || before.acceptedDomains.length + extra === 0) return undefined;
  return {
    ok: false, status: 409, code: 'RG_ERR_RULES_EMPTY_ACCEPTED_DOMAINS',
    message: 'this change leaves no accepted domain: every recipient would be refused with 550 (and senders bounce real mail); repeat it with ?force=true (ctl --force) if that is what you mean',
  };
}

export function unknownSection(name: string): ChangeFailure {
  return { ok: false, status: 404, code: 'RG_ERR_RULES_UNKNOWN_SECTION', message: `unknown rules section ${JSON.stringify(name)} (known: ${SECTION_NAMES.join(', ')})` };
}

export function invalid(errors: RuleError[], code?: string): ChangeFailure {
  return { ok: false, status: 400, code: code ?? errors[0]?.code ?? 'RG_ERR_RULES_INVALID', message: errors.map(formatRuleError).join('; '), errors };
}

export function formatRuleError(e: RuleError): string {
  const where = e.file === undefined ? e.section : `${e.file}${e.line === undefined ? '' : `:${e.line}`}`;
  const key = e.path !== undefined && e.path !== '' && !e.message.startsWith(e.path) ? ` (at ${e.path})` : '';
  return `${where}: ${e.message}${key}`;
}

/**
 * Identity of a list item: sender rules by id; domains and networks by canonical form, so that
 * "Example.COM." and "example.com", or "10.0.0.0/8" and "10.0.0.0/08", are the same item.
 */
function itemKey(name: SectionName, item: unknown): string {
  if (name === 'senders') {
    if (typeof item === 'string') return item;
    return typeof item === 'object' && item !== null && typeof (item as { id?: unknown }).id === 'string' ? (item as { id: string }).id : stableStringify(item);
  }
  if (typeof item !== 'string') return stableStringify(item);
  if (name === 'accepted-domains') {
    const wildcard = item.startsWith('*.');
    const d = canonicalDomain(wildcard ? item.slice(2) : item);
    return d.ok ? `${wildcard ? '*.' : ''}${d.domain}` : item;
  }
  const n = parseNetwork(item);
  return n.ok ? formatNetwork(n.network) : item;
}
