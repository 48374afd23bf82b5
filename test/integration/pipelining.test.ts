/**
 * Issue 3 acceptance, PIPELINING (RFC 2920): a batch sent in one write is answered in exact
 * command order, whether the guard or the backend answers; a body pipelined behind a refused
 * DATA is read as commands and never forwarded; a backend without PIPELINING gets the commands
 * one by one but the client still sees its replies in order; swaks --pipeline works end to end.
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog, type ParsedReply } from '../helpers/dialog.js';
import { withTimeout } from '../helpers/with-timeout.js';

const STRANGER = '127.0.0.9';

/** The backend refuses local parts starting with "unknown" itself (550 5.1.1), like Exchange. */
const backendRefusesUnknown = {
  onRcptTo(address: { address: string }, _session: unknown, cb: (err?: Error | null) => void) {
    if (address.address.startsWith('unknown')) {
      const err = new Error('5.1.1 User unknown') as Error & { responseCode: number };
      err.responseCode = 550;
      return cb(err);
    }
    cb();
  },
};

async function greeted(port: number): Promise<Dialog> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}

/** Read replies until the connection closes (bounded by count and time). */
async function repliesUntilClose(d: Dialog, max = 40): Promise<ParsedReply[]> {
  const out: ParsedReply[] = [];
  for (let i = 0; i < max; i++) {
    try {
      out.push(await d.reply(3000));
    } catch {
      break;
    }
  }
  return out;
}

const BATCH =
  'MAIL FROM:<sender@elsewhere.test>\r\n' +
  'RCPT TO:<one@example.com>\r\n' + // guard accepts, backend accepts → 250
  'RCPT TO:<victim@elsewhere.test>\r\n' + // guard refuses (relay) → 550 5.7.1
  'RCPT TO:<unknown-x@example.com>\r\n' + // guard forwards, backend refuses → 550
  'RCPT TO:<two@example.com>\r\n' + // → 250
  'RCPT TO:<victim2@elsewhere.test>\r\n' + // guard refuses → 550
  'DATA\r\n';

async function batchDelivers(g: StartedGuard, backend: RecordingBackend, marker: string): Promise<void> {
  const d = await greeted(g.port);
  const before = backend.messages.length;
  d.send(BATCH);
  const r = await d.replyN(7);
  expect(r.map((x) => x.code)).toEqual([250, 250, 550, 550, 250, 550, 354]);
  expect(r[2]!.text).toContain('5.7.1');
  expect(r[3]!.text).toContain('5.1.1');
  d.send(`Subject: ${marker}\r\n\r\nhello\r\n.\r\n`);
  expect((await d.reply()).code).toBe(250);
  expect((await d.cmd('QUIT')).code).toBe(221);
  await withTimeout(backend.waitForMessages(before + 1), 5000, 'message');
  const msg = backend.messages[before]!;
  expect(msg.rcptTo).toEqual(['one@example.com', 'two@example.com']);
  expect(msg.body.toString('latin1')).toBe(`Subject: ${marker}\r\n\r\nhello\r\n`);
  expect(backend.lines().some((l) => l.includes('elsewhere.test>') && l.startsWith('RCPT'))).toBe(false);
}

