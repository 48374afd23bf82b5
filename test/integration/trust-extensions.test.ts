/**
 * What the guard believes from the backend's EHLO and grants to clients (issue 16 items 6 and 7),
 * through a live guard in both backend modes:
 *  - SMTPUTF8 is advertised and forwarded only when the backend offers it; otherwise a non-ASCII
 *    address gets 553 5.6.7 and nothing of it reaches the backend (smtp-server with SMTPUTF8
 *    hidden, and Postfix's smtp-sink, which never offers it);
 *  - Unicode look-alikes of % ! @ in a local part are routing tricks (501 5.1.3), never forwarded;
 *  - DSN is advertised and its parameters (RET, ENVID, NOTIFY, ORCPT) forwarded only to trusted
 *    clients by default (smtp.dsn: trusted | all | off): a stranger never sees the keyword and its
 *    parameters are refused (555 5.5.4); smtp-sink's transaction files show what arrived.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { Dialog } from '../helpers/dialog.js';
import { MODES, since, withMode } from '../helpers/modes.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startSmtpSink, type SmtpSink } from '../helpers/smtp-sink.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';

const STRANGER = '127.0.0.9';
const TRUSTED = '127.0.0.2';
const RULES = { acceptedDomains: ['example.com'], relayNetworks: ['127.0.0.2/32'] };

async function open(port: number, client: string): Promise<{ d: Dialog; ehlo: string[] }> {
  const d = await Dialog.connect(port, { localAddress: client });
  expect((await d.reply()).code).toBe(220);
  const e = await d.cmd('EHLO client.test');
  expect(e.code).toBe(250);
  return { d, ehlo: e.lines.slice(1).map((l) => l.split(' ')[0]!.toUpperCase()) };
}

/** One message: MAIL and RCPT lines as given, then DATA. Returns the replies to MAIL and RCPT. */
async function send(d: Dialog, mail: string, rcpt: string): Promise<{ mail: number; rcpt: number; data?: number }> {
  const m = await d.cmd(`MAIL FROM:${mail}`);
  if (m.code >= 300) return { mail: m.code, rcpt: 0 };
  const r = await d.cmd(`RCPT TO:${rcpt}`);
  if (r.code >= 300) {
    await d.cmd('RSET');
    return { mail: m.code, rcpt: r.code };
  }
  expect((await d.cmd('DATA')).code).toBe(354);
  const end = await d.cmd('Subject: t\r\n\r\nbody\r\n.');
  return { mail: m.code, rcpt: r.code, data: end.code };
}

