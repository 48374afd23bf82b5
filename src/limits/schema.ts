// PLACEHOLDER — the limits helper replaces this file with the real TypeBox schema of rules/limits.yaml.
import { Type, type Static } from '@sinclair/typebox';
export const LimitsSchema = Type.Object({}, { additionalProperties: true });
export type LimitsRules = Static<typeof LimitsSchema>;
export const DEFAULT_LIMITS: LimitsRules = {};
