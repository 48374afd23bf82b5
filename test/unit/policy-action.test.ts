/** Postfix policy answers without I/O: parsing actions, one stage's answers as one verdict, the request's wire form. */
import { describe, expect, test } from 'vitest';
import { evaluatePolicyAnswers, parsePolicyAction, type ServiceAnswer } from '../../src/policy-service/policy-action.js';
import { formatPolicyRequest, policyAttributes } from '../../src/policy-service/policy-request.js';
import { replyText } from '../../src/smtp/reply.js';

describe('parsePolicyAction (access(5) actions)', () => {
  const cases = [
    { raw: 'OK', want: { kind: 'ok' } },
    { raw: 'ok', want: { kind: 'ok' } },
    { raw: 'DUNNO', want: { kind: 'dunno' } },
    // REJECT and DEFER: default codes, default texts, enhanced codes taken from the text
    { raw: 'REJECT', want: { kind: 'reject', code: 554, enhanced: '5.7.1', text: 'Access denied' } },
    { raw: 'REJECT go away', want: { kind: 'reject', code: 554, enhanced: '5.7.1', text: 'go away' } },
    { raw: 'REJECT 5.7.26 SPF fail', want: { kind: 'reject', code: 554, enhanced: '5.7.26', text: 'SPF fail' } },
    { raw: 'REJECT 4.7.1 wrong class', want: { kind: 'reject', code: 554, enhanced: '5.7.1', text: 'wrong class' } },
    { raw: 'DEFER', want: { kind: 'defer', code: 450, enhanced: '4.7.1', text: 'Try again later' } },
    { raw: 'DEFER busy', want: { kind: 'defer', code: 450, enhanced: '4.7.1', text: 'busy' } },
    { raw: 'DEFER_IF_PERMIT Greylisted, see http://x.test/', want: { kind: 'defer_if_permit', text: 'Greylisted, see http://x.test/' } },
    { raw: 'DEFER_IF_REJECT maybe', want: { kind: 'defer_if_reject', text: 'maybe' } },
    // explicit codes
    { raw: '450 4.2.0 greylisted', want: { kind: 'defer', code: 450, enhanced: '4.2.0', text: 'greylisted', explicit: true } },
    { raw: '550 no such user here', want: { kind: 'reject', code: 550, enhanced: '5.7.1', text: 'no such user here', explicit: true } },
    { raw: '521', want: { kind: 'reject', code: 521, enhanced: '5.7.1', text: 'Access denied', explicit: true } },
    // PREPEND
    { raw: 'PREPEND X-Greylist: delayed 3 seconds', want: { kind: 'prepend', header: 'X-Greylist: delayed 3 seconds' } },
    { raw: 'PREPEND not a header', want: { kind: 'unknown' } },
    { raw: `PREPEND X-Long: ${'a'.repeat(1000)}`, want: { kind: 'unknown' } },
    // anything else: unknown (logged, DUNNO)
    { raw: 'HOLD', want: { kind: 'unknown' } },
    { raw: 'DISCARD spam', want: { kind: 'unknown' } },
    { raw: 'permit_mynetworks', want: { kind: 'unknown' } },
    { raw: '250 fine', want: { kind: 'unknown' } },
    { raw: '', want: { kind: 'unknown' } },
    { raw: 'xyzzy \u00ff\u0001', want: { kind: 'unknown' } },
  ];
  test.each(cases)('$raw', ({ raw, want }) => {
    expect(parsePolicyAction(raw)).toMatchObject(want);
  });
});

const said = (service: string, raw: string): ServiceAnswer => ({ service, answered: true, action: parsePolicyAction(raw), raw });
const silent = (service: string, onError: 'dunno' | 'tempfail'): ServiceAnswer => ({ service, answered: false, failure: 'timeout', onError });

