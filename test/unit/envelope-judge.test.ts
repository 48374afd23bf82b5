/**
 * The envelope judge called directly, driven by the table that the parity test also sends through
 * a live guard and POST /api/v1/check (test/helpers/envelope-cases.ts).
 */
import { describe, expect, test } from 'vitest';
import { DEFAULT_LIMITS } from '../../src/limits/schema.js';
import { compileRules } from '../../src/policy/compile.js';
import type { RawRules } from '../../src/rules/schemas.js';
import type { SessionContext } from '../../src/policy/context.js';
import { dsnAllowedFor, judgeMail, judgeRcpt, judgeRcptPolicy, type EnvelopeContext, type RecipientDirectory } from '../../src/policy/judge.js';
import { parseCommand, type Command } from '../../src/smtp/command.js';
import {
  ENVELOPE_CASES, ENVELOPE_LISTENERS, ENVELOPE_MAX_BYTES, ENVELOPE_RECIPIENTS, ENVELOPE_RULES, ENVELOPE_SMTP, STRANGER, type EnvelopeCase,
} from '../helpers/envelope-cases.js';

const compiled = compileRules({ ...(ENVELOPE_RULES as Omit<RawRules, 'limits'>), limits: DEFAULT_LIMITS } as RawRules);
if (!compiled.ok) throw new Error(`rules do not compile: ${JSON.stringify(compiled.errors)}`);
const rules = compiled.snapshot;

/** The directory port over the table's recipient list; counts its lookups. */
function directory(): RecipientDirectory & { lookups: string[] } {
  const known = new Set(ENVELOPE_RECIPIENTS);
  const lookups: string[] = [];
  return {
    lookups,
    mode: (domain) => (domain.toLowerCase().replace(/\.$/, '') === 'validated.example' ? 'list' : 'off'),
    lookup: async (address) => {
      lookups.push(address);
      return { result: known.has(address.toLowerCase()) ? 'known' : 'unknown', source: 'list' };
    },
  };
}

function contextOf(c: Pick<EnvelopeCase, 'client' | 'listener'>, over: Partial<EnvelopeContext> = {}): EnvelopeContext {
  const l = ENVELOPE_LISTENERS.find((x) => x.name === (c.listener ?? 'mx'))!;
  const session: SessionContext = { clientIp: c.client ?? STRANGER, listener: l.name, listenerKind: l.kind, listenerRelay: l.relay === 'allow', tls: false };
  return {
    session,
    limits: { maxRecipients: ENVELOPE_SMTP.maxRecipients, maxTransactions: ENVELOPE_SMTP.maxTransactions, maxMessageBytes: ENVELOPE_MAX_BYTES },
    backendSmtputf8: true,
    // As the session and /api/v1/check decide it (smtp.dsn: trusted, the default).
    dsnAllowed: dsnAllowedFor('trusted', session, rules),
    ...over,
  };
}

function parse(line: string): Command | { refused: { code: number; enhanced?: string } } {
  const p = parseCommand(Buffer.from(line, 'utf8'));
  return p.ok ? p.value : { refused: { code: p.reply.code, ...(p.reply.enhanced ? { enhanced: p.reply.enhanced } : {}) } };
}

interface Answer { at: 'mail' | 'rcpt'; code: number; enhanced?: string; rule: string; limit?: string }

