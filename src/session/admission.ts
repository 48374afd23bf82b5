/**
 * Admission: what a client must pass before the backend seat is opened — not shutting down, not
 * banned, within the connection limits (concurrent and rate; a tarpit delays), and, on a scored
 * listener, under the DNS lists' threshold (postscreen style). Each refusal is one reply and one
 * outcome for the connections counter.
 */
import type { Reply } from '../smtp/reply.js';
import { replyText } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import type { Phase, SmtpSession } from './session.js';

export type AdmissionResult = { admitted: true; release?: () => void } | { admitted: false; reply?: Reply; outcome?: string; release?: () => void };

export async function admit(s: SmtpSession): Promise<AdmissionResult> {
  const { svc } = s;
  if (svc.shuttingDown()) return { admitted: false, reply: R.SHUTTING_DOWN, outcome: 'shutting_down' };
  const ban = svc.bans?.check(s.clientIp);
  if (ban) {
    s.log.info({ ban: { target: ban.target, reason: ban.reason } }, 'banned client refused');
    return { admitted: false, reply: R.BANNED, outcome: 'banned' };
  }
  let release: (() => void) | undefined;
  if (svc.limiter && !(s.limits.noLimitFor('concurrent') && s.limits.noLimitFor('connection'))) {
    const subject = s.limits.subject();
    const conc = svc.limiter.acquireConnection(subject);
    if (!conc.allowed) return { admitted: false, reply: conc.decision.action === 'allow' ? R.CAPACITY : conc.decision.reply, outcome: 'limited' };
    release = conc.release;
    const d = await svc.limiter.check('connection', subject);
    if (closed(s)) return { admitted: false, release };
    if (d.action !== 'allow' && d.action !== 'tarpit') return { admitted: false, reply: { ...d.reply, close: true }, outcome: 'limited', release };
    if (d.action === 'tarpit' && d.delayMs) await s.timers.sleep(d.delayMs);
  }
  // DNS lists, postscreen style: decided before the backend seat is opened.
  if (svc.dnsbl && svc.dnsbl.scores(s.listener.config) && !s.trusted()) {
    const scored = await svc.dnsbl.score(s.clientIp);
    if (closed(s)) return { admitted: false, ...(release ? { release } : {}) };
    if (scored.refused && scored.reply) {
      const lists = scored.answers.filter((a) => a.result === 'listed').map((a) => `${a.zone}(${a.weight > 0 ? '+' : ''}${a.weight})`);
      s.log.info({ ruleId: 'dnsbl', score: scored.score, threshold: scored.threshold, lists, reply: replyText(scored.reply) }, 'client refused');
      svc.refusals?.record({ kind: 'connect', sessionId: s.id, clientIp: s.clientIp, listener: s.listener.config.name, ruleId: 'dnsbl', reply: replyText(scored.reply) });
      return { admitted: false, reply: scored.reply, outcome: 'dnsbl', ...(release ? { release } : {}) };
    }
  }
  return { admitted: true, ...(release ? { release } : {}) };
}

function closed(s: SmtpSession): boolean {
  return (s.phase as Phase) === 'closed';
}
