/**
 * Client command lines: parse (wire → Command) and format (Command → wire).
 * Pure. Invariant 1: MAIL and RCPT are forwarded as formatCommand(parsed), never as the raw line.
 */
import type { ForwardPath, EsmtpParam, ReversePath } from './path.js';
import type { Parsed } from './reply.js';

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

export function parseCommand(line: Buffer): Parsed<Command> {
  void line;
  throw new Error('not implemented');
}

export function formatCommand(cmd: Command): Buffer {
  void cmd;
  throw new Error('not implemented');
}

export function commandVerbName(cmd: Command): string {
  return cmd.verb === 'OTHER' ? cmd.name : cmd.verb;
}
