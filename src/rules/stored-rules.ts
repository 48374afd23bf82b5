/**
 * A rule set as the shared rules store keeps it (rules:doc, history entries, the last-known-good
 * copy), and the check every such entry passes before a guard believes it: whoever can write to Redis
 * controls these bytes, so they are parsed and validated like a rules file.
 */
import type { RuleError } from '../policy/compile.js';
import { contentHash } from '../policy/content-hash.js';
import { compileWithOverlay, type RulesOverlay } from './rules-change.js';
import type { RawRules, RulesSnapshot } from './schemas.js';
import { SECTIONS, SECTION_NAMES } from './schemas.js';
import { validateSection } from './section-file.js';

/** A stored rule set, as in rules:doc, in history entries and in the local copy. */
export interface StoredRules {
  v: 1;
  rev: number;
  version: string;
  raw: RawRules;
  time: string;
  actor: string;
  guard: string;
  operation: string;
}

export type Checked = { ok: true; stored: StoredRules; snapshot: RulesSnapshot } | { ok: false; code: string; message: string; errors?: RuleError[] };

/** Parse and validate a stored rule set: JSON shape, every section's schema, compile, content hash. */
export function checkStored(text: string, overlay: RulesOverlay | undefined): Checked {
  let doc: Partial<StoredRules>;
  try {
    doc = JSON.parse(text) as Partial<StoredRules>;
  } catch {
    return { ok: false, code: 'RG_ERR_RULES_STORE_INVALID', message: 'entry is not JSON' };
  }
  if (doc === null || typeof doc !== 'object' || doc.v !== 1 || typeof doc.rev !== 'number' || !Number.isSafeInteger(doc.rev) || doc.rev < 1 || typeof doc.version !== 'string' || doc.raw === null || typeof doc.raw !== 'object') {
    return { ok: false, code: 'RG_ERR_RULES_STORE_INVALID', message: 'entry does not have the shape { v: 1, rev, version, raw }' };
  }
  const raw = doc.raw as unknown as Record<string, unknown>;
  const errors: RuleError[] = [];
  for (const name of SECTION_NAMES) {
    const value = raw[SECTIONS[name].rawKey];
    if (value === undefined) errors.push({ code: 'RG_ERR_RULES_STORE_INVALID', section: name, message: `section ${name} is missing` });
    else errors.push(...validateSection(name, value));
  }
  if (errors.length > 0) return { ok: false, code: errors[0]?.code ?? 'RG_ERR_RULES_STORE_INVALID', message: errors[0]?.message ?? 'invalid', errors };
  const compiled = compileWithOverlay(doc.raw, overlay);
  if (!compiled.ok) return { ok: false, code: compiled.errors[0]?.code ?? 'RG_ERR_RULES_INVALID', message: compiled.errors[0]?.message ?? 'invalid', errors: compiled.errors };
  if (contentHash(doc.raw) !== doc.version) {
    return { ok: false, code: 'RG_ERR_RULES_STORE_TAMPERED', message: `content does not match its version ${doc.version} (edited outside relay-guard)` };
  }
  return { ok: true, stored: doc as StoredRules, snapshot: compiled.snapshot };
}
