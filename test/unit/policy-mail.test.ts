import { describe, expect, test } from 'vitest';
import type { SenderRule } from '../../src/policy/compile.js';
import type { RawRules } from '../../src/rules/schemas.js';
import { evaluateRecipientLookup } from '../../src/policy/recipient.js';
import { evaluateMail, MAIL_DEFAULT_RULE_ID } from '../../src/policy/sender.js';
import { explainVerdict } from '../../src/policy/verdict.js';
import { replyText } from '../../src/smtp/reply.js';
import { ctxOf, senderOf, snapshotOf } from './policy-fixtures.js';

const SENDERS: SenderRule[] = [
  { id: 'spam-domain', match: ['*@spam.test'], action: 'reject' },
  { id: 'spam-domain-short', match: ['@junk.test'], action: 'reject', reply: { code: 554, enhanced: '5.7.1', text: 'Go away' } },
  { id: 'spam-subdomains', match: ['*@*.bulk.test'], action: 'defer' },
  { id: 'one-user', match: ['Mallory@Evil.Test'], action: 'reject' },
  { id: 'bounces-from-lab', match: ['<>'], clients: ['192.0.2.0/24'], action: 'reject', reply: { code: 550, enhanced: '5.7.1', text: 'No bounces from the lab' } },
  { id: 'watch-list', match: ['*@watch.test'], action: 'reject', mode: 'warn' },
  { id: 'watch-list-2', match: ['*@watch.test', '*@watch2.test'], action: 'defer', mode: 'warn' },
];

interface MailCase {
  name: string;
  client?: string;
  auth?: string;
  listenerRelay?: boolean;
  rules?: Partial<RawRules>;
  sender: string;
  want: 'accept' | 'reject' | 'defer';
  rule: string;
  reply?: string;
  warnings?: string[];
}

const SPOOF = { policy: { antiSpoofing: true } };

const cases: MailCase[] = [
  // custom sender rules
  { name: 'domain pattern *@', rules: { senders: SENDERS }, sender: 'a@spam.test', want: 'reject', rule: 'sender-rules:spam-domain', reply: '550 5.7.1 Sender rejected' },
  { name: 'domain pattern is case-insensitive', rules: { senders: SENDERS }, sender: 'a@SPAM.test.', want: 'reject', rule: 'sender-rules:spam-domain' },
  { name: 'domain pattern does not match subdomains', rules: { senders: SENDERS }, sender: 'a@x.spam.test', want: 'accept', rule: MAIL_DEFAULT_RULE_ID },
  { name: 'domain pattern @ with custom reply', rules: { senders: SENDERS }, sender: 'a@junk.test', want: 'reject', rule: 'sender-rules:spam-domain-short', reply: '554 5.7.1 Go away' },
  { name: 'subdomain pattern defers', rules: { senders: SENDERS }, sender: 'a@mx.bulk.test', want: 'defer', rule: 'sender-rules:spam-subdomains', reply: '450 4.7.1 Sender temporarily rejected, try again later' },
  { name: 'subdomain pattern skips the apex', rules: { senders: SENDERS }, sender: 'a@bulk.test', want: 'accept', rule: MAIL_DEFAULT_RULE_ID },
  { name: 'exact address, any case', rules: { senders: SENDERS }, sender: 'mallory@evil.test', want: 'reject', rule: 'sender-rules:one-user' },
  { name: 'other user at that domain', rules: { senders: SENDERS }, sender: 'alice@evil.test', want: 'accept', rule: MAIL_DEFAULT_RULE_ID },
  { name: 'null sender from the listed clients', rules: { senders: SENDERS }, client: '192.0.2.9', sender: '<>', want: 'reject', rule: 'sender-rules:bounces-from-lab', reply: '550 5.7.1 No bounces from the lab' },
  { name: 'null sender from elsewhere', rules: { senders: SENDERS }, sender: '<>', want: 'accept', rule: MAIL_DEFAULT_RULE_ID },
  { name: 'warn mode records and goes on (two warnings)', rules: { senders: SENDERS }, sender: 'a@watch.test', want: 'accept', rule: MAIL_DEFAULT_RULE_ID, warnings: ['sender-rules:watch-list', 'sender-rules:watch-list-2'] },
  { name: 'first match wins', rules: { senders: [{ id: 'a', match: ['@x.test'], action: 'defer' }, { id: 'b', match: ['@x.test'], action: 'reject' }] }, sender: 'u@x.test', want: 'defer', rule: 'sender-rules:a' },
  { name: 'warn then enforce', rules: { senders: [{ id: 'a', match: ['@x.test'], action: 'reject', mode: 'warn' }, { id: 'b', match: ['@x.test'], action: 'reject' }] }, sender: 'u@x.test', want: 'reject', rule: 'sender-rules:b', warnings: ['sender-rules:a'] },

  // anti-spoofing
  { name: 'anti-spoofing off by default', sender: 'ceo@example.com', want: 'accept', rule: MAIL_DEFAULT_RULE_ID },
  { name: 'anti-spoofing: our domain from a stranger', rules: SPOOF, sender: 'ceo@example.com', want: 'reject', rule: 'anti-spoofing', reply: '550 5.7.1 Sender not authorised' },
  { name: 'anti-spoofing: case and trailing dot', rules: SPOOF, sender: 'ceo@EXAMPLE.com.', want: 'reject', rule: 'anti-spoofing' },
  { name: 'anti-spoofing: wildcard subdomain is ours', rules: SPOOF, sender: 'ceo@mx.example.net', want: 'reject', rule: 'anti-spoofing' },
  { name: 'anti-spoofing: foreign sender', rules: SPOOF, sender: 'friend@far.test', want: 'accept', rule: MAIL_DEFAULT_RULE_ID },
  { name: 'anti-spoofing: null sender is never spoofing', rules: SPOOF, sender: '<>', want: 'accept', rule: MAIL_DEFAULT_RULE_ID },
  { name: 'anti-spoofing: relay network', rules: SPOOF, client: '198.51.100.7', sender: 'ceo@example.com', want: 'accept', rule: MAIL_DEFAULT_RULE_ID },
  { name: 'anti-spoofing: authenticated', rules: SPOOF, auth: 'ceo', sender: 'ceo@example.com', want: 'accept', rule: MAIL_DEFAULT_RULE_ID },
  { name: 'anti-spoofing: internal listener', rules: SPOOF, listenerRelay: true, sender: 'ceo@example.com', want: 'accept', rule: MAIL_DEFAULT_RULE_ID },
  { name: 'anti-spoofing: never-relay beats auth', rules: SPOOF, client: '198.51.100.66', auth: 'ceo', sender: 'ceo@example.com', want: 'reject', rule: 'anti-spoofing' },
  { name: 'anti-spoofing: warn mode', rules: { policy: { antiSpoofing: true, rules: { 'anti-spoofing': { mode: 'warn' } } } }, sender: 'ceo@example.com', want: 'accept', rule: MAIL_DEFAULT_RULE_ID, warnings: ['anti-spoofing'] },
  { name: 'anti-spoofing: custom reply', rules: { policy: { antiSpoofing: true, rules: { 'anti-spoofing': { reply: { code: 553, enhanced: '5.7.1', text: 'Use the submission port' } } } } }, sender: 'ceo@example.com', want: 'reject', rule: 'anti-spoofing', reply: '553 5.7.1 Use the submission port' },
  { name: 'sender rules run before anti-spoofing', rules: { policy: { antiSpoofing: true }, senders: [{ id: 'x', match: ['@example.com'], action: 'defer' }] }, sender: 'ceo@example.com', want: 'defer', rule: 'sender-rules:x' },
];

