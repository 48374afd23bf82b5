/**
 * Policy services enter through the envelope judge: asked only about a recipient the judge accepted
 * (so no OK can make a relay), their trace after the judge's, a refusal under rule policy-service:NAME.
 */
import { describe, expect, test } from 'vitest';
import { compileRules } from '../../src/policy/compile.js';
import type { RawRules } from '../../src/rules/schemas.js';
import { judgeRcpt, type EnvelopeContext, type RcptServicesPort, type RcptServicesVerdict } from '../../src/policy/judge.js';
import { analyzeForwardPath, analyzeReversePath } from '../../src/smtp/path.js';
import { reply } from '../../src/smtp/reply.js';

const compiled = compileRules({ acceptedDomains: ['example.com'] } as unknown as RawRules);
if (!compiled.ok) throw new Error('rules');
const rules = compiled.snapshot;
const ctx: EnvelopeContext = {
  session: { clientIp: '127.0.0.9', listener: 'mx', listenerKind: 'mx', listenerRelay: false, tls: false },
  limits: { maxRecipients: 100, maxTransactions: 100, maxMessageBytes: 1 << 20 },
  backendSmtputf8: true,
  dsnAllowed: true,
};
const from = analyzeReversePath('<a@sender.test>');
if (!from.ok) throw new Error('from');
const state = { mailFrom: from.value.path, smtputf8: false, recipients: 0 };

function port(answer: RcptServicesVerdict): RcptServicesPort & { asked: string[] } {
  const asked: string[] = [];
  return { asked, ask: async (rcpt) => (asked.push(rcpt), answer) };
}
const to = (s: string) => {
  const p = analyzeForwardPath(s);
  if (!p.ok) throw new Error(s);
  return p.value.path;
};

describe('judgeRcpt with the policy services port', () => {
  test('a relay attempt is refused by the judge; the services are never asked, whatever they would say', async () => {
    const p = port({ action: 'accept', trace: [{ ruleId: 'policy-service:x', result: 'permit', note: 'OK' }] });
    const j = await judgeRcpt(ctx, state, to('<victim@elsewhere.test>'), [], rules, undefined, p);
    expect(j.verdict).toMatchObject({ action: 'reject', ruleId: 'relay-denied' });
    expect(p.asked).toEqual([]);
  });

  test('an accepted recipient: the services\' trace follows the judge\'s, the judge\'s rule stands, PREPEND carried', async () => {
    const p = port({ action: 'accept', trace: [{ ruleId: 'policy-service:grey', result: 'dunno', note: 'PREPEND X-A: 1' }], prepend: ['X-A: 1'] });
    const j = await judgeRcpt(ctx, state, to('<bob@example.com>'), [], rules, undefined, p);
    expect(j.verdict).toMatchObject({ action: 'accept', ruleId: 'accepted-domains' });
    expect(j.verdict.trace.at(-1)).toMatchObject({ ruleId: 'policy-service:grey' });
    expect(j.prepend).toEqual(['X-A: 1']);
    expect(j.limit).toBe('recipient');
    expect(p.asked).toEqual(['bob@example.com']);
  });

  test('a service refuses: rule policy-service:NAME, its reply, no limit event, no parameters forwarded', async () => {
    const r = reply(450, '4.7.1', '<bob@example.com>: Recipient address rejected: Greylisted');
    const p = port({ action: 'defer', reply: r, decidedBy: 'postgrey', trace: [{ ruleId: 'policy-service:postgrey', result: 'defer', note: 'DEFER_IF_PERMIT' }] });
    const j = await judgeRcpt(ctx, state, to('<bob@example.com>'), [], rules, undefined, p);
    expect(j.verdict).toMatchObject({ action: 'defer', ruleId: 'policy-service:postgrey', reply: r });
    expect(j.verdict.trace.map((s) => s.ruleId)).toContain('accepted-domains');
    expect(j.limit).toBeUndefined();
    expect(j.params).toEqual([]);
  });

  test('no service applies (the port answers undefined): the judge\'s verdict as it was', async () => {
    const j = await judgeRcpt(ctx, state, to('<bob@example.com>'), [], rules, undefined, { ask: async () => undefined });
    expect(j.verdict).toMatchObject({ action: 'accept', ruleId: 'accepted-domains' });
    expect(j.prepend).toBeUndefined();
  });
});
