/**
 * Client command lines: parse (wire → Command) and format (Command → wire).
 * Pure. Invariant 1: MAIL and RCPT are forwarded as formatCommand(parsed), never as the raw line.
 */
import type { ForwardPath, EsmtpParam, ReversePath } from './path.js';
import { formatForwardPath, formatParams, formatReversePath, parseForwardPath, parseReversePath, trimSpaces } from './path.js';
import { fail, ok, reply, type Parsed, type Reply } from './reply.js';
import { BAD_BYTES, BAD_SENDER_SYNTAX, BAD_RECIPIENT_SYNTAX, HTTP_ON_SMTP, SYNTAX_ERROR, UNKNOWN_VERB } from './replies.js';

export type Command =
  | { readonly verb: 'HELO' | 'EHLO'; readonly domain: string }
  | { readonly verb: 'MAIL'; readonly path: ReversePath; readonly params: readonly EsmtpParam[] }
  | { readonly verb: 'RCPT'; readonly path: ForwardPath; readonly params: readonly EsmtpParam[] }
  | { readonly verb: 'DATA' | 'RSET' | 'QUIT' | 'STARTTLS' }
  | { readonly verb: 'NOOP' | 'HELP' | 'VRFY' | 'EXPN'; readonly arg: string }
  | { readonly verb: 'AUTH'; readonly mechanism: string; readonly initialResponse?: string }
  | { readonly verb: 'BDAT'; readonly size: number; readonly last: boolean }
  /** Any other verb we know of but do not implement (TURN, ETRN, ATRN, XCLIENT, XEXCH50, X-LINK2STATE, ...). */
  | { readonly verb: 'OTHER'; readonly name: string; readonly arg: string };

export type Verb = Command['verb'];

/** A TLS record (ClientHello, content type 0x16) on a plain-text port: the client wanted implicit TLS. */
export const TLS_ON_PLAIN: Reply = {
  ...reply(500, '5.5.2', 'TLS handshake on a plain-text port; use STARTTLS or the TLS port'),
  close: true,
};

const NO_ARG_VERBS = new Set(['DATA', 'RSET', 'QUIT', 'STARTTLS'] as const);
const TEXT_ARG_VERBS = new Set(['NOOP', 'HELP', 'VRFY', 'EXPN'] as const);
/** Verbs we recognise and hand to the session as OTHER (which refuses or forwards them by policy). */
const OTHER_VERBS = new Set(['TURN', 'ETRN', 'ATRN', 'XCLIENT', 'XFORWARD', 'XEXCH50', 'X-LINK2STATE', 'XRDST']);
/** Request-line methods of HTTP/1.x, and "PRI" of the HTTP/2 preface (RFC 9113 §3.4). Case-sensitive. */
const HTTP_METHODS = new Set(['GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH', 'PRI']);

const VERB = /^[A-Za-z][A-Za-z0-9-]{0,63}$/;
// RFC 4422 §3.1: SASL mechanism names are 1-20 upper-case letters, digits, '-' or '_'.
const SASL_MECHANISM = /^[A-Za-z0-9_-]{1,20}$/;
// RFC 4954 §4: initial-response = base64 / "=".
const SASL_INITIAL_RESPONSE = /^(?:[A-Za-z0-9+/]+={0,2}|=)$/;
// RFC 3030 §2: chunk-size = 1*DIGIT; 15 digits keep it a safe integer.
const BDAT_SIZE = /^[0-9]{1,15}$/;

const utf8 = new TextDecoder('utf-8', { fatal: true });

function isBadByte(b: number): boolean {
  // RFC 5321 §2.3.8 / §4.1.1: command lines are printable text; NUL, CR, LF, TAB, other C0
  // controls and DEL are refused, never cleaned up (a backend might read them differently).
  return b < 0x20 || b === 0x7f;
}

