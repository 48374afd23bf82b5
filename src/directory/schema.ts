// PLACEHOLDER — the directory helper replaces this file with the real TypeBox schema of rules/recipient-validation.yaml.
import { Type, type Static } from '@sinclair/typebox';
export const RecipientValidationSchema = Type.Object({}, { additionalProperties: true });
export type RecipientValidationRules = Static<typeof RecipientValidationSchema>;
export const DEFAULT_RECIPIENT_VALIDATION: RecipientValidationRules = {};