describe('backend with PIPELINING', () => {
  let backend: RecordingBackend;
  let g: StartedGuard;
  beforeAll(async () => {
    backend = await startRecordingBackend({ server: backendRefusesUnknown });
    g = await startGuard({ backendPort: backend.port });
  });
  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  test('MAIL + 5 RCPT (mixed) + DATA in one write: replies in order, only accepted recipients delivered', async () => {
    await batchDelivers(g, backend, 'batch-pipelined');
  });

  test('the backend received the forwarded part of the batch pipelined too', async () => {
    const before = backend.connections.length;
    await batchDelivers(g, backend, 'batch-second');
    const conn = Buffer.concat(backend.connections[before]!).toString('latin1');
    // The three forwarded RCPTs are in the stream in client order, the refused ones absent.
    const rcpts = conn.split('\r\n').filter((l) => l.startsWith('RCPT'));
    expect(rcpts).toEqual(['RCPT TO:<one@example.com>', 'RCPT TO:<unknown-x@example.com>', 'RCPT TO:<two@example.com>']);
  });

  test('a body pipelined after a DATA the guard refuses (no valid recipient) is never forwarded', async () => {
    const d = await greeted(g.port);
    const linesBefore = backend.lines().length;
    const msgsBefore = backend.messages.length;
    d.send(
      'MAIL FROM:<sender@elsewhere.test>\r\n' +
        'RCPT TO:<victim@elsewhere.test>\r\n' +
        'DATA\r\n' +
        'Subject: refused-body-marker\r\n' +
        'RCPT TO:<inbody@example.com>\r\n' +
        '.\r\n' +
        'QUIT\r\n',
    );
    const r = await repliesUntilClose(d);
    expect(r.slice(0, 3).map((x) => x.code)).toEqual([250, 550, 554]);
    expect(r[2]!.text).toContain('5.5.1');
    // "Subject: …" is an unknown verb, the RCPT is a command again (503: the DATA ended the attempt
    // or 250: the transaction is still open), "." is unknown; QUIT says goodbye.
    expect(r[3]!.code).toBe(500);
    expect(r.at(-1)!.code).toBe(221);
    const seen = backend.lines().slice(linesBefore);
    expect(seen.some((l) => l.includes('refused-body-marker'))).toBe(false);
    expect(seen).not.toContain('DATA');
    expect(backend.messages.length).toBe(msgsBefore);
  });

  test('a body pipelined after a DATA the backend refuses (it refused every recipient) is never forwarded', async () => {
    const d = await greeted(g.port);
    const linesBefore = backend.lines().length;
    const msgsBefore = backend.messages.length;
    d.send(
      'MAIL FROM:<sender@elsewhere.test>\r\n' +
        'RCPT TO:<unknown-a@example.com>\r\n' +
        'DATA\r\n' +
        'Subject: backend-refused-marker\r\n' +
        '.\r\n' +
        'QUIT\r\n',
    );
    const r = await repliesUntilClose(d);
    expect(r.slice(0, 2).map((x) => x.code)).toEqual([250, 550]);
    expect(r[2]!.code).toBeGreaterThanOrEqual(500);
    expect(r.every((x) => x.code !== 354)).toBe(true);
    expect(backend.lines().slice(linesBefore).some((l) => l.includes('backend-refused-marker'))).toBe(false);
    expect(backend.messages.length).toBe(msgsBefore);
  });

  test('swaks --pipeline exits 0 and its message arrives', async () => {
    const before = backend.messages.length;
    const { code, out } = await run('swaks', [
      '--server', `127.0.0.1:${g.port}`,
      '--local-interface', STRANGER,
      '--to', 'user@example.com',
      '--from', 'a@b.test',
      '--pipeline',
      '--header', 'Subject: swaks-pipelined',
    ]);
    expect(code, out).toBe(0);
    expect(out).toContain('PIPELINING');
    await withTimeout(backend.waitForMessages(before + 1), 5000, 'swaks message');
    const msg = backend.messages[before]!;
    expect(msg.rcptTo).toEqual(['user@example.com']);
    expect(msg.body.toString('latin1')).toContain('Subject: swaks-pipelined');
  });
});

describe('backend without PIPELINING', () => {
  let backend: RecordingBackend;
  let g: StartedGuard;
  beforeAll(async () => {
    backend = await startRecordingBackend({ server: { ...backendRefusesUnknown, hidePIPELINING: true } as never });
    g = await startGuard({ backendPort: backend.port });
  });
  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  test('a client that pipelines anyway gets every reply in order; commands go to the backend one by one', async () => {
    const d = await greeted(g.port);
    await d.cmd('QUIT');
    await batchDelivers(g, backend, 'batch-lockstep');
  });
});

function run(cmd: string, args: string[], ms = 20_000): Promise<{ code: number | null; out: string }> {
  return withTimeout(
    new Promise((resolve, reject) => {
      const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', (c: Buffer) => (out += c.toString()));
      p.stderr.on('data', (c: Buffer) => (out += c.toString()));
      p.on('error', reject);
      p.on('close', (code) => resolve({ code, out }));
    }),
    ms,
    `${cmd} to exit`,
  );
}
