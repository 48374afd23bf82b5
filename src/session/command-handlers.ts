/**
 * The verb handlers' front door: one command line the codec parsed becomes the Outcome the session
 * loop applies (session.ts run()). HELO/EHLO, MAIL and RCPT go to EnvelopeRelay, DATA to the policy
 * service stage and then DataRelay, AUTH to AuthRelay, STARTTLS to StartTls; the small verbs are
 * answered here. Handlers decide; they never write to the client themselves.
 */
import { isFailure } from '../backend/backend-link.js';
import { parseCommand, formatCommand, commandVerbName } from '../smtp/command.js';
import { reply } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import { verbLabel } from '../observability/metrics.js';
import { HELD, type Outcome } from './outcome.js';
import type { SmtpSession } from './session.js';

export function commandOutcome(s: SmtpSession, line: Buffer): Outcome {
  const parsed = parseCommand(line);
  if (!parsed.ok) {
    s.svc.metrics.commands.inc({ verb: 'other' });
    return s.refusals.protocolError(parsed.kind, parsed.reply, line);
  }
  const cmd = parsed.value;
  // The parsed verbs are all known labels; only a private verb's name needs looking up.
  s.svc.metrics.commands.inc({ verb: cmd.verb === 'OTHER' ? verbLabel(commandVerbName(cmd)) : cmd.verb });
  switch (cmd.verb) {
    case 'HELO':
    case 'EHLO':
      return s.envelope.onHelo(cmd);
    case 'MAIL':
      return { kind: 'wait', until: s.envelope.onMail(cmd.path, cmd.params) };
    case 'RCPT':
      return { kind: 'wait', until: s.envelope.onRcpt(cmd.path, cmd.params) };
    case 'DATA':
      return s.policy.onData(() => s.data.onData());
    case 'RSET':
      s.tx.reset();
      // No backend session held (none lent now): nothing to reset there.
      if (!s.seat.link) return { kind: 'reply', reply: reply(250, '2.0.0', 'OK') };
      return { kind: 'forward', command: cmd, onReply: () => s.seat.endTransaction(true) };
    case 'NOOP':
      return { kind: 'reply', reply: reply(250, '2.0.0', 'OK') };
    case 'HELP':
      return { kind: 'reply', reply: reply(214, '2.0.0', 'See RFC 5321') };
    case 'QUIT':
      return quit(s);
    case 'VRFY':
      if (s.svc.config.smtp.vrfy === '252') return { kind: 'reply', reply: R.VRFY_CANNOT };
      return s.refusals.verb('VRFY');
    case 'EXPN':
      return s.refusals.verb('EXPN');
    case 'STARTTLS':
      return s.startTls.onStartTls();
    case 'AUTH':
      return s.auth.onAuth(cmd.mechanism, cmd.initialResponse);
    case 'BDAT':
      return s.refusals.verb('BDAT'); // CHUNKING is never advertised: the guard must see DATA's end.
    case 'OTHER': {
      const name = cmd.name.toUpperCase();
      if (s.svc.config.smtp.trustedVerbs.map((v) => v.toUpperCase()).includes(name) && s.trusted()) {
        if (s.seat.own) return { kind: 'forward', command: cmd };
        // A private verb (ETRN, an X-verb) may change the backend session's state, so this client
        // keeps that session (the one it holds, else a free one) for good, as with AUTH.
        return { kind: 'wait', until: s.dedicate().then((ok): Outcome => (ok ? { kind: 'forward', command: cmd } : HELD)) };
      }
      return s.refusals.verb(name);
    }
  }
}

function quit(s: SmtpSession): Outcome {
  s.summary.outcome = 'quit';
  // A lent backend session is not this client's to close: the guard says goodbye itself and the
  // session goes back (RSET first when a transaction was open).
  const own = s.seat.own;
  s.block();
  if (!own) return { kind: 'reply', reply: { ...reply(221, '2.0.0', 'Bye'), close: true } };
  const slot = s.replies.seq.later();
  own.send('QUIT', formatCommand({ verb: 'QUIT' }), (r) => {
    const bye = isFailure(r) ? reply(221, '2.0.0', 'Bye') : r;
    s.replies.count(isFailure(r) ? 'guard' : 'backend', bye);
    slot.resolve({ ...bye, close: true });
  });
  return HELD;
}
