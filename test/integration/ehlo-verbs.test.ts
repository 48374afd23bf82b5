/**
 * Issue 3 acceptance, EHLO filtering and verb policy: the client never sees a stripped keyword
 * even when the backend offers it; SIZE is the guard's maximum; stripped verbs sent anyway are
 * refused and never reach the backend; VRFY gets 252; unknown verbs 500 5.5.1; an HTTP request
 * line gets 421 and close; ETRN from a trusted network is forwarded.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';

const STRANGER = '127.0.0.9';
const TRUSTED = '127.0.0.2';
const MAX = 20_000_000;

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

let lines: string[] = [];
let server: net.Server;
let port: number;
let g: StartedGuard;

beforeAll(async () => {
  // A raw backend that offers everything and answers every command 250 (so a forwarded verb would show).
  server = net.createServer((s) => {
    s.on('error', () => undefined);
    let buf = '';
    s.write('220 legacy.example.com Microsoft ESMTP MAIL Service ready\r\n');
    s.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      for (let nl = buf.indexOf('\r\n'); nl >= 0; nl = buf.indexOf('\r\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        lines.push(line);
        const verb = line.split(' ')[0]!.toUpperCase();
        if (verb === 'EHLO') s.write(BACKEND_EHLO.map((l, i) => `250${i === BACKEND_EHLO.length - 1 ? ' ' : '-'}${l}\r\n`).join(''));
        else if (verb === 'QUIT') s.end('221 bye\r\n');
        else s.write('250 2.0.0 backend says ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  port = (server.address() as net.AddressInfo).port;
  g = await startGuard({
    backendPort: port,
    rules: { relayNetworks: [`${TRUSTED}/32`] },
    config: { smtp: { maxMessageBytes: MAX }, timeouts: { command: '5m', data: '3m', session: '30m', drain: '500ms' } },
  });
});

afterAll(async () => {
  await g?.stop();
  await new Promise<void>((r) => server.close(() => r()));
});

async function ehlo(from = STRANGER): Promise<{ d: Dialog; keywords: string[]; lines: string[] }> {
  const d = await Dialog.connect(g.port, { localAddress: from });
  expect((await d.reply()).code).toBe(220);
  const r = await d.cmd('EHLO client.test');
  expect(r.code).toBe(250);
  return { d, keywords: r.lines.slice(1).map((l) => l.split(/[\s=]/)[0]!.toUpperCase()), lines: r.lines };
}

describe('EHLO', () => {
  test('stripped keywords never reach the client; the known-good set does', async () => {
    const { d, keywords } = await ehlo();
    for (const k of STRIPPED) expect(keywords, k).not.toContain(k);
    for (const k of ['PIPELINING', 'SIZE', '8BITMIME', 'SMTPUTF8', 'DSN', 'ENHANCEDSTATUSCODES', 'HELP']) expect(keywords).toContain(k);
    await d.cmd('QUIT');
  });

  test('SIZE is rewritten to the guard\'s maximum', async () => {
    const { d, lines: ls } = await ehlo();
    expect(ls.filter((l) => l.startsWith('SIZE'))).toEqual([`SIZE ${MAX}`]);
    await d.cmd('QUIT');
  });
});

describe('verbs', () => {
  const REFUSED = ['BDAT 10 LAST', 'XEXCH50 100 2', 'X-LINK2STATE LAST CHUNK=1', 'TURN', 'ETRN example.com', 'ATRN example.com', 'EXPN staff', 'XRDST', 'X-EXPS GSSAPI'];

  test.each(REFUSED)('%s is refused with 5xx and never reaches the backend', async (cmd) => {
    const { d } = await ehlo();
    expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
    const r = await d.cmd(cmd);
    expect(r.code).toBeGreaterThanOrEqual(500);
    expect(r.code).toBeLessThan(600);
    await d.cmd('QUIT');
    const verb = cmd.split(' ')[0]!;
    expect(lines.some((l) => l.toUpperCase().startsWith(verb))).toBe(false);
  });

  test('VRFY gets 252 from the guard and is not forwarded', async () => {
    const { d } = await ehlo();
    const r = await d.cmd('VRFY admin');
    expect(r.code).toBe(252);
    await d.cmd('QUIT');
    expect(lines.some((l) => l.toUpperCase().startsWith('VRFY'))).toBe(false);
  });

  test('an unknown verb gets 500 5.5.1 and is never forwarded', async () => {
    const { d } = await ehlo();
    const r = await d.cmd('FROBNICATE now');
    expect(r.code).toBe(500);
    expect(r.text).toContain('5.5.1');
    expect((await d.cmd('NOOP')).code).toBe(250);
    await d.cmd('QUIT');
    expect(lines.some((l) => l.toUpperCase().startsWith('FROBNICATE'))).toBe(false);
  });

  test('an HTTP request line gets 421 and the connection closes', async () => {
    const d = await Dialog.connect(g.port, { localAddress: STRANGER });
    expect((await d.reply()).code).toBe(220);
    d.send('GET / HTTP/1.1\r\nHost: example.com\r\n\r\n');
    const r = await d.reply();
    expect(r.code).toBe(421);
    await d.waitClosed();
    expect(lines.some((l) => l.startsWith('GET') || l.startsWith('Host:'))).toBe(false);
  });

  test('ETRN from a trusted network is forwarded (trustedVerbs)', async () => {
    const { d } = await ehlo(TRUSTED);
    const r = await d.cmd('ETRN example.com');
    expect(r.code).toBe(250);
    expect(r.text).toContain('backend says ok');
    await d.cmd('QUIT');
    expect(lines).toContain('ETRN example.com');
  });

  test('TURN from a trusted network is still refused (not in trustedVerbs)', async () => {
    const { d } = await ehlo(TRUSTED);
    expect((await d.cmd('TURN')).code).toBeGreaterThanOrEqual(500);
    await d.cmd('QUIT');
    expect(lines.some((l) => l.toUpperCase().startsWith('TURN'))).toBe(false);
  });
});

describe('configurable', () => {
  test('ehloAllow adds a keyword (ETRN) and vrfy: refuse answers 502', async () => {
    const g2 = await startGuard({
      backendPort: port,
      config: { smtp: { ehloAllow: ['PIPELINING', 'SIZE', 'ETRN'], vrfy: 'refuse' }, timeouts: { command: '5m', data: '3m', session: '30m', drain: '500ms' } },
    });
    try {
      const d = await Dialog.connect(g2.port, { localAddress: STRANGER });
      expect((await d.reply()).code).toBe(220);
      const r = await d.cmd('EHLO client.test');
      const keywords = r.lines.slice(1).map((l) => l.split(' ')[0]);
      expect(keywords).toContain('ETRN');
      expect(keywords).not.toContain('8BITMIME');
      expect(keywords).not.toContain('CHUNKING');
      const v = await d.cmd('VRFY admin');
      expect(v.code).toBe(502);
      await d.cmd('QUIT');
    } finally {
      await g2.stop();
    }
  });
});
