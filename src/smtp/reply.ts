/**
 * SMTP replies: the one value every part of the guard uses to say something to a client.
 * Pure: no I/O. The backend's replies are parsed by ReplyParser (reply-parser.ts).
 */

/** One SMTP reply. `lines` hold the text after "CODE-" / "CODE " (and after the enhanced code, if set). */
export interface Reply {
  /** Three-digit reply code, RFC 5321 §4.2. */
  readonly code: number;
  /** Enhanced status code (RFC 3463), e.g. "5.7.1"; written at the start of every line when set. */
  readonly enhanced?: string;
  /** At least one line of text; never contains CR or LF. */
  readonly lines: readonly string[];
  /** The guard closes the client connection after writing this reply. */
  readonly close?: boolean;
}

/** Result of a parser: a value, or the reply that tells the client what was wrong. */
export type Parsed<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly reply: Reply; readonly kind: ProtocolErrorKind };

/** Closed set of protocol error kinds (also the `kind` label of relay_guard_protocol_errors_total). */
export type ProtocolErrorKind =
  | 'line_too_long'
  | 'bad_bytes'
  | 'bare_lf'
  | 'bare_cr'
  | 'bad_eod'
  | 'unknown_verb'
  | 'syntax'
  | 'bad_sequence'
  | 'early_talker'
  | 'http'
  | 'tls_on_plain'
  | 'too_many_errors';

export function ok<T>(value: T): Parsed<T> {
  return { ok: true, value };
}

export function fail<T>(kind: ProtocolErrorKind, reply: Reply): Parsed<T> {
  return { ok: false, kind, reply };
}

export function reply(code: number, enhanced: string | undefined, ...lines: string[]): Reply {
  return enhanced === undefined ? { code, lines } : { code, enhanced, lines };
}

/** The reply class used in metrics and logs. */
export function replyClass(r: Pick<Reply, 'code'>): '2xx' | '3xx' | '4xx' | '5xx' {
  if (r.code >= 500) return '5xx';
  if (r.code >= 400) return '4xx';
  if (r.code >= 300) return '3xx';
  return '2xx';
}

/** Render a reply on the wire, all lines in one Buffer (one write). */
export function formatReply(r: Reply): Buffer {
  const lines = r.lines.length > 0 ? r.lines : [''];
  const prefix = r.enhanced ? `${r.enhanced} ` : '';
  let out = '';
  for (let i = 0; i < lines.length; i++) {
    const sep = i === lines.length - 1 ? ' ' : '-';
    const text = `${prefix}${lines[i]}`;
    out += text.length > 0 ? `${r.code}${sep}${text}\r\n` : `${r.code}${sep === ' ' ? '' : '-'}\r\n`;
  }
  return Buffer.from(out, 'latin1');
}

/** One-line text form for logs and the admin API: "550 5.7.1 Relaying denied". */
export function replyText(r: Reply): string {
  const first = r.lines[0] ?? '';
  return r.enhanced ? `${r.code} ${r.enhanced} ${first}` : `${r.code} ${first}`.trimEnd();
}

export function withClose(r: Reply): Reply {
  return { ...r, close: true };
}
