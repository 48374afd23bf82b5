/** EHLO capability filter (stub; implementation follows). */
import type { Reply } from './reply.js';

export const DEFAULT_EHLO_ALLOW = ['PIPELINING', 'SIZE', '8BITMIME', 'SMTPUTF8', 'DSN', 'ENHANCEDSTATUSCODES', 'HELP'];

export interface FilterEhloOptions {
  allow: ReadonlySet<string>;
  maxSizeBytes?: number;
  add?: readonly string[];
}

export function filterEhlo(r: Reply, _opts: FilterEhloOptions): Reply {
  return { code: 250, lines: [r.lines[0] ?? ''] };
}

export function ehloKeywords(_r: Reply): Map<string, string> {
  return new Map();
}
