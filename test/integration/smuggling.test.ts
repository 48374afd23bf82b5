/**
 * Issue 3 acceptance, SMTP smuggling (CVE-2023-51764/51765/51766): every non-standard
 * end-of-data form and every bare CR, bare LF or NUL in DATA is refused with 554 5.6.0; the
 * backend records no message for that transaction and never sees the smuggled envelope.
 * Normalize mode rewrites bare LF to CRLF so the backend reads the stream exactly as the guard
 * did, and a smuggled second message goes through the guard's own policy. Dot-stuffed lines
 * arrive byte-identical.
 *
 * Every block runs twice: with a backend connection per client, and in pooled mode (README
 * "Pooled mode": the guard greets and answers EHLO itself and lends a pre-opened backend session
 * from MAIL to the reply to end-of-data). Pooled sessions exist before a test's dialog begins and
 * carry other clients' transactions, so assertions read what the backend received since the
 * dialog began on every connection (RecordingBackend.mark / receivedSince), never one connection
 * by its index.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend, type RecordingMark } from '../helpers/recording-backend.js';
import { MODES, withMode } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { until, withTimeout } from '../helpers/with-timeout.js';

const STRANGER = '127.0.0.9';

/** [name, bytes that follow "Subject: …\r\n\r\nfirst part" (or start the message when `atStart`)] */
const VECTORS: Array<[string, string, boolean?]> = [
  ['\\n.\\n', '\n.\n'],
  ['\\n.\\r\\n', '\n.\r\n'],
  ['\\r.\\r', '\r.\r'],
  ['\\r\\n.\\r', '\r\n.\r'],
  ['\\r\\n.\\n', '\r\n.\n'],
  ['.\\n at the start of DATA', '.\n', true],
  ['bare CR inside a line', 'x\ry\r\n'],
  ['bare LF inside a line', 'x\ny\r\n'],
  ['NUL inside a line', 'x\0y\r\n'],
  ['\\r\\n.\\0\\r\\n', '\r\n.\0\r\n'],
  ['\\r\\n\\0.\\r\\n', '\r\n\0.\r\n'],
];

function smuggledEnvelope(rcptDomain: string, marker: string): string {
  return (
    `MAIL FROM:<spoof@example.com>\r\n` +
    `RCPT TO:<smuggled-${marker}@${rcptDomain}>\r\n` +
    `DATA\r\n` +
    `Subject: smuggled-${marker}\r\n\r\nsmuggled body\r\n` +
    `.\r\n`
  );
}

function payload(vector: string, atStart: boolean | undefined, marker: string, rcptDomain: string): string {
  const head = atStart ? '' : `Subject: first-${marker}\r\n\r\nfirst part`;
  return `${head}${vector}${smuggledEnvelope(rcptDomain, marker)}`;
}

async function openData(port: number, rcpt = 'user@example.com'): Promise<Dialog> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  expect((await d.cmd('MAIL FROM:<sender@elsewhere.test>')).code).toBe(250);
  expect((await d.cmd(`RCPT TO:<${rcpt}>`)).code).toBe(250);
  expect((await d.cmd('DATA')).code).toBe(354);
  return d;
}

type Mode = 'per-client' | 'pooled';

/** What the backend received since `mark`, per connection, as text (connections that received nothing left out). */
function receivedSince(backend: RecordingBackend, mark: RecordingMark): Array<{ text: string; open: boolean }> {
  return backend.receivedSince(mark).filter((c) => c.text.length > 0);
}

/**
 * Wait until everything the dialog caused on the backend side is recorded. Per client: the
 * session's backend connection is closed. Pooled: no guard session is left, every pooled session
 * is idle again (an RSET has had its reply), and every connection the pool dropped is closed at
 * the backend too.
 */
async function settled(mode: Mode, g: StartedGuard, backend: RecordingBackend): Promise<void> {
  if (mode === 'per-client') return until(() => backend.openConnections() === 0, 3000, 'backend connection closed');
  const pool = g.guard.services.pool!;
  return until(
    () => g.guard.services.registry.size === 0 && pool.total === pool.idleCount && backend.openConnections() === pool.idleCount,
    3000,
    'guard session ended and pool idle',
  );
}

/** The backend session that carried the refused DATA is closed (never an end-of-data; never lent again mid-DATA). */
function expectDataSessionClosed(seen: Array<{ text: string; open: boolean }>): void {
  const carriers = seen.filter((c) => c.text.includes('DATA\r\n'));
  expect(carriers, JSON.stringify(seen)).toHaveLength(1);
  expect(carriers[0]!.open).toBe(false);
}

