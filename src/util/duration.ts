/**
 * Durations in configuration and rule files: strings such as "500ms", "30s", "5m", "1h" or "7d",
 * checked by a TypeBox pattern and parsed into milliseconds. Shared by config, limits, directory,
 * the admin API and every other part that reads a duration (STYLE §7.4: units live in the name).
 */
import { Type } from '@sinclair/typebox';

/** A duration such as "500ms", "30s", "5m", "1h" or "7d". */
export const Duration = Type.String({
  pattern: '^[0-9]+(ms|s|m|h|d)$',
  description: 'A duration: a whole number followed by ms, s, m, h or d (e.g. "30s", "5m", "1h")',
});

const UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parse a Duration string into milliseconds. Throws a RangeError on anything else. */
export function parseDuration(s: string): number {
  const m = /^([0-9]+)(ms|s|m|h|d)$/.exec(s);
  const unit = m?.[2];
  if (!m || unit === undefined) throw new RangeError(`bad duration ${JSON.stringify(s)} (want e.g. "30s", "5m", "1h")`);
  const ms = Number(m[1]) * (UNIT_MS[unit] ?? 1);
  if (!Number.isSafeInteger(ms)) throw new RangeError(`duration ${JSON.stringify(s)} is too large`);
  return ms;
}