describe('evaluateMail golden table', () => {
  test.each(cases)('$name', (c) => {
    const ctx = ctxOf({ ...(c.client === undefined ? {} : { client: c.client }), ...(c.auth === undefined ? {} : { auth: c.auth }), ...(c.listenerRelay ? { listenerRelay: true } : {}) });
    const v = evaluateMail(ctx, senderOf(c.sender), snapshotOf(c.rules));
    expect({ action: v.action, ruleId: v.ruleId }, explainVerdict(v)).toEqual({ action: c.want, ruleId: c.rule });
    if (c.reply !== undefined) expect(v.action !== 'accept' && replyText(v.reply)).toBe(c.reply);
    expect(v.warnings.map((w) => w.ruleId)).toEqual(c.warnings ?? []);
  });
});

describe('evaluateRecipientLookup', () => {
  test('known recipient is accepted', () => {
    const v = evaluateRecipientLookup('known', snapshotOf());
    expect(v).toMatchObject({ action: 'accept', ruleId: 'recipient-validation', validate: 'off' });
  });
  test('unknown recipient: 550 5.1.1', () => {
    const v = evaluateRecipientLookup('unknown', snapshotOf());
    expect(v.action).toBe('reject');
    expect(v.ruleId).toBe('recipient-unknown');
    expect(v.action !== 'accept' && replyText(v.reply)).toBe('550 5.1.1 User unknown');
  });
  test('directory error: 451 4.4.3 defer', () => {
    const v = evaluateRecipientLookup('error', snapshotOf());
    expect(v.action).toBe('defer');
    expect(v.ruleId).toBe('directory-unavailable');
    expect(v.action !== 'accept' && v.reply.enhanced).toBe('4.4.3');
  });
  test('unknown recipient in warn mode is accepted with a warning', () => {
    const v = evaluateRecipientLookup('unknown', snapshotOf({ policy: { rules: { 'recipient-unknown': { mode: 'warn' } } } }));
    expect(v.action).toBe('accept');
    expect(v.warnings).toEqual([{ ruleId: 'recipient-unknown', reply: expect.objectContaining({ code: 550, enhanced: '5.1.1' }) }]);
  });
  test('unknown recipient with a custom reply', () => {
    const v = evaluateRecipientLookup('unknown', snapshotOf({ policy: { rules: { 'recipient-unknown': { reply: { code: 550, enhanced: '5.1.1', text: 'No such mailbox here' } } } } }));
    expect(v.action !== 'accept' && replyText(v.reply)).toBe('550 5.1.1 No such mailbox here');
  });
});
