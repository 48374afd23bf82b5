/**
 * Admission: what a client must pass before the backend seat is opened — not shutting down, not
 * banned, within the connection limits (concurrent and rate; a tarpit delays), and, on a scored
 * listener, under the DNS lists' threshold (postscreen style). Each refusal is one reply, one
 * outcome for the connections counter, and one log line and count by rule id (SessionRefusals).
 */
import type { Reply } from '../smtp/reply.js';
import { replyText } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import type { Phase, SmtpSession } from './session.js';

export type AdmissionResult = { admitted: true; release?: () => void } | { admitted: false; reply?: Reply; outcome?: string; release?: () => void };

export async function admit(s: SmtpSession): Promise<AdmissionResult> {
  const { svc } = s;
  if (svc.shuttingDown()) {
    s.refusals.record({ stage: 'session', ruleId: 'shutting-down', reply: R.SHUTTING_DOWN, msg: 'client refused' });
    return { admitted: false, reply: R.SHUTTING_DOWN, outcome: 'shutting_down' };
  }
  const ban = svc.bans?.check(s.clientIp);
  if (ban) {
    // The rule id /api/v1/check gives a banned client.
    s.refusals.record({ stage: 'session', ruleId: 'ban', reply: R.BANNED, msg: 'banned client refused', fields: { ban: { target: ban.target, reason: ban.reason } } });
    return { admitted: false, reply: R.BANNED, outcome: 'banned' };
  }
  let release: (() => void) | undefined;
  if (svc.limiter && !(s.limits.noLimitFor('concurrent') && s.limits.noLimitFor('connection'))) {
    const subject = s.limits.subject();
    const conc = svc.limiter.acquireConnection(subject);
    if (!conc.allowed) {
      const d = conc.decision;
      const r = d.action === 'allow' ? R.CAPACITY : d.reply;
      if (d.action === 'allow') s.refusals.record({ stage: 'session', ruleId: 'connection-capacity', reply: r, msg: 'client refused' });
      else s.refusals.record({ stage: 'session', ruleId: d.limitId, reply: r, msg: 'limit hit', fields: { limit: d.limitId, action: d.action, event: 'concurrent' } });
      return { admitted: false, reply: r, outcome: 'limited' };
    }
    release = conc.release;
    const d = await svc.limiter.check('connection', subject);
    if (closed(s)) return { admitted: false, release };
    if (d.action !== 'allow' && d.action !== 'tarpit') {
      const r = { ...d.reply, close: true };
      s.refusals.record({ stage: 'session', ruleId: d.limitId, reply: r, msg: 'limit hit', fields: { limit: d.limitId, action: d.action, event: 'connection' } });
      return { admitted: false, reply: r, outcome: 'limited', release };
    }
    if (d.action === 'tarpit' && d.delayMs) await s.timers.sleep(d.delayMs);
  }
  // DNS lists, postscreen style: decided before the backend seat is opened.
  if (svc.dnsbl && svc.dnsbl.scores(s.listener.config) && !s.trusted()) {
    const scored = await svc.dnsbl.score(s.clientIp);
    if (closed(s)) return { admitted: false, ...(release ? { release } : {}) };
    if (scored.refused && scored.reply) {
      const lists = scored.answers.filter((a) => a.result === 'listed').map((a) => `${a.zone}(${a.weight > 0 ? '+' : ''}${a.weight})`);
      s.refusals.record({ stage: 'session', ruleId: 'dnsbl', reply: scored.reply, msg: 'client refused', fields: { score: scored.score, threshold: scored.threshold, lists } });
      svc.refusals?.record({ kind: 'connect', sessionId: s.id, clientIp: s.clientIp, listener: s.listener.config.name, ruleId: 'dnsbl', reply: replyText(scored.reply) });
      return { admitted: false, reply: scored.reply, outcome: 'dnsbl', ...(release ? { release } : {}) };
    }
  }
  return { admitted: true, ...(release ? { release } : {}) };
}

function closed(s: SmtpSession): boolean {
  return (s.phase as Phase) === 'closed';
}