/** What the judge answers for one row, as the session would use it. */
async function judge(c: EnvelopeCase, over: Partial<EnvelopeContext> = {}, dir = directory()): Promise<Answer> {
  const ctx = contextOf(c, over);
  const mail = parse(`MAIL FROM:${c.from ?? '<sender@outside.test>'}`);
  if ('refused' in mail) return { at: 'mail', ...mail.refused, rule: 'sender-syntax' };
  if (mail.verb !== 'MAIL') throw new Error('not MAIL');
  const m = judgeMail(ctx, { heloGiven: true, inTransaction: false, transactions: c.priorTransactions ?? 0 }, mail.path, mail.params, rules);
  if (m.verdict.action !== 'accept') return { at: 'mail', code: m.verdict.reply.code, enhanced: m.verdict.reply.enhanced!, rule: m.verdict.ruleId };
  expect(m.limit).toBe('message');
  const rcpt = parse(`RCPT TO:${c.rcpt}`);
  if ('refused' in rcpt) return { at: 'rcpt', ...rcpt.refused, rule: 'recipient-syntax' };
  if (rcpt.verb !== 'RCPT') throw new Error('not RCPT');
  const r = await judgeRcpt(ctx, { mailFrom: mail.path, smtputf8: m.smtputf8, recipients: c.priorRecipients ?? 0 }, rcpt.path, rcpt.params, rules, dir);
  // The trace ends with the rule that decided.
  expect(r.verdict.trace.at(-1)?.ruleId).toBe(r.verdict.ruleId);
  if (r.verdict.action === 'accept') return { at: 'rcpt', code: 250, rule: r.verdict.ruleId, ...(r.limit ? { limit: r.limit } : {}) };
  return { at: 'rcpt', code: r.verdict.reply.code, enhanced: r.verdict.reply.enhanced!, rule: r.verdict.ruleId, ...(r.limit ? { limit: r.limit } : {}) };
}

describe('envelope judge: the shared table', () => {
  test('the table has at least 60 rows, every name once', () => {
    expect(ENVELOPE_CASES.length).toBeGreaterThanOrEqual(60);
    expect(new Set(ENVELOPE_CASES.map((c) => c.name)).size).toBe(ENVELOPE_CASES.length);
  });

  test.each(ENVELOPE_CASES)('$name → $want.code $want.rule', async (c) => {
    expect(await judge(c)).toEqual(c.want);
  });
});

describe('envelope judge: what the backend offers and who may use DSN', () => {
  const row = (over: Partial<EnvelopeCase>): EnvelopeCase => ({ name: 'x', rcpt: '<bob@example.com>', want: { at: 'rcpt', code: 250, rule: 'accepted-domains' }, ...over });

  test('without SMTPUTF8 at the backend the parameter is not offered, and non-ASCII addresses are refused', async () => {
    const off = { backendSmtputf8: false };
    expect(await judge(row({ from: '<sender@outside.test> SMTPUTF8' }), off)).toMatchObject({ at: 'mail', code: 555, rule: 'unsupported-parameter' });
    expect(await judge(row({ from: '<jörg@outside.test>' }), off)).toMatchObject({ at: 'mail', code: 553, rule: 'smtputf8-required' });
    expect(await judge(row({ rcpt: '<jörg@example.com>' }), off)).toMatchObject({ at: 'rcpt', code: 553, rule: 'smtputf8-required' });
  });

  test('without DSN for this client, RET, ENVID, NOTIFY and ORCPT are not offered', async () => {
    const off = { dsnAllowed: false };
    for (const from of ['<sender@outside.test> RET=FULL', '<sender@outside.test> ENVID=x']) {
      expect(await judge(row({ from }), off)).toMatchObject({ at: 'mail', code: 555, rule: 'unsupported-parameter' });
    }
    for (const rcpt of ['<bob@example.com> NOTIFY=NEVER', '<bob@example.com> ORCPT=rfc822;bob@example.com']) {
      expect(await judge(row({ rcpt }), off)).toMatchObject({ at: 'rcpt', code: 555, rule: 'unsupported-parameter' });
    }
    expect(await judge(row({ rcpt: '<bob@example.com> NOTIFY=NEVER' }), { dsnAllowed: true })).toMatchObject({ code: 250 });
  });
});