/**
 * Parse one command line (without its CRLF), bytes as received.
 *
 * Leniency (beyond RFC 5321 §4.1.1): verbs in any case; trailing spaces after any command;
 * several spaces between the words of HELO/EHLO, AUTH, BDAT and ESMTP parameters; the MAIL/RCPT
 * path leniency documented in path.ts. Everything else fails closed with a reply (invariant 2).
 */
export function parseCommand(line: Buffer): Parsed<Command> {
  if (line[0] === 0x16) return fail('tls_on_plain', TLS_ON_PLAIN);
  // One native decode per line: latin1 maps each byte to one char, so byte and string indices agree.
  let text = line.toString('latin1');
  const sp = text.indexOf(' ');
  const verbText = sp < 0 ? text : text.slice(0, sp);
  if (HTTP_METHODS.has(verbText)) return fail('http', HTTP_ON_SMTP);
  let nonAscii = false;
  for (let i = 0; i < text.length; i++) {
    const b = text.charCodeAt(i);
    if (isBadByte(b)) return fail('bad_bytes', BAD_BYTES);
    if (b >= 0x80) nonAscii = true;
  }
  if (!VERB.test(verbText)) return fail('unknown_verb', UNKNOWN_VERB);
  const verb = verbText.toUpperCase();
  if (nonAscii) {
    // Only MAIL and RCPT may carry UTF-8 (RFC 6531 §3.3 addresses), and it must be valid UTF-8.
    // The verb is ASCII (VERB above), so `sp` is the same index in the UTF-8 text.
    if (verb !== 'MAIL' && verb !== 'RCPT') return fail('bad_bytes', BAD_BYTES);
    try {
      text = utf8.decode(line);
    } catch {
      return fail('bad_bytes', BAD_BYTES);
    }
  }
  const arg = sp < 0 ? '' : text.slice(sp + 1);
  return parseVerb(verb, arg);
}

function parseVerb(verb: string, arg: string): Parsed<Command> {
  switch (verb) {
    case 'HELO':
    case 'EHLO': {
      // RFC 5321 §4.1.1.1: one Domain or address-literal. Kept as given; policy judges it.
      const domain = trimSpaces(arg);
      if (domain === '' || domain.includes(' ')) return fail('syntax', SYNTAX_ERROR);
      return ok({ verb, domain });
    }
    case 'MAIL': {
      // RFC 5321 §4.1.1.2: "MAIL FROM:" Reverse-path [SP Mail-parameters]
      if (!/^FROM:/i.test(arg)) return fail('syntax', BAD_SENDER_SYNTAX);
      const r = parseReversePath(arg.slice(5));
      return r.ok ? ok({ verb: 'MAIL', path: r.value.path, params: r.value.params }) : r;
    }
    case 'RCPT': {
      // RFC 5321 §4.1.1.3: "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path ) [SP Rcpt-parameters]
      if (!/^TO:/i.test(arg)) return fail('syntax', BAD_RECIPIENT_SYNTAX);
      const r = parseForwardPath(arg.slice(3));
      return r.ok ? ok({ verb: 'RCPT', path: r.value.path, params: r.value.params }) : r;
    }
    case 'AUTH': {
      // RFC 4954 §4: "AUTH" SP sasl-mech [SP initial-response]
      const words = splitWords(arg);
      const mechanism = words[0];
      if (mechanism === undefined || words.length > 2 || !SASL_MECHANISM.test(mechanism)) {
        return fail('syntax', SYNTAX_ERROR);
      }
      const initialResponse = words[1];
      if (initialResponse === undefined) return ok({ verb: 'AUTH', mechanism: mechanism.toUpperCase() });
      if (!SASL_INITIAL_RESPONSE.test(initialResponse)) return fail('syntax', SYNTAX_ERROR);
      return ok({ verb: 'AUTH', mechanism: mechanism.toUpperCase(), initialResponse });
    }
    case 'BDAT': {
      // RFC 3030 §2: "BDAT" SP chunk-size [SP end-marker]
      const words = splitWords(arg);
      const size = words[0];
      const marker = words[1];
      if (size === undefined || words.length > 2 || !BDAT_SIZE.test(size)) return fail('syntax', SYNTAX_ERROR);
      if (marker !== undefined && marker.toUpperCase() !== 'LAST') return fail('syntax', SYNTAX_ERROR);
      return ok({ verb: 'BDAT', size: Number(size), last: marker !== undefined });
    }
  }
  if (isNoArgVerb(verb)) {
    // RFC 5321 §4.1.1.4/5/10, RFC 3207 §4: no parameters.
    return trimSpaces(arg) === '' ? ok({ verb }) : fail('syntax', SYNTAX_ERROR);
  }
  if (isTextArgVerb(verb)) return ok({ verb, arg: trimSpaces(arg) });
  if (OTHER_VERBS.has(verb) || verb.startsWith('X')) return ok({ verb: 'OTHER', name: verb, arg: trimSpaces(arg) });
  return fail('unknown_verb', UNKNOWN_VERB);
}