describe('evaluatePolicyAnswers (one stage, services in order)', () => {
  const cases: Array<{ name: string; answers: ServiceAnswer[]; want: string; by?: string; prepend?: string[] }> = [
    { name: 'no service', answers: [], want: 'accept' },
    { name: 'DUNNO goes on to the implicit permit', answers: [said('a', 'DUNNO')], want: 'accept' },
    { name: 'OK accepts', answers: [said('a', 'OK')], want: 'accept', by: 'a' },
    { name: 'REJECT', answers: [said('a', 'REJECT not here')], want: '554 5.7.1 <bob@example.com>: Recipient address rejected: not here', by: 'a' },
    { name: 'DEFER', answers: [said('a', 'DEFER later')], want: '450 4.7.1 <bob@example.com>: Recipient address rejected: later', by: 'a' },
    { name: '4NN text', answers: [said('a', '452 4.5.3 too many')], want: '452 4.5.3 <bob@example.com>: Recipient address rejected: too many', by: 'a' },
    { name: '5NN text', answers: [said('a', '550 5.1.1 unknown')], want: '550 5.1.1 <bob@example.com>: Recipient address rejected: unknown', by: 'a' },
    // DEFER_IF_PERMIT: deferred when the outcome would be a permit (explicit OK or the end of the list)
    { name: 'DEFER_IF_PERMIT then the end', answers: [said('grey', 'DEFER_IF_PERMIT Greylisted')], want: '450 4.7.1 <bob@example.com>: Recipient address rejected: Greylisted', by: 'grey' },
    { name: 'DEFER_IF_PERMIT then OK', answers: [said('grey', 'DEFER_IF_PERMIT Greylisted'), said('b', 'OK')], want: '450 4.7.1 <bob@example.com>: Recipient address rejected: Greylisted', by: 'grey' },
    { name: 'DEFER_IF_PERMIT then REJECT: the reject', answers: [said('grey', 'DEFER_IF_PERMIT Greylisted'), said('b', 'REJECT no')], want: '554 5.7.1 <bob@example.com>: Recipient address rejected: no', by: 'b' },
    // DEFER_IF_REJECT: deferred only when something later rejects
    { name: 'DEFER_IF_REJECT then the end', answers: [said('a', 'DEFER_IF_REJECT unsure')], want: 'accept' },
    { name: 'DEFER_IF_REJECT then REJECT', answers: [said('a', 'DEFER_IF_REJECT unsure'), said('b', 'REJECT no')], want: '450 4.7.1 <bob@example.com>: Recipient address rejected: unsure', by: 'a' },
    { name: 'DEFER_IF_REJECT then 550', answers: [said('a', 'DEFER_IF_REJECT unsure'), said('b', '550 no')], want: '450 4.7.1 <bob@example.com>: Recipient address rejected: unsure', by: 'a' },
    // PREPEND adds a header and goes on; a refusal later drops it
    { name: 'PREPEND then the end', answers: [said('a', 'PREPEND X-Test: 1')], want: 'accept', prepend: ['X-Test: 1'] },
    { name: 'PREPEND from two services', answers: [said('a', 'PREPEND X-A: 1'), said('b', 'PREPEND X-B: 2'), said('c', 'OK')], want: 'accept', prepend: ['X-A: 1', 'X-B: 2'] },
    // unknown and garbage: DUNNO
    { name: 'garbage is DUNNO', answers: [said('a', 'FROB the knob'), said('b', 'DUNNO')], want: 'accept' },
    // 421 closes
    { name: '421 closes', answers: [said('a', '421 4.7.0 go away')], want: '421 4.7.0 <bob@example.com>: Recipient address rejected: go away', by: 'a' },
    // a service that did not answer
    { name: 'onError dunno goes on', answers: [silent('a', 'dunno')], want: 'accept' },
    { name: 'onError tempfail: 451 4.3.5', answers: [silent('a', 'tempfail')], want: '451 4.3.5 Server configuration problem', by: 'a' },
  ];
  test.each(cases)('$name', ({ answers, want, by, prepend }) => {
    const v = evaluatePolicyAnswers('RCPT', 'bob@example.com', answers);
    if (want === 'accept') {
      expect(v.action).toBe('accept');
      if (v.action === 'accept') expect(v.prepend).toEqual(prepend ?? []);
    } else {
      expect(v.action).not.toBe('accept');
      if (v.action !== 'accept') expect(replyText(v.reply)).toBe(want);
    }
    if (by) expect(v.decidedBy).toBe(by);
    expect(v.trace.length).toBeGreaterThanOrEqual(answers.length > 0 ? 1 : 0);
  });

  test('421 and 521 close the connection, other codes do not', () => {
    const close = (raw: string) => {
      const v = evaluatePolicyAnswers('RCPT', 'x@y', [said('a', raw)]);
      return v.action !== 'accept' && v.reply.close === true;
    };
    expect(close('421 bye')).toBe(true);
    expect(close('521 bye')).toBe(true);
    expect(close('450 later')).toBe(false);
    expect(close('REJECT')).toBe(false);
  });

  test('the DATA stage words its refusals as Postfix does', () => {
    const v = evaluatePolicyAnswers('DATA', '', [said('a', 'REJECT content policy')]);
    expect(v.action !== 'accept' && replyText(v.reply)).toBe('554 5.7.1 <DATA>: Data command rejected: content policy');
  });
});

describe('the request on the wire', () => {
  const facts = {
    protocolState: 'RCPT' as const,
    protocolName: 'ESMTP' as const,
    heloName: 'client.test',
    sender: 'alice@sender.test',
    recipient: 'bob@example.com',
    recipientCount: 0,
    clientAddress: '127.0.0.9',
    clientPort: 40000,
    instance: 'abc.1',
    size: 1234,
  };
  test('every attribute Postfix sends, in its order, then an empty line', () => {
    const text = formatPolicyRequest(facts).toString();
    expect(text.startsWith('request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nhelo_name=client.test\nqueue_id=\nsender=alice@sender.test\nrecipient=bob@example.com\nrecipient_count=0\nclient_address=127.0.0.9\nclient_name=unknown\nreverse_client_name=unknown\ninstance=abc.1\n')).toBe(true);
    expect(text.endsWith('\n\n')).toBe(true);
    expect(text.split('\n').filter((l) => l.length > 0).every((l) => /^[a-z_]+=/.test(l))).toBe(true);
    for (const k of ['sasl_username', 'size', 'client_port', 'server_address', 'encryption_protocol']) expect(text).toContain(`\n${k}=`);
  });
  test('values never carry CR, LF or NUL, and are capped', () => {
    const attrs = new Map(policyAttributes({ ...facts, heloName: 'evil\r\naction=OK\n\n', sender: 'x'.repeat(5000) }));
    expect(attrs.get('helo_name')).toBe('evil  action=OK  ');
    expect(attrs.get('sender')?.length).toBe(1024);
  });
});
