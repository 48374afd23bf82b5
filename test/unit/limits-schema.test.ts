import { readFileSync } from 'node:fs';
import { Value } from '@sinclair/typebox/value';
import { describe, expect, test } from 'vitest';
import { parse } from 'yaml';
import { DEFAULT_LIMITS, LimitsSchema } from '../../src/limits/schema.js';
import { parseDuration } from '../../src/util/duration.js';

describe('limits schema', () => {
  test('the shipped rules/limits.yaml is valid and equals DEFAULT_LIMITS', () => {
    const doc: unknown = parse(readFileSync(new URL('../../rules/limits.yaml', import.meta.url), 'utf8'));
    expect([...Value.Errors(LimitsSchema, doc)]).toEqual([]);
    expect(doc).toEqual(DEFAULT_LIMITS);
  });

  test('DEFAULT_LIMITS is valid, ids are unique, every window parses', () => {
    expect(Value.Check(LimitsSchema, DEFAULT_LIMITS)).toBe(true);
    const ids = DEFAULT_LIMITS.limits.map((l) => l.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const l of DEFAULT_LIMITS.limits) for (const d of [l.window, l.ban, l.maxBan, l.tarpit]) if (d) expect(parseDuration(d)).toBeGreaterThan(0);
  });

  test('covers every event the issue asks for', () => {
    const events = new Set(DEFAULT_LIMITS.limits.map((l) => `${l.event}/${l.key}`));
    for (const e of ['concurrent/ip', 'connection/ip', 'relay-denied/ip', 'unknown-recipient/ip', 'auth-failure/ip', 'protocol-error/ip', 'message/ip', 'recipient/sender', 'message/user', 'recipient/user']) {
      expect(events).toContain(e);
    }
  });

  test.each([
    { name: 'unknown key', doc: { ...DEFAULT_LIMITS, limits: [{ id: 'x', event: 'message', key: 'helo', limit: 1, action: 'tempfail' }] } },
    { name: 'bad duration', doc: { ...DEFAULT_LIMITS, limits: [{ id: 'x', event: 'message', key: 'ip', limit: 1, window: '5 minutes', action: 'tempfail' }] } },
    { name: 'id not kebab-case', doc: { ...DEFAULT_LIMITS, limits: [{ id: 'My Limit', event: 'message', key: 'ip', limit: 1, action: 'tempfail' }] } },
    { name: 'snake_case field', doc: { ...DEFAULT_LIMITS, prefix_v4: 24 } },
    { name: 'zero limit', doc: { ...DEFAULT_LIMITS, limits: [{ id: 'x', event: 'message', key: 'ip', limit: 0, action: 'tempfail' }] } },
  ])('rejects $name', ({ doc }) => {
    expect(Value.Check(LimitsSchema, doc)).toBe(false);
  });

  test.each([
    ['250ms', 250],
    ['30s', 30_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['7d', 604_800_000],
  ])('parseDuration(%s) = %d', (s, ms) => expect(parseDuration(s)).toBe(ms));

  test.each(['', '5', 'm', '1.5h', '-1s', '1 h', '1w'])('parseDuration rejects %j', (s) => {
    expect(() => parseDuration(s)).toThrow(RangeError);
  });
});