function isNoArgVerb(v: string): v is 'DATA' | 'RSET' | 'QUIT' | 'STARTTLS' {
  return (NO_ARG_VERBS as Set<string>).has(v);
}

function isTextArgVerb(v: string): v is 'NOOP' | 'HELP' | 'VRFY' | 'EXPN' {
  return (TEXT_ARG_VERBS as Set<string>).has(v);
}

function splitWords(arg: string): string[] {
  return arg.split(' ').filter((w) => w !== '');
}

/** The command line without CRLF, canonical form (what the backend receives). */
export function formatCommandText(cmd: Command): string {
  switch (cmd.verb) {
    case 'HELO':
    case 'EHLO':
      return `${cmd.verb} ${cmd.domain}`;
    case 'MAIL':
      return `MAIL FROM:${formatReversePath(cmd.path)}${formatParams(cmd.params)}`;
    case 'RCPT':
      return `RCPT TO:${formatForwardPath(cmd.path)}${formatParams(cmd.params)}`;
    case 'DATA':
    case 'RSET':
    case 'QUIT':
    case 'STARTTLS':
      return cmd.verb;
    case 'NOOP':
    case 'HELP':
    case 'VRFY':
    case 'EXPN':
      return cmd.arg === '' ? cmd.verb : `${cmd.verb} ${cmd.arg}`;
    case 'AUTH':
      return cmd.initialResponse === undefined ? `AUTH ${cmd.mechanism}` : `AUTH ${cmd.mechanism} ${cmd.initialResponse}`;
    case 'BDAT':
      return cmd.last ? `BDAT ${cmd.size} LAST` : `BDAT ${cmd.size}`;
    case 'OTHER':
      return `${cmd.name} ${cmd.arg}`.trim();
  }
}

/**
 * Canonical wire form ending in CRLF. Throws (a broken invariant, never client input) if a
 * Command built by code would put a control character, or non-ASCII outside MAIL/RCPT, on the wire.
 */
export function formatCommand(cmd: Command): Buffer {
  const text = formatCommandText(cmd);
  if (CONTROL_CHAR.test(text)) throw new Error(`formatCommand: control character in ${cmd.verb} command`);
  const ascii = !NON_ASCII_CHAR.test(text);
  if (!ascii && cmd.verb !== 'MAIL' && cmd.verb !== 'RCPT') throw new Error(`formatCommand: non-ASCII text in ${cmd.verb} command`);
  return Buffer.from(`${text}\r\n`, ascii ? 'latin1' : 'utf8');
}

// eslint-disable-next-line no-control-regex
const CONTROL_CHAR = /[\x00-\x1f\x7f]/;
// eslint-disable-next-line no-control-regex
const NON_ASCII_CHAR = /[^\x00-\x7f]/;

/** Verb for logs and metrics ('RCPT', or the OTHER command's own name, e.g. 'XEXCH50'). */
export function commandVerbName(cmd: Command): string {
  return cmd.verb === 'OTHER' ? cmd.name : cmd.verb;
}
