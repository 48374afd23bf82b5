/** ReplyParser: backend bytes → Reply values (stub; implementation follows). */
import type { Reply } from './reply.js';

export type ReplyEvent =
  | { kind: 'reply'; reply: Reply }
  | { kind: 'error'; error: 'line_too_long' | 'bad_syntax' | 'too_many_lines' | 'inconsistent_code' };

export interface ReplyParserOptions {
  maxLineBytes?: number;
  maxLines?: number;
}

export class ReplyParser {
  constructor(_opts?: ReplyParserOptions) {}
  push(_chunk: Buffer): ReplyEvent[] {
    return [];
  }
  get pending(): boolean {
    return false;
  }
}
