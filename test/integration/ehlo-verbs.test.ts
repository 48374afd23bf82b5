/**
 * Issue 3 acceptance, EHLO filtering and verb policy: the client never sees a stripped keyword
 * even when the backend offers it; SIZE is the guard's maximum; stripped verbs sent anyway are
 * refused and never reach the backend; VRFY gets 252; unknown verbs 500 5.5.1; an HTTP request
 * line gets 421 and close; ETRN from a trusted network is forwarded.
 * All of it twice: one backend connection per client, and pooled mode (the guard answers EHLO
 * itself from the capabilities the pool learned, filtered the same way, and lends a pre-opened
 * backend session from MAIL to end-of-data), where what the backend saw is searched across all
 * its connections since the test began; after each refusal a next client's message still goes
 * through the pool.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { MODES } from '../helpers/modes.js';

const STRANGER = '127.0.0.9';
const TRUSTED = '127.0.0.2';
/** May AUTH without TLS (listener plaintextAuthNetworks). */
const OFFICE = '127.0.0.5';
const MAX = 20_000_000;
const TIMEOUTS = { command: '5m', data: '3m', session: '30m', drain: '500ms' };

/** Everything an old Exchange (and a few others) might offer. */
const BACKEND_EHLO = [
  'legacy.example.com Hello',
  'SIZE 104857600',
  'PIPELINING',
  'DSN',
  'ENHANCEDSTATUSCODES',
  'STARTTLS',
  'X-ANONYMOUSTLS',
  'AUTH NTLM LOGIN',
  'X-EXPS GSSAPI NTLM',
  '8BITMIME',
  'BINARYMIME',
  'CHUNKING',
  'XEXCH50',
  'XRDST',
  'XSHADOWREQUEST',
  'X-LINK2STATE',
  'TURN',
  'ETRN',
  'ATRN',
  'VRFY',
  'EXPN',
  'SMTPUTF8',
  'HELP',
];
// STARTTLS is the guard's own (listener.starttls); the backend's AUTH shows only after TLS (TLS issue).
const STRIPPED = ['CHUNKING', 'BINARYMIME', 'XEXCH50', 'X-LINK2STATE', 'XRDST', 'TURN', 'ETRN', 'ATRN', 'X-EXPS', 'X-ANONYMOUSTLS', 'XSHADOWREQUEST', 'VRFY', 'EXPN', 'AUTH'];

interface LegacyBackend {
  port: number;
  /** Every line received, on every connection, in arrival order (end-of-data as '.'). */
  lines: string[];
  /** Messages completed with end-of-data (their header and body lines). */
  messages: string[][];
  close(): Promise<void>;
}

/**
 * A raw backend that offers everything and answers every command 250 (so a forwarded verb would
 * show), DATA with 354 and the message's end with 250.
 */