describe('envelope judge: sequence, the directory port, limit events', () => {
  const mail = parseCommand(Buffer.from('MAIL FROM:<a@outside.test>')) as { ok: true; value: Extract<Command, { verb: 'MAIL' }> };
  const rcptOf = (a: string) => (parseCommand(Buffer.from(`RCPT TO:${a}`)) as { ok: true; value: Extract<Command, { verb: 'RCPT' }> }).value;

  test('MAIL before HELO, nested MAIL, RCPT before MAIL: 503 with a rule id each', async () => {
    const ctx = contextOf({});
    expect(judgeMail(ctx, { heloGiven: false, inTransaction: false, transactions: 0 }, mail.value.path, [], rules).verdict).toMatchObject({ action: 'reject', ruleId: 'helo-required', reply: { code: 503 } });
    expect(judgeMail(ctx, { heloGiven: true, inTransaction: true, transactions: 1 }, mail.value.path, [], rules).verdict).toMatchObject({ action: 'reject', ruleId: 'nested-mail', reply: { code: 503 } });
    const r = await judgeRcpt(ctx, { mailFrom: undefined, smtputf8: false, recipients: 0 }, rcptOf('<bob@example.com>').path, [], rules, directory());
    expect(r.verdict).toMatchObject({ action: 'reject', ruleId: 'mail-required', reply: { code: 503, enhanced: '5.5.1' } });
  });

  test('the directory is asked only when the verdict needs it, and never for postmaster', async () => {
    const dir = directory();
    const ctx = contextOf({});
    const state = { mailFrom: mail.value.path, smtputf8: false, recipients: 0 };
    for (const a of ['<bob@example.com>', '<victim@elsewhere.test>', '<postmaster@validated.example>', '<postmaster>', '<alice@validated.example>', '<x%y@validated.example>']) {
      await judgeRcpt(ctx, state, rcptOf(a).path, [], rules, dir);
    }
    expect(dir.lookups).toEqual(['alice@validated.example']);
    const p = judgeRcptPolicy(ctx, state, rcptOf('<mallory@validated.example>').path, [], rules, dir);
    expect(p.ask).toEqual({ address: 'mallory@validated.example', domain: 'validated.example' });
    expect(p.limit).toBeUndefined();
    // No directory port: accepted domains are not validated.
    expect((await judgeRcpt(ctx, state, rcptOf('<mallory@validated.example>').path, [], rules, undefined)).verdict.ruleId).toBe('accepted-domains');
  });

  test('a directory fault is a temporary refusal that feeds no limit', async () => {
    const dir: RecipientDirectory = { mode: () => 'list', lookup: async () => ({ result: 'error', source: 'ldap' }) };
    const r = await judgeRcpt(contextOf({}), { mailFrom: mail.value.path, smtputf8: false, recipients: 0 }, rcptOf('<alice@validated.example>').path, [], rules, dir);
    expect(r.verdict).toMatchObject({ action: 'defer', ruleId: 'directory-unavailable', reply: { code: 451, enhanced: '4.4.3' } });
    expect(r.lookup).toEqual({ result: 'error', source: 'ldap' });
    expect(r.limit).toBeUndefined();
  });

  test('refused parameters are not forwarded; accepted ones are, as given', async () => {
    const withParams = parseCommand(Buffer.from('MAIL FROM:<a@outside.test> SIZE=10 BODY=8BITMIME')) as { ok: true; value: Extract<Command, { verb: 'MAIL' }> };
    const m = judgeMail(contextOf({}), { heloGiven: true, inTransaction: false, transactions: 0 }, withParams.value.path, withParams.value.params, rules);
    expect(m).toMatchObject({ declaredSize: 10, smtputf8: false, params: [{ keyword: 'SIZE', value: '10' }, { keyword: 'BODY', value: '8BITMIME' }] });
    const r = await judgeRcpt(contextOf({}), { mailFrom: mail.value.path, smtputf8: false, recipients: 0 }, rcptOf('<v@elsewhere.test> NOTIFY=NEVER').path, rcptOf('<v@elsewhere.test> NOTIFY=NEVER').params, rules, undefined);
    expect(r.params).toEqual([]);
  });
});