describe.each(MODES)('backend $mode', ({ mode, config }) => {
  describe('reject mode (default)', () => {
    let backend: RecordingBackend;
    let g: StartedGuard;
    beforeAll(async () => {
      backend = await startRecordingBackend();
      g = await startGuard({ backendPort: backend.port, config });
    });
    afterAll(async () => {
      await g?.stop();
      await backend?.close();
    });

    test.each(VECTORS.map(([name, bytes, atStart], i) => [name, bytes, atStart, i] as const))(
      '%s: 554 5.6.0, no message, smuggled envelope never reaches the backend',
      async (_name, vector, atStart, i) => {
        const marker = `r${i}`;
        const mark = backend.mark();
        const msgsBefore = backend.messages.length;
        const d = await openData(g.port);
        d.send(payload(vector, atStart, marker, 'example.com'));
        // The final CRLF.CRLF so that a backend reading bare LF as a line end would deliver twice.
        d.send('\r\n.\r\nQUIT\r\n');
        const r = await d.repliesUntilClose(30);
        expect(r[0]?.code, JSON.stringify(r)).toBe(554);
        expect(r[0]!.text).toContain('5.6.0');
        // The connection closes after the 554: nothing else is answered.
        expect(r).toHaveLength(1);
        await d.waitClosed();
        await settled(mode, g, backend);
        const received = receivedSince(backend, mark);
        // The backend session of this transaction is gone (aborted, never an end-of-data).
        expectDataSessionClosed(received);
        // A NUL between connections: no match spans two of them.
        const seen = received.map((c) => c.text).join('\0');
        expect(seen).not.toContain(`smuggled-${marker}`);
        expect(seen).not.toContain('spoof@');
        expect(seen).not.toContain('\r\n.\r\n');
        expect(backend.messages.length).toBe(msgsBefore);
        expect(backend.messages.filter((m) => m.body.toString('latin1').includes(marker))).toEqual([]);
      },
    );

    test('a vector split across TCP writes (one byte per write) is caught just the same', async () => {
      const msgsBefore = backend.messages.length;
      const mark = backend.mark();
      const d = await openData(g.port);
      const bytes = Buffer.from(`Subject: split\r\n\r\nfirst\r\n.\n${smuggledEnvelope('example.com', 'split')}`, 'latin1');
      for (const b of bytes) {
        if (d.closed) break;
        await new Promise<void>((resolve) => d.socket.write(Buffer.from([b]), () => resolve()));
      }
      const r = await d.reply();
      expect(r.code).toBe(554);
      await d.waitClosed();
      await settled(mode, g, backend);
      const received = receivedSince(backend, mark);
      expectDataSessionClosed(received);
      expect(received.map((c) => c.text).join('\0')).not.toContain('smuggled-split');
      expect(backend.messages.length).toBe(msgsBefore);
    });

    test('the smuggling attempt is logged with its kind', async () => {
      const logsBefore = g.logs.length;
      const d = await openData(g.port);
      d.send('Subject: logged\r\n\r\nhello\n.\nMAIL FROM:<x@example.com>\r\n\r\n.\r\n');
      expect((await d.reply()).code).toBe(554);
      await d.waitClosed();
      await settled(mode, g, backend);
      expect(g.logs.slice(logsBefore).some((l) => l.msg === 'smuggling attempt refused' && l.kind === 'bare_lf')).toBe(true);
    });

    test('dot-stuffed lines pass byte-identical (on the wire and in the delivered message)', async () => {
      const body = 'Subject: dots\r\n\r\n..leading dot\r\n...two\r\n.. \r\n..\r\nmiddle . dot\r\nlast\r\n';
      const mark = backend.mark();
      const msgsBefore = backend.messages.length;
      const d = await openData(g.port);
      d.send(`${body}.\r\n`);
      expect((await d.reply()).code).toBe(250);
      expect((await d.cmd('QUIT')).code).toBe(221);
      await withTimeout(backend.waitForMessages(msgsBefore + 1), 5000, 'message');
      await settled(mode, g, backend);
      expect(receivedSince(backend, mark).map((c) => c.text)).toContainEqual(expect.stringContaining(`DATA\r\n${body}.\r\n`));
      expect(backend.messages).toHaveLength(msgsBefore + 1);
      expect(backend.messages[msgsBefore]!.body.toString('latin1')).toBe(body.replace(/^\./gm, ''));
    });
  });

  describe('normalize mode', () => {
    let backend: RecordingBackend;
    let g: StartedGuard;
    beforeAll(async () => {
      backend = await startRecordingBackend();
      g = await startGuard({ backendPort: backend.port, config: withMode(config, { smtp: { smuggling: 'normalize' } }) });
    });
    afterAll(async () => {
      await g?.stop();
      await backend?.close();
    });

    const LF_VECTORS = VECTORS.filter(([, v]) => v.includes('\n') && !v.includes('\r.') && !v.includes('\0') && !/\r(?!\n)/.test(v));

    test('the vectors with bare LF only are the ones normalised', () => {
      expect(LF_VECTORS.map(([n]) => n)).toEqual(['\\n.\\n', '\\n.\\r\\n', '\\r\\n.\\n', '.\\n at the start of DATA', 'bare LF inside a line']);
    });

    test.each(LF_VECTORS.map(([name, bytes, atStart], i) => [name, bytes, atStart, i] as const))(
      '%s: the backend sees CRLF only, and a smuggled second message meets the guard\'s policy',
      async (_name, vector, atStart, i) => {
        const marker = `n${i}`;
        const mark = backend.mark();
        const msgsBefore = backend.messages.length;
        const d = await openData(g.port);
        d.send(payload(vector, atStart, marker, 'elsewhere.test'));
        d.send('\r\n.\r\nQUIT\r\n');
        const r = await d.repliesUntilClose(30);
        expect(r.at(-1)?.code, JSON.stringify(r)).toBe(221);
        await settled(mode, g, backend);
        const wire = receivedSince(backend, mark).map((c) => c.text);
        // The message went to the backend at all (else the checks below say nothing).
        expect(wire).toContainEqual(expect.stringContaining('DATA\r\n'));
        // No bare LF ever reaches the backend: every LF is preceded by CR.
        for (const w of wire) expect(/(^|[^\r])\n/.test(w), JSON.stringify(w)).toBe(false);
        const inLine = vector === 'x\ny\r\n';
        // The relay attempt inside the "second message" was judged by the guard and refused; with
        // no end-of-data before it (LF inside a line), it is plain body text for both alike.
        if (!inLine) for (const w of wire) expect(w).not.toContain(`RCPT TO:<smuggled-${marker}@elsewhere.test>`);
        const relayReplies = r.filter((x) => x.code === 550 && x.text.includes('5.7.1'));
        const delivered = backend.messages.slice(msgsBefore);
        for (const m of delivered) expect(m.rcptTo).toEqual(['user@example.com']);
        // The guard's view equals the backend's: the messages it answered 250 to are the ones delivered.
        const endOfDataOk = r.filter((x) => x.code === 250 && /queued/i.test(x.text)).length;
        expect(delivered.length).toBe(endOfDataOk);
        expect(delivered.length).toBeGreaterThanOrEqual(1);
        if (inLine) expect(delivered[0]!.body.toString('latin1')).toContain(`first partx\r\ny\r\nMAIL FROM:<spoof@example.com>\r\nRCPT TO:<smuggled-${marker}@elsewhere.test>\r\n`);
        else expect(relayReplies.length).toBe(1);
      },
    );

    test('bare LF inside a line becomes CRLF in the delivered message', async () => {
      const msgsBefore = backend.messages.length;
      const d = await openData(g.port);
      d.send('Subject: lf\n\nline one\nline two\r\n.\r\n');
      expect((await d.reply()).code).toBe(250);
      await d.cmd('QUIT');
      await withTimeout(backend.waitForMessages(msgsBefore + 1), 5000, 'message');
      expect(backend.messages[msgsBefore]!.body.toString('latin1')).toBe('Subject: lf\r\n\r\nline one\r\nline two\r\n');
    });

    test('a bare CR is still refused in normalize mode', async () => {
      const msgsBefore = backend.messages.length;
      const mark = backend.mark();
      const d = await openData(g.port);
      d.send(`Subject: cr\r\n\r\nx\r.\r${smuggledEnvelope('example.com', 'cr')}`);
      const r = await d.reply();
      expect(r.code).toBe(554);
      expect(r.text).toContain('5.6.0');
      await d.waitClosed();
      await settled(mode, g, backend);
      expect(backend.messages.length).toBe(msgsBefore);
      const received = receivedSince(backend, mark);
      expectDataSessionClosed(received);
      expect(received.map((c) => c.text).join('\0')).not.toContain('smuggled-cr');
    });
  });
});