for (const { mode, config: modeConfig } of MODES) {
  describe(`SMTPUTF8 follows the backend (${mode} mode)`, () => {
    const guards: StartedGuard[] = [];
    const backends: RecordingBackend[] = [];
    afterEach(async () => {
      for (const g of guards.splice(0)) await g.stop();
      for (const b of backends.splice(0)) await b.close();
    });

    async function setup(hideSMTPUTF8: boolean, admin = false) {
      const b = await startRecordingBackend({ server: { hideSMTPUTF8 } });
      backends.push(b);
      const g = await startGuard({ backendPort: b.port, rules: RULES, config: withMode(modeConfig, admin ? { admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false } } : {}) });
      guards.push(g);
      return { b, g };
    }

    test('backend without SMTPUTF8: not advertised, the parameter is refused, non-ASCII addresses get 553 5.6.7 and nothing reaches the backend', async () => {
      const { b, g } = await setup(true);
      const seen = since(b);
      const { d, ehlo } = await open(g.port, STRANGER);
      expect(ehlo).not.toContain('SMTPUTF8');
      expect(ehlo).toContain('8BITMIME');
      expect((await d.cmd('MAIL FROM:<sender@outside.test> SMTPUTF8')).code).toBe(555);
      const m = await d.cmd('MAIL FROM:<jörg@outside.test>');
      expect(m.code).toBe(553);
      expect(m.text).toContain('5.6.7');
      expect((await d.cmd('MAIL FROM:<sender@outside.test>')).code).toBe(250);
      const r = await d.cmd('RCPT TO:<jörg@example.com>');
      expect(r.code).toBe(553);
      expect(r.text).toContain('5.6.7');
      expect((await d.cmd('RCPT TO:<ok@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd('Subject: t\r\n\r\nbody\r\n.')).code).toBe(250);
      await d.cmd('QUIT');
      d.close();
      expect(b.messages.at(-1)?.rcptTo).toEqual(['ok@example.com']);
      const lines = seen();
      expect(lines.some((l) => /[^\x00-\x7f]/.test(l)), lines.join('\n')).toBe(false);
      expect(lines.some((l) => /SMTPUTF8/i.test(l) && /^MAIL/i.test(l))).toBe(false);
      // The trick itself is in the log, refused with its rule id.
      expect(g.logs.some((l) => l['msg'] === 'rcpt refused' && l['ruleId'] === 'smtputf8-required')).toBe(true);
    });

    test('POST /api/v1/check answers as the live session does against that backend: SMTPUTF8 refused once a session has seen its EHLO', async () => {
      const { g } = await setup(true, true);
      const a = g.guard.adminAddress();
      if (!a) throw new Error('admin listener not bound');
      const check = async () => {
        const res = await fetch(`http://${a.host}:${a.port}/api/v1/check`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ clientIp: STRANGER, listener: 'mx', mailFrom: '<sender@outside.test> SMTPUTF8', rcptTo: '<jörg@example.com>' }),
        });
        expect(res.status).toBe(200);
        return (await res.json()) as { reply: string; ruleId: string };
      };
      const { d } = await open(g.port, STRANGER);
      const live = await d.cmd('MAIL FROM:<sender@outside.test> SMTPUTF8');
      d.close();
      expect(live.code).toBe(555);
      const dry = await check();
      expect(dry.reply.slice(0, 3)).toBe('555');
      expect(g.logs.some((l) => l['msg'] === 'sender refused' && l['ruleId'] === dry.ruleId)).toBe(true);
    });

    test('backend with SMTPUTF8: advertised, and a non-ASCII recipient is delivered', async () => {
      const { b, g } = await setup(false);
      const { d, ehlo } = await open(g.port, STRANGER);
      expect(ehlo).toContain('SMTPUTF8');
      expect(await send(d, '<sender@outside.test> SMTPUTF8', '<jörg@example.com>')).toEqual({ mail: 250, rcpt: 250, data: 250 });
      d.close();
      expect(b.messages.at(-1)?.rcptTo).toEqual(['jörg@example.com']);
    });

    test('Unicode look-alikes of % ! @ in the local part are routing tricks: 501 5.1.3, never forwarded', async () => {
      const { b, g } = await setup(false);
      const seen = since(b);
      const { d } = await open(g.port, STRANGER);
      expect((await d.cmd('MAIL FROM:<sender@outside.test> SMTPUTF8')).code).toBe(250);
      const tricks = [
        'victim\uFF20elsewhere.test', 'victim\uFE6Belsewhere.test', // fullwidth and small @
        'victim\uFF05elsewhere.test', 'victim\uFE6Aelsewhere.test', 'victim\u066Aelsewhere.test', // % look-alikes
        'elsewhere.test\uFF01victim', 'elsewhere.test\uFE57victim', 'elsewhere.test\u01C3victim', // ! look-alikes
      ];
      for (const local of tricks) {
        const r = await d.cmd(`RCPT TO:<${local}@example.com>`);
        expect(r.code, local).toBe(501);
        expect(r.text).toContain('5.1.3');
      }
      await d.cmd('QUIT');
      d.close();
      const rcpts = seen().filter((l) => /^RCPT/i.test(l));
      expect(rcpts).toEqual([]);
      expect(g.logs.filter((l) => l['msg'] === 'rcpt refused' && l['ruleId'] === 'routing-tricks')).toHaveLength(tricks.length);
    });
  });

  describe(`DSN for trusted clients only (${mode} mode, Postfix smtp-sink as the backend)`, () => {
    let sink: SmtpSink;
    const guards: StartedGuard[] = [];
    beforeAll(async () => {
      sink = await startSmtpSink();
    });
    afterAll(async () => {
      await sink?.stop();
    });
    afterEach(async () => {
      for (const g of guards.splice(0)) await g.stop();
    });

    async function guard(dsn?: 'trusted' | 'all' | 'off'): Promise<StartedGuard> {
      const g = await startGuard({ backendPort: sink.port, rules: RULES, config: withMode(modeConfig, dsn ? { smtp: { dsn, errorDelay: '0s' } } : {}) });
      guards.push(g);
      return g;
    }

    /** The smtp-sink transaction files written by one send, found by a unique recipient. */
    function dumpFor(rcpt: string): string {
      const found = sink.dumps().filter((t) => t.includes(`<${rcpt}>`));
      expect(found).toHaveLength(1);
      return found[0]!;
    }

    test('default: a stranger never sees DSN and its RET/ENVID/NOTIFY/ORCPT never reach the backend; a trusted client\'s do', async () => {
      const g = await guard();
      // smtp-sink offers DSN and no SMTPUTF8: the guard passes on DSN to the trusted client only.
      const s = await open(g.port, STRANGER);
      expect(s.ehlo).not.toContain('DSN');
      expect(s.ehlo).not.toContain('SMTPUTF8');
      const mark = sink.sent.length;
      expect((await s.d.cmd('MAIL FROM:<victim@elsewhere.test> RET=FULL ENVID=forged')).code).toBe(555);
      expect((await s.d.cmd('MAIL FROM:<victim@elsewhere.test> ENVID=forged')).code).toBe(555);
      expect((await s.d.cmd('MAIL FROM:<victim@elsewhere.test>')).code).toBe(250);
      expect((await s.d.cmd('RCPT TO:<stranger-dsn@example.com> NOTIFY=SUCCESS,FAILURE')).code).toBe(555);
      expect((await s.d.cmd('RCPT TO:<stranger-dsn@example.com> ORCPT=rfc822;stranger-dsn@example.com')).code).toBe(555);
      expect((await s.d.cmd('RCPT TO:<stranger-dsn@example.com>')).code).toBe(250);
      expect((await s.d.cmd('DATA')).code).toBe(354);
      expect((await s.d.cmd('Subject: t\r\n\r\nbody\r\n.')).code).toBe(250);
      await s.d.cmd('QUIT');
      s.d.close();
      const strangerLines = sink.sent.slice(mark);
      expect(strangerLines.filter((l) => /\b(RET|ENVID|NOTIFY|ORCPT)=/i.test(l)), strangerLines.join('\n')).toEqual([]);
      const dump = dumpFor('stranger-dsn@example.com');
      expect(dump).toMatch(/^X-Mail-Args: <victim@elsewhere\.test>$/m);
      expect(dump).toMatch(/^X-Rcpt-Args: <stranger-dsn@example\.com>$/m);

      const t = await open(g.port, TRUSTED);
      expect(t.ehlo).toContain('DSN');
      expect(await send(t.d, '<sender@example.com> RET=HDRS ENVID=abc123', '<trusted-dsn@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;trusted-dsn@example.com')).toEqual({ mail: 250, rcpt: 250, data: 250 });
      t.d.close();
      const tdump = dumpFor('trusted-dsn@example.com');
      expect(tdump).toMatch(/^X-Mail-Args: <sender@example\.com> RET=HDRS ENVID=abc123$/m);
      expect(tdump).toMatch(/^X-Rcpt-Args: <trusted-dsn@example\.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;trusted-dsn@example\.com$/m);
    });

    test('smtp.dsn: all — strangers get DSN too (the old behaviour); smtp.dsn: off — nobody does', async () => {
      const all = await guard('all');
      const s = await open(all.port, STRANGER);
      expect(s.ehlo).toContain('DSN');
      expect(await send(s.d, '<a@elsewhere.test> RET=HDRS', '<all-dsn@example.com> NOTIFY=NEVER')).toEqual({ mail: 250, rcpt: 250, data: 250 });
      s.d.close();
      expect(dumpFor('all-dsn@example.com')).toMatch(/^X-Rcpt-Args: <all-dsn@example\.com> NOTIFY=NEVER$/m);

      const off = await guard('off');
      const t = await open(off.port, TRUSTED);
      expect(t.ehlo).not.toContain('DSN');
      expect((await t.d.cmd('MAIL FROM:<a@example.com> RET=HDRS')).code).toBe(555);
      expect((await t.d.cmd('MAIL FROM:<a@example.com>')).code).toBe(250);
      expect((await t.d.cmd('RCPT TO:<off-dsn@example.com> NOTIFY=NEVER')).code).toBe(555);
      t.d.close();
    });

    test('smtp-sink offers no SMTPUTF8: a non-ASCII recipient gets 553 5.6.7 and never reaches it', async () => {
      const g = await guard();
      const mark = sink.sent.length;
      const { d, ehlo } = await open(g.port, TRUSTED);
      expect(ehlo).not.toContain('SMTPUTF8');
      expect((await d.cmd('MAIL FROM:<a@example.com>')).code).toBe(250);
      const r = await d.cmd('RCPT TO:<jörg@example.com>');
      expect(r.code).toBe(553);
      expect(r.text).toContain('5.6.7');
      await d.cmd('QUIT');
      d.close();
      expect(sink.sent.slice(mark).some((l) => /[^\x00-\x7f]/.test(l))).toBe(false);
    });
  });
}