async function startLegacyBackend(): Promise<LegacyBackend> {
  const lines: string[] = [];
  const messages: string[][] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    let body: string[] | undefined;
    s.write('220 legacy.example.com Microsoft ESMTP MAIL Service ready\r\n');
    s.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      for (let nl = buf.indexOf('\r\n'); nl >= 0; nl = buf.indexOf('\r\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        lines.push(line);
        if (body) {
          if (line === '.') {
            messages.push(body);
            body = undefined;
            s.write('250 2.6.0 queued as LEGACY\r\n');
          } else body.push(line);
          continue;
        }
        const verb = line.split(' ')[0]!.toUpperCase();
        if (verb === 'EHLO') s.write(BACKEND_EHLO.map((l, i) => `250${i === BACKEND_EHLO.length - 1 ? ' ' : '-'}${l}\r\n`).join(''));
        else if (verb === 'QUIT') s.end('221 bye\r\n');
        else if (verb === 'DATA') {
          body = [];
          s.write('354 go ahead\r\n');
        } else s.write('250 2.0.0 backend says ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    lines,
    messages,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Each mode's EHLO keyword lines (after the first line, which names the backend or the guard), per client kind. */
const ehloLines = new Map<string, string[]>();
const officeEhloLines = new Map<string, string[]>();

for (const { mode, config } of MODES) describe(`${mode} mode`, () => {
  let backend: LegacyBackend;
  let g: StartedGuard;

  beforeAll(async () => {
    backend = await startLegacyBackend();
    g = await startGuard({
      backendPort: backend.port,
      rules: { relayNetworks: [`${TRUSTED}/32`] },
      config: { ...config, smtp: { maxMessageBytes: MAX }, timeouts: TIMEOUTS },
    });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
  });

  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  /** What the backend received from now on, across all its connections. */
  const since = () => {
    const mark = backend.lines.length;
    return () => backend.lines.slice(mark);
  };

  async function ehlo(from = STRANGER, port = g.port): Promise<{ d: Dialog; keywords: string[]; lines: string[] }> {
    const d = await Dialog.connect(port, { localAddress: from });
    expect((await d.reply()).code).toBe(220);
    const r = await d.cmd('EHLO client.test');
    expect(r.code).toBe(250);
    return { d, keywords: r.lines.slice(1).map((l) => l.split(/[\s=]/)[0]!.toUpperCase()), lines: r.lines };
  }

  /** A next client's message is delivered (pooled mode: the pool is still healthy). */
  async function messageGoesThrough(tag: string): Promise<void> {
    const before = backend.messages.length;
    const { d } = await ehlo();
    expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    const end = await d.cmd(`Subject: ${tag}\r\n\r\nbody ${tag}\r\n.`);
    expect(end.code, end.text).toBe(250);
    expect(end.text).toContain('queued as LEGACY');
    expect((await d.cmd('QUIT')).code).toBe(221);
    expect(backend.messages.slice(before)).toEqual([[`Subject: ${tag}`, '', `body ${tag}`]]);
  }

  describe('EHLO', () => {
    test('stripped keywords never reach the client; the known-good set does', async () => {
      const { d, keywords, lines: ls } = await ehlo();
      for (const k of STRIPPED) expect(keywords, k).not.toContain(k);
      for (const k of ['PIPELINING', 'SIZE', '8BITMIME', 'SMTPUTF8', 'ENHANCEDSTATUSCODES', 'HELP']) expect(keywords).toContain(k);
      // DSN is for trusted clients only (smtp.dsn: trusted, issue 16 item 7): a stranger never sees it.
      expect(keywords).not.toContain('DSN');
      ehloLines.set(mode, ls.slice(1));
      await d.cmd('QUIT');
      const trusted = await ehlo(TRUSTED);
      expect(trusted.keywords).toContain('DSN');
      await trusted.d.cmd('QUIT');
    });

    test('SIZE is rewritten to the guard\'s maximum', async () => {
      const { d, lines: ls } = await ehlo();
      expect(ls.filter((l) => l.startsWith('SIZE'))).toEqual([`SIZE ${MAX}`]);
      await d.cmd('QUIT');
    });

    test('a second EHLO in the same session is filtered the same way', async () => {
      const { d, lines: first } = await ehlo();
      const again = await d.cmd('EHLO client.test');
      expect(again.code).toBe(250);
      expect(again.lines.slice(1)).toEqual(first.slice(1));
      await d.cmd('QUIT');
    });
  });

  describe('EHLO and SIZE in a transaction', () => {
    test('SIZE= over the advertised maximum is refused at MAIL (552 5.3.4) and never reaches the backend', async () => {
      const seen = since();
      const { d } = await ehlo();
      const over = await d.cmd(`MAIL FROM:<big@elsewhere.test> SIZE=${MAX + 1}`);
      expect(over.code, over.text).toBe(552);
      expect(over.text).toContain('5.3.4');
      const at = await d.cmd(`MAIL FROM:<fits@elsewhere.test> SIZE=${MAX}`);
      expect(at.code, at.text).toBe(250);
      await d.cmd('QUIT');
      expect(seen().filter((l) => /^MAIL/i.test(l))).toEqual([`MAIL FROM:<fits@elsewhere.test> SIZE=${MAX}`]);
      await messageGoesThrough('after SIZE');
    });

    test('EHLO in mid-transaction ends it (RCPT then needs MAIL) and is answered as the first one', async () => {
      const { d, lines: first } = await ehlo();
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<dropped@example.com>')).code).toBe(250);
      const again = await d.cmd('EHLO client.test');
      expect(again.code).toBe(250);
      expect(again.lines.slice(1)).toEqual(first.slice(1));
      expect((await d.cmd('RCPT TO:<orphan@example.com>')).code).toBe(503);
      const before = backend.messages.length;
      expect((await d.cmd('MAIL FROM:<s2@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<kept@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd('Subject: second\r\n\r\nsecond\r\n.')).code).toBe(250);
      await d.cmd('QUIT');
      expect(backend.messages.slice(before)).toEqual([['Subject: second', '', 'second']]);
      expect(backend.lines.some((l) => l.includes('orphan@'))).toBe(false);
      await messageGoesThrough('after EHLO reset');
    });
  });

  describe('verbs', () => {
    const REFUSED = ['BDAT 10 LAST', 'XEXCH50 100 2', 'X-LINK2STATE LAST CHUNK=1', 'TURN', 'ETRN example.com', 'ATRN example.com', 'EXPN staff', 'XRDST', 'X-EXPS GSSAPI'];

    test.each(REFUSED)('%s is refused with 5xx and never reaches the backend', async (cmd) => {
      const seen = since();
      const { d } = await ehlo();
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      const r = await d.cmd(cmd);
      expect(r.code).toBeGreaterThanOrEqual(500);
      expect(r.code).toBeLessThan(600);
      // The transaction goes on: the next recipient is the backend's to answer.
      const rcpt = await d.cmd('RCPT TO:<after-refusal@example.com>');
      expect(rcpt.code).toBe(250);
      expect(rcpt.text).toContain('backend says ok');
      await d.cmd('QUIT');
      const verb = cmd.split(' ')[0]!;
      expect(seen().some((l) => l.toUpperCase().startsWith(verb))).toBe(false);
      expect(seen()).toContain('RCPT TO:<after-refusal@example.com>');
      await messageGoesThrough(`after ${verb}`);
      expect(backend.lines.some((l) => l.toUpperCase().startsWith(verb))).toBe(false);
    });

    test('all of them are refused outside a transaction too, and never reach the backend', async () => {
      const { d } = await ehlo();
      for (const cmd of REFUSED) {
        const r = await d.cmd(cmd);
        expect(r.code, cmd).toBeGreaterThanOrEqual(500);
        expect(r.code, cmd).toBeLessThan(600);
      }
      expect((await d.cmd('NOOP')).code).toBe(250);
      await d.cmd('QUIT');
      for (const cmd of REFUSED) expect(backend.lines.some((l) => l.toUpperCase().startsWith(cmd.split(' ')[0]!)), cmd).toBe(false);
      await messageGoesThrough('after refusals outside a transaction');
    });

    test('refused verbs pipelined inside a transaction are answered in order and the message still goes', async () => {
      const seen = since();
      const { d } = await ehlo();
      const before = backend.messages.length;
      d.send('MAIL FROM:<s@elsewhere.test>\r\nBDAT 10 LAST\r\nRCPT TO:<piped@example.com>\r\nXEXCH50 100 2\r\nEXPN staff\r\nDATA\r\n');
      const r = await d.replyN(6);
      expect(r.map((x) => x.code)).toEqual([250, 502, 250, 502, 502, 354]);
      expect(r[2]!.text).toContain('backend says ok');
      d.send('Subject: piped\r\n\r\npiped\r\n.\r\nQUIT\r\n');
      expect((await d.reply()).code).toBe(250);
      expect((await d.reply()).code).toBe(221);
      expect(backend.messages.slice(before)).toEqual([['Subject: piped', '', 'piped']]);
      expect(seen().filter((l) => /^(BDAT|XEXCH50|EXPN)/i.test(l))).toEqual([]);
      expect(seen().filter((l) => /^(MAIL|RCPT|DATA)/i.test(l))).toEqual(['MAIL FROM:<s@elsewhere.test>', 'RCPT TO:<piped@example.com>', 'DATA']);
    });

    test('VRFY gets 252 from the guard and is not forwarded', async () => {
      const { d } = await ehlo();
      const r = await d.cmd('VRFY admin');
      expect(r.code).toBe(252);
      await d.cmd('QUIT');
      expect(backend.lines.some((l) => l.toUpperCase().startsWith('VRFY'))).toBe(false);
    });

    test('an unknown verb gets 500 5.5.1 and is never forwarded', async () => {
      const { d } = await ehlo();
      const r = await d.cmd('FROBNICATE now');
      expect(r.code).toBe(500);
      expect(r.text).toContain('5.5.1');
      expect((await d.cmd('NOOP')).code).toBe(250);
      await d.cmd('QUIT');
      expect(backend.lines.some((l) => l.toUpperCase().startsWith('FROBNICATE'))).toBe(false);
    });

    test('an HTTP request line gets 421 and the connection closes', async () => {
      const d = await Dialog.connect(g.port, { localAddress: STRANGER });
      expect((await d.reply()).code).toBe(220);
      d.send('GET / HTTP/1.1\r\nHost: example.com\r\n\r\n');
      const r = await d.reply();
      expect(r.code).toBe(421);
      await d.waitClosed();
      expect(backend.lines.some((l) => l.startsWith('GET') || l.startsWith('Host:'))).toBe(false);
      await messageGoesThrough('after HTTP');
    });

    test('ETRN from a trusted network is forwarded (trustedVerbs)', async () => {
      const seen = since();
      const { d } = await ehlo(TRUSTED);
      const r = await d.cmd('ETRN example.com');
      expect(r.code).toBe(250);
      expect(r.text).toContain('backend says ok');
      await d.cmd('QUIT');
      expect(seen()).toContain('ETRN example.com');
      await messageGoesThrough('after ETRN');
    });

    test('ETRN from a trusted network inside a transaction is forwarded and the message still goes', async () => {
      const seen = since();
      const { d } = await ehlo(TRUSTED);
      const before = backend.messages.length;
      expect((await d.cmd('MAIL FROM:<app@example.com>')).code).toBe(250);
      const etrn = await d.cmd('ETRN example.net');
      expect(etrn.code).toBe(250);
      expect(etrn.text).toContain('backend says ok');
      expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd('Subject: etrn inside\r\n\r\nhi\r\n.')).code).toBe(250);
      expect((await d.cmd('QUIT')).code).toBe(221);
      expect(backend.messages.slice(before)).toEqual([['Subject: etrn inside', '', 'hi']]);
      expect(seen().filter((l) => /^(MAIL|ETRN|RCPT|DATA)/i.test(l))).toEqual(['MAIL FROM:<app@example.com>', 'ETRN example.net', 'RCPT TO:<bob@example.com>', 'DATA']);
      await messageGoesThrough('after ETRN inside a transaction');
    });

    test('after a forwarded ETRN the same client still sends a message', async () => {
      const { d } = await ehlo(TRUSTED);
      expect((await d.cmd('ETRN example.org')).code).toBe(250);
      const before = backend.messages.length;
      expect((await d.cmd('MAIL FROM:<app@example.com>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd('Subject: etrn then mail\r\n\r\nhi\r\n.')).code).toBe(250);
      expect((await d.cmd('QUIT')).code).toBe(221);
      expect(backend.messages.slice(before)).toEqual([['Subject: etrn then mail', '', 'hi']]);
      await messageGoesThrough('after ETRN and a message');
    });

    test('TURN from a trusted network is still refused (not in trustedVerbs)', async () => {
      const { d } = await ehlo(TRUSTED);
      expect((await d.cmd('TURN')).code).toBeGreaterThanOrEqual(500);
      await d.cmd('QUIT');
      expect(backend.lines.some((l) => l.toUpperCase().startsWith('TURN'))).toBe(false);
    });
  });

  describe('configurable', () => {
    test('a client that may AUTH in plaintext sees the backend\'s AUTH mechanisms, and no other stripped keyword', async () => {
      const g2 = await startGuard({
        backendPort: backend.port,
        config: {
          ...config,
          smtp: { maxMessageBytes: MAX },
          timeouts: TIMEOUTS,
          listeners: [{ name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', starttls: false, plaintextAuthNetworks: [`${OFFICE}/32`] }],
        },
      });
      try {
        expect(g2.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
        const { d, keywords, lines: ls } = await ehlo(OFFICE, g2.port);
        expect(ls.filter((l) => /^AUTH\b/i.test(l))).toEqual(['AUTH NTLM LOGIN']);
        for (const k of STRIPPED.filter((x) => x !== 'AUTH')) expect(keywords, k).not.toContain(k);
        expect(ls.filter((l) => l.startsWith('SIZE'))).toEqual([`SIZE ${MAX}`]);
        officeEhloLines.set(mode, ls.slice(1));
        await d.cmd('QUIT');
        // A stranger on the same listener still gets no AUTH.
        const other = await ehlo(STRANGER, g2.port);
        expect(other.keywords).not.toContain('AUTH');
        await other.d.cmd('QUIT');
      } finally {
        await g2.stop();
      }
    });

    test('ehloAllow adds a keyword (ETRN) and vrfy: refuse answers 502', async () => {
      const g2 = await startGuard({
        backendPort: backend.port,
        config: { ...config, smtp: { ehloAllow: ['PIPELINING', 'SIZE', 'ETRN'], vrfy: 'refuse' }, timeouts: TIMEOUTS },
      });
      try {
        expect(g2.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
        const { d, keywords } = await ehlo(STRANGER, g2.port);
        expect(keywords).toContain('ETRN');
        expect(keywords).not.toContain('8BITMIME');
        expect(keywords).not.toContain('CHUNKING');
        const v = await d.cmd('VRFY admin');
        expect(v.code).toBe(502);
        await d.cmd('QUIT');
        expect(backend.lines.some((l) => l.toUpperCase().startsWith('VRFY'))).toBe(false);
      } finally {
        await g2.stop();
      }
    });
  });
});

describe('both modes', () => {
  test('advertise the same EHLO keywords, line for line', () => {
    expect([...ehloLines.keys()]).toEqual(MODES.map((m) => m.mode));
    expect(ehloLines.get('pooled')).toEqual(ehloLines.get('per-client'));
    expect([...officeEhloLines.keys()]).toEqual(MODES.map((m) => m.mode));
    expect(officeEhloLines.get('pooled')).toEqual(officeEhloLines.get('per-client'));
  });
});
