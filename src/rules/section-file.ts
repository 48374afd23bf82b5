/**
 * One rule file: YAML text → validated section value, with every problem located by file, line and
 * key. Also YAML output for persisting a section.
 */
import { Value } from '@sinclair/typebox/value';
import { isMap, isSeq, LineCounter, parseDocument, stringify, type Document } from 'yaml';
import type { RuleError } from '../policy/compile.js';
import { SECTIONS, type SectionName } from './schemas.js';

const MAX_ERRORS = 20;

export type SectionParse =
  | { ok: true; value: unknown; lineOf: (path: string) => number | undefined }
  | { ok: false; errors: RuleError[] };

/**
 * Parse and schema-check a section file's text. A file with no YAML value at all (0 bytes, only
 * whitespace or only comments) is refused with RG_ERR_RULES_EMPTY_FILE: it is the commonest
 * truncated hand edit, and read as "no domains" it would turn local mail into 550s. An explicit `[]`
 * (or `{}`) is a value and stays valid; a missing file is the section's default.
 */
export function parseSectionText(name: SectionName, text: string, file: string): SectionParse {
  const spec = SECTIONS[name];
  if (isEmptyYaml(text)) {
    const hint = spec.kind === 'list' ? 'write [] for an empty list' : 'write {} or remove the file for the defaults';
    return { ok: false, errors: [{ code: 'RG_ERR_RULES_EMPTY_FILE', section: name, file, message: `${file} is empty (no YAML value, only whitespace or comments): refused as a truncated edit; ${hint}` }] };
  }
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, uniqueKeys: true });
  if (doc.errors.length > 0) {
    return {
      ok: false,
      errors: doc.errors.slice(0, MAX_ERRORS).map((e) => ({
        code: 'RG_ERR_RULES_YAML', section: name, file, line: e.linePos?.[0]?.line ?? lc.linePos(e.pos[0]).line,
        message: e.message.split('\n')[0] ?? e.message,
      })),
    };
  }
  const lineOf = (path: string): number | undefined => lineOfPath(doc, lc, path);
  const js: unknown = doc.toJS();
  const value = js === undefined ? structuredClone(spec.defaultValue) : js;
  const errors = validateSection(name, value).map((e) => ({ ...e, file, ...lineField(lineOf(e.path ?? '')) }));
  return errors.length > 0 ? { ok: false, errors } : { ok: true, value, lineOf };
}

/** Schema errors of a section value (no file or line). */
export function validateSection(name: SectionName, value: unknown): RuleError[] {
  const spec = SECTIONS[name];
  if (Value.Check(spec.schema, value)) return [];
  const out: RuleError[] = [];
  for (const e of Value.Errors(spec.schema, value)) {
    out.push({ code: 'RG_ERR_RULES_INVALID', section: name, path: e.path, message: `${e.path === '' ? name : e.path}: ${e.message}` });
    if (out.length >= MAX_ERRORS) break;
  }
  return out;
}

/** Schema errors of one item of a list section. */
export function validateItem(name: SectionName, item: unknown): RuleError[] {
  const spec = SECTIONS[name];
  if (spec.itemSchema === undefined) return [{ code: 'RG_ERR_RULES_NOT_A_LIST', section: name, message: `section ${name} is not a list` }];
  if (Value.Check(spec.itemSchema, item)) return [];
  const out: RuleError[] = [];
  for (const e of Value.Errors(spec.itemSchema, item)) {
    out.push({ code: 'RG_ERR_RULES_INVALID', section: name, path: `/value${e.path}`, message: `value${e.path === '' ? '' : e.path}: ${e.message}` });
    if (out.length >= MAX_ERRORS) break;
  }
  return out;
}

/** The YAML text relay-guard writes for a section (a comment header, then the value). */
export function formatSectionText(name: SectionName, value: unknown): string {
  const spec = SECTIONS[name];
  return `# ${spec.description}\n# Managed by relay-guard: changes through the admin API rewrite this file; hand edits are picked up live.\n${stringify(value)}`;
}

/** True for text that holds no YAML node: nothing but whitespace and `#` comment lines. */
export function isEmptyYaml(text: string): boolean {
  return text.split(/\r?\n|\r/).every((l) => /^\s*(#.*)?$/.test(l));
}

function lineField(line: number | undefined): { line?: number } {
  return line === undefined ? {} : { line };
}

/** Line of the node at a JSON pointer ("/2/id"); the nearest existing ancestor if the key is missing. */
function lineOfPath(doc: Document, lc: LineCounter, path: string): number | undefined {
  const segments = path.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  let node: unknown = doc.contents;
  let line = rangeLine(node, lc);
  for (const seg of segments) {
    let next: unknown;
    if (isSeq(node)) next = node.items[Number(seg)];
    else if (isMap(node)) next = node.items.find((p) => String((p.key as { value?: unknown } | null)?.value ?? p.key) === seg)?.value;
    if (next === undefined || next === null) break;
    node = next;
    line = rangeLine(node, lc) ?? line;
  }
  return line;
}

function rangeLine(node: unknown, lc: LineCounter): number | undefined {
  const range = (node as { range?: [number, number, number] } | null)?.range;
  return range ? lc.linePos(range[0]).line : undefined;
}
