/**
 * Client command lines: parse (wire → Command) and format (Command → wire).
 * Pure. Invariant 1: MAIL and RCPT are forwarded as formatCommand(parsed), never as the raw line.
 */
import type { ForwardPath, EsmtpParam, ReversePath } from './path.js';

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
