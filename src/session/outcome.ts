/**
 * What a verb handler returns: what should happen, not how. The session's loop (session.ts,
 * apply) alone sequences, writes, counts and logs, and its reply writer applies the error limits,
 * so a refusal can never skip its log line or its count (chasquid's handlers return (code, msg)).
 */
import type { Command } from '../smtp/command.js';
import type { Reply } from '../smtp/reply.js';
import type { PolicyRefusal } from '../policy/verdict.js';

/**
 * A refusal the guard makes itself. Every one is counted once in command_refusals_total by its
 * rule id (SessionRefusals.ruleId); each stage has its one log line and its own counters:
 *  - command: a protocol or sequence refusal ('command refused', protocol_errors_total by kind);
 *  - verb: a verb not allowed here ('command refused', refused_verbs_total by verb);
 *  - sender / rcpt: an envelope judge verdict ('sender refused' / 'rcpt refused', the verdict
 *    counters by rule id, and the admin console's ring of recent refusals);
 *  - session: not one command's verb or envelope — a connection (admission, the backend seat, an
 *    early talker, too much pipelined input), a message (smuggling, size, a DATA policy service) or
 *    a limit's decision; logged under its own `msg` with `fields`, its reply written by the caller.
 */
export type Refusal =
  | { readonly stage: 'command'; readonly ruleId: string; readonly reply: Reply; readonly kind?: string }
  | { readonly stage: 'verb'; readonly verb: string; readonly reply: Reply; readonly ruleId?: string }
  | { readonly stage: 'sender'; readonly sender: string | undefined; readonly verdict: PolicyRefusal }
  | { readonly stage: 'rcpt'; readonly rcpt: string; readonly lookup: string | undefined; readonly verdict: PolicyRefusal }
  | {
      readonly stage: 'session';
      readonly ruleId: string;
      readonly reply: Reply;
      /** The log line's message ('client refused', 'limit hit', 'smuggling attempt refused', …). */
      readonly msg: string;
      readonly fields?: Readonly<Record<string, unknown>>;
      readonly warn?: boolean;
      /** protocol_errors_total kind, when it is one. */
      readonly kind?: string;
    };

export type Outcome =
  /** The guard answers (counted as a guard reply), in command order. */
  | { readonly kind: 'reply'; readonly reply: Reply }
  /**
   * The guard refuses: one log line, one count by rule id, then the refusal's reply. `answer`, when
   * given, is asked after the count and answers instead (a limit may decide the reply); `after` is
   * asked after the reply is queued (a limit counted on the refusal).
   */
  | { readonly kind: 'refuse'; readonly refusal: Refusal; readonly answer?: () => Outcome; readonly after?: () => Outcome }
  /** Re-serialised from its parsed form to the backend (invariant 1); the reply is relayed in order. */
  | { readonly kind: 'forward'; readonly command: Command; readonly onReply?: (r: Reply) => void }
  /** Asynchronous (limiter, directory, backend seat): nothing more is read until it settles; then its outcome applies. */
  | { readonly kind: 'wait'; readonly until: Promise<Outcome> }
  /** The handler holds a reply slot or a barrier itself (DATA, AUTH, STARTTLS, QUIT), or nothing is to be written. */
  | { readonly kind: 'held' };

export const HELD: Outcome = { kind: 'held' };
