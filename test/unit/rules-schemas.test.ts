import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { compileRules } from '../../src/policy/compile.js';
import type { RawRules } from '../../src/rules/schemas.js';
import { evaluateRcpt } from '../../src/policy/relay.js';
import { SECTIONS, SECTION_NAMES, isSectionName } from '../../src/rules/schemas.js';
import { formatSectionText, parseSectionText, validateItem, validateSection } from '../../src/rules/section-file.js';
import { ctxOf, rcptOf } from './policy-fixtures.js';

describe('SECTIONS table', () => {
  test('every section is named in kebab-case and maps to a RawRules key', () => {
    expect(SECTION_NAMES.sort()).toEqual(['accepted-domains', 'limits', 'never-relay-networks', 'policy', 'recipient-validation', 'relay-networks', 'senders']);
    for (const name of SECTION_NAMES) {
      const spec = SECTIONS[name];
      expect(spec.file).toBe(`${name}.yaml`);
      expect(spec.kind === 'list').toBe(spec.itemSchema !== undefined);
      expect(validateSection(name, spec.defaultValue), name).toEqual([]);
    }
    expect(isSectionName('relay-networks')).toBe(true);
    expect(isSectionName('toString')).toBe(false);
  });

  test.each([
    ['relay-networks', '198.51.100.0/24', true],
    ['relay-networks', '2001:db8::/32', true],
    ['relay-networks', 'example.com', false],
    ['accepted-domains', '*.example.com', true],
    ['accepted-domains', 'a\nb', false],
    ['senders', { id: 'x', match: ['<>'], action: 'reject' }, true],
    ['senders', { id: 'Bad Id', match: ['<>'], action: 'reject' }, false],
    ['senders', { id: 'x', match: [], action: 'reject' }, false],
    ['senders', { id: 'x', match: ['<>'], action: 'reject', extra: 1 }, false],
  ] as const)('item of %s: %j valid=%s', (section, item, valid) => {
    expect(validateItem(section, item).length === 0).toBe(valid);
  });

  test('policy reply overrides are checked by the schema', () => {
    expect(validateSection('policy', { rules: { 'relay-denied': { reply: { code: 250, text: 'ok' } } } })[0]?.path).toBe('/rules/relay-denied/reply/code');
    expect(validateSection('policy', { antiSpoofing: 'yes' })[0]?.path).toBe('/antiSpoofing');
  });
});

describe('section files', () => {
  test('empty or comment-only file is refused (a truncated edit); an explicit [] is a value', () => {
    expect(parseSectionText('senders', '# nothing yet\n', 'senders.yaml')).toMatchObject({ ok: false, errors: [{ code: 'RG_ERR_RULES_EMPTY_FILE', file: 'senders.yaml' }] });
    expect(parseSectionText('policy', '', 'policy.yaml')).toMatchObject({ ok: false, errors: [{ code: 'RG_ERR_RULES_EMPTY_FILE', file: 'policy.yaml' }] });
    expect(parseSectionText('senders', '# nothing yet\n[]\n', 'senders.yaml')).toMatchObject({ ok: true, value: [] });
    expect(parseSectionText('policy', '{}\n', 'policy.yaml')).toMatchObject({ ok: true, value: {} });
  });

  test('schema errors carry file, line and key', () => {
    const text = '- id: ok\n  match: ["<>"]\n  action: reject\n- id: second\n  match: ["@x.test"]\n  action: explode\n';
    const r = parseSectionText('senders', text, 'rules/senders.yaml');
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.errors[0]).toMatchObject({ file: 'rules/senders.yaml', line: 6, section: 'senders' });
    expect(r.errors[0]?.path).toMatch(/^\/1\/action/);
  });

  test('a missing key points at its parent item', () => {
    const r = parseSectionText('senders', '- id: a\n  match: ["<>"]\n  action: reject\n- id: b\n  match: ["<>"]\n', 'f.yaml');
    expect(!r.ok && r.errors[0]?.line).toBe(4);
  });

  test('duplicate keys are a YAML error with a line', () => {
    const r = parseSectionText('policy', 'antiSpoofing: true\nantiSpoofing: false\n', 'policy.yaml');
    expect(r).toMatchObject({ ok: false, errors: [expect.objectContaining({ code: 'RG_ERR_RULES_YAML', line: 2 })] });
  });

  test('formatSectionText round-trips', () => {
    const value = [{ id: 'a', match: ['*@x.test'], action: 'defer', reply: { code: 451, enhanced: '4.7.1', text: 'later: "quoted" #x' } }];
    const r = parseSectionText('senders', formatSectionText('senders', value), 'f');
    expect(r).toMatchObject({ ok: true, value });
  });
});

describe('shipped rules/ defaults', () => {
  test('parse, compile, accept example.com only and relay for nobody', async () => {
    const raw: Record<string, unknown> = {};
    for (const name of SECTION_NAMES) {
      const spec = SECTIONS[name];
      let text: string | undefined;
      try {
        text = await readFile(join('rules', spec.file), 'utf8');
      } catch {
        text = undefined;
      }
      if (text === undefined) {
        raw[spec.rawKey] = spec.defaultValue;
        continue;
      }
      const r = parseSectionText(name, text, spec.file);
      expect(r.ok, JSON.stringify(!r.ok && r.errors)).toBe(true);
      if (r.ok) raw[spec.rawKey] = r.value;
    }
    const c = compileRules(raw as RawRules);
    expect(c.ok, JSON.stringify(!c.ok && c.errors)).toBe(true);
    if (!c.ok) return;
    expect(c.snapshot.raw.acceptedDomains).toEqual(['example.com']);
    expect(c.snapshot.antiSpoofing).toBe(false);
    for (const ip of ['127.0.0.1', '10.0.0.1', '192.0.2.1', '::1']) {
      expect(evaluateRcpt(ctxOf({ client: ip }), rcptOf('a@far.test'), c.snapshot).action).toBe('reject');
    }
  });
});
