/**
 * ReplyParser: turns the BACKEND's reply stream into Reply values (RFC 5321 §4.2).
 * Pure: no I/O.
 *
 * - A reply is one or more lines "CODE-text" ending with "CODE text" (or a bare "CODE").
 *   Every line of one reply must carry the same code (§4.2.1), else 'inconsistent_code'.
 * - Line ends: CR LF, and (liberal towards the backend) a bare LF too. Reply text never holds
 *   CR or LF: a CR inside a line is 'bad_syntax', because the text is later written to the client.
 * - Text is decoded as latin1 so formatReply() writes back exactly the backend's bytes.
 * - The enhanced status code (RFC 2034) is not split out: `enhanced` stays undefined and the code
 *   stays at the start of each line's text.
 * - Bounds: a line longer than `maxLineBytes` (including its line end, default 4096) gives
 *   'line_too_long'; a reply with more than `maxLines` lines (default 100) 'too_many_lines'.
 * - push() keeps no reference to the chunk after it returns: the caller may reuse its memory.
 * - After the first error the parser is finished: it returns [] for every further push; the
 *   session drops the backend connection.
 */
import type { Reply } from './reply.js';

export type ReplyEvent =
  | { kind: 'reply'; reply: Reply }
  | { kind: 'error'; error: 'line_too_long' | 'bad_syntax' | 'too_many_lines' | 'inconsistent_code' };

export interface ReplyParserOptions {
  maxLineBytes?: number;
  maxLines?: number;
}

type ReplyError = Extract<ReplyEvent, { kind: 'error' }>['error'];

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const HYPHEN = 0x2d;

export const DEFAULT_REPLY_MAX_LINE_BYTES = 4096;
export const DEFAULT_REPLY_MAX_LINES = 100;

export class ReplyParser {
  private readonly maxLineBytes: number;
  private readonly maxLines: number;
  /** Bytes of the current, unterminated line. */
  private partial: Buffer[] = [];
  private partialLen = 0;
  /** Code and lines of the multi-line reply being collected. */
  private code = 0;
  private lines: string[] = [];
  private failed = false;

  constructor(opts?: ReplyParserOptions) {
    this.maxLineBytes = opts?.maxLineBytes ?? DEFAULT_REPLY_MAX_LINE_BYTES;
    this.maxLines = opts?.maxLines ?? DEFAULT_REPLY_MAX_LINES;
  }

  /** True while a partial reply (an unterminated line or "CODE-" lines) is buffered. */
  get pending(): boolean {
    return !this.failed && (this.partialLen > 0 || this.lines.length > 0);
  }

  push(chunk: Buffer): ReplyEvent[] {
    const events: ReplyEvent[] = [];
    if (this.failed) return events;
    let start = 0;
    while (start < chunk.length) {
      const lf = chunk.indexOf(LF, start);
      if (lf < 0) {
        const piece = chunk.subarray(start);
        // Without its line end the line is already partialLen + piece bytes long.
        if (this.partialLen + piece.length >= this.maxLineBytes) return this.fail(events, 'line_too_long');
        // A copy: the caller may reuse the chunk's memory once push returns (backend-link.ts reads
        // every backend into one buffer). Only an unterminated line is kept, so this is rare.
        this.partial.push(Buffer.from(piece));
        this.partialLen += piece.length;
        break;
      }
      const piece = chunk.subarray(start, lf);
      start = lf + 1;
      if (this.partialLen + piece.length + 1 > this.maxLineBytes) return this.fail(events, 'line_too_long');
      let line = piece;
      if (this.partialLen > 0) {
        this.partial.push(piece);
        line = Buffer.concat(this.partial, this.partialLen + piece.length);
        this.partial = [];
        this.partialLen = 0;
      }
      const err = this.onLine(line, events);
      if (err) return this.fail(events, err);
    }
    return events;
  }

  private onLine(raw: Buffer, events: ReplyEvent[]): ReplyError | undefined {
    const line = raw.length > 0 && raw[raw.length - 1] === CR ? raw.subarray(0, raw.length - 1) : raw;
    if (line.length < 3) return 'bad_syntax';
    // One native decode per line; the CR check and the text are read from it.
    const text = line.toString('latin1');
    if (text.includes('\r')) return 'bad_syntax';
    const d0 = (line[0] as number) - 0x30;
    const d1 = (line[1] as number) - 0x30;
    const d2 = (line[2] as number) - 0x30;
    // RFC 5321 §4.2: first digit 2-5, second 0-5, third 0-9.
    if (d0 < 2 || d0 > 5 || d1 < 0 || d1 > 5 || d2 < 0 || d2 > 9) return 'bad_syntax';
    const code = d0 * 100 + d1 * 10 + d2;
    let last: boolean;
    if (line.length === 3) last = true;
    else if (line[3] === SP) last = true;
    else if (line[3] === HYPHEN) last = false;
    else return 'bad_syntax';
    if (this.lines.length > 0 && code !== this.code) return 'inconsistent_code';
    if (this.lines.length >= this.maxLines) return 'too_many_lines';
    this.code = code;
    this.lines.push(text.length > 4 ? text.slice(4) : '');
    if (last) {
      events.push({ kind: 'reply', reply: { code, lines: this.lines } });
      this.lines = [];
      this.code = 0;
    }
    return undefined;
  }

  private fail(events: ReplyEvent[], error: ReplyError): ReplyEvent[] {
    this.failed = true;
    this.partial = [];
    this.partialLen = 0;
    this.lines = [];
    events.push({ kind: 'error', error });
    return events;
  }
}
