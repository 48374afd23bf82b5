/**
 * One table, two callers of the envelope judge: every row of test/helpers/envelope-cases.ts goes
 * through a live guard (real sockets, from the row's client address, on the row's listener, in
 * both backend modes) and through POST /api/v1/check on the same guard; both must give the same
 * reply code, the same enhanced code (when the guard answers) and the same rule id — and the
 * table's. Live, the rule id is read from the session's own log line for that command
 * ('sender refused', 'rcpt refused', or the debug line 'rcpt accepted').
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Dialog, type ParsedReply } from '../helpers/dialog.js';
import { MODES, withMode } from '../helpers/modes.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import {
  ENVELOPE_CASES, ENVELOPE_LISTENERS, ENVELOPE_RECIPIENTS, ENVELOPE_RULES, ENVELOPE_SMTP, STRANGER, type EnvelopeCase,
} from '../helpers/envelope-cases.js';

interface Answer { at: 'mail' | 'rcpt'; code: number; enhanced: string | undefined; rule: string | undefined; limit?: string | undefined }

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3}$/;

function enhancedOf(r: ParsedReply): string | undefined {
  const word = (r.lines[0] ?? '').split(' ')[0] ?? '';
  return ENHANCED.test(word) ? word : undefined;
}

for (const { mode, config: modeConfig } of MODES) describe(`envelope parity: live guard and /api/v1/check (${mode} mode)`, () => {
  let backend: RecordingBackend;
  let g: StartedGuard;
  let admin: string;

  beforeAll(async () => {
    // DSN advertised (smtp-server hides it by default): the guard forwards DSN only to a backend that offers it.
    backend = await startRecordingBackend({ server: { hideDSN: false } });
    g = await startGuard({
      backendPort: backend.port,
      rules: { ...ENVELOPE_RULES, recipients: `${ENVELOPE_RECIPIENTS.join('\n')}\n` },
      config: withMode(modeConfig, {
        listeners: ENVELOPE_LISTENERS.map((l) => ({ name: l.name, address: '127.0.0.1', port: 0, kind: l.kind, ...(l.relay ? { relay: l.relay } : {}) })),
        admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false },
        smtp: ENVELOPE_SMTP,
      }),
    });
    const a = g.guard.adminAddress();
    if (!a) throw new Error('admin listener not bound');
    admin = `http://${a.host}:${a.port}`;
  });

  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  /** The rule id in the first log line of this command (written before its reply). */
  function ruleLogged(from: number, msgs: string[]): string | undefined {
    const line = g.logs.slice(from).find((l) => msgs.includes(String(l['msg'])));
    return line?.['ruleId'] as string | undefined;
  }

  async function live(c: EnvelopeCase): Promise<Answer> {
    const d = await Dialog.connect(g.guard.address(c.listener ?? 'mx').port, { localAddress: c.client ?? STRANGER });
    try {
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('EHLO client.test')).code).toBe(250);
      for (let i = 0; i < (c.priorTransactions ?? 0); i++) {
        expect((await d.cmd('MAIL FROM:<earlier@outside.test>')).code).toBe(250);
        expect((await d.cmd('RSET')).code).toBe(250);
      }
      let mark = g.logs.length;
      const mail = await d.cmd(`MAIL FROM:${c.from ?? '<sender@outside.test>'}`);
      if (mail.code >= 300) return { at: 'mail', code: mail.code, enhanced: enhancedOf(mail), rule: ruleLogged(mark, ['sender refused']) };
      for (let i = 0; i < (c.priorRecipients ?? 0); i++) expect((await d.cmd(`RCPT TO:<earlier${i}@example.com>`)).code).toBe(250);
      mark = g.logs.length;
      const rcpt = await d.cmd(`RCPT TO:${c.rcpt}`);
      const rule = ruleLogged(mark, rcpt.code < 300 ? ['rcpt accepted'] : ['rcpt refused']);
      return { at: 'rcpt', code: rcpt.code, enhanced: rcpt.code < 300 ? undefined : enhancedOf(rcpt), rule };
    } finally {
      d.socket.destroy();
    }
  }

  async function check(c: EnvelopeCase): Promise<Answer> {
    const res = await fetch(`${admin}/api/v1/check`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        clientIp: c.client ?? STRANGER,
        listener: c.listener ?? 'mx',
        mailFrom: c.from ?? '<sender@outside.test>',
        rcptTo: c.rcpt,
        ...(c.priorRecipients !== undefined ? { priorRecipients: c.priorRecipients } : {}),
        ...(c.priorTransactions !== undefined ? { priorTransactions: c.priorTransactions } : {}),
      }),
    });
    const text = await res.text();
    expect(res.status, text).toBe(200);
    const body = JSON.parse(text) as { reply: string; ruleId: string; rcpt?: unknown; limitEvent?: string };
    const code = Number(body.reply.slice(0, 3));
    const word = body.reply.split(' ')[1] ?? '';
    return { at: body.rcpt === undefined ? 'mail' : 'rcpt', code, enhanced: code < 300 || !ENHANCED.test(word) ? undefined : word, rule: body.ruleId, limit: body.limitEvent };
  }

  test.each(ENVELOPE_CASES)('$name', async (c) => {
    const [l, k] = [await live(c), await check(c)];
    const want = { at: c.want.at, code: c.want.code, enhanced: c.want.enhanced, rule: c.want.rule };
    expect({ live: l, check: { ...k, limit: undefined } }).toEqual({ live: want, check: { ...want, limit: undefined } });
    // The limit event the verdict feeds (/check names it; the unit test checks the judge's).
    if (c.want.at === 'rcpt') expect(k.limit).toBe(c.want.limit);
  });
});
