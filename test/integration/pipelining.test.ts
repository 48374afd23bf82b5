/**
 * Issue 3 acceptance, PIPELINING (RFC 2920): a batch sent in one write is answered in exact
 * command order, whether the guard or the backend answers; a body pipelined behind a refused
 * DATA is read as commands and never forwarded; a backend without PIPELINING gets the commands
 * one by one but the client still sees its replies in order; swaks --pipeline works end to end.
 * All of it twice: one backend connection per client, and pooled mode (the guard greets and
 * answers EHLO itself and lends a pre-opened backend session from MAIL to end-of-data), where what
 * the backend saw is searched across all its connections since the test began.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { MODES, since } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { until, withTimeout } from '../helpers/with-timeout.js';

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

const BATCH =
  'MAIL FROM:<sender@elsewhere.test>\r\n' +
  'RCPT TO:<one@example.com>\r\n' + // guard accepts, backend accepts → 250
  'RCPT TO:<victim@elsewhere.test>\r\n' + // guard refuses (relay) → 550 5.7.1
  'RCPT TO:<unknown-x@example.com>\r\n' + // guard forwards, backend refuses → 550
  'RCPT TO:<two@example.com>\r\n' + // → 250
  'RCPT TO:<victim2@elsewhere.test>\r\n' + // guard refuses → 550
  'DATA\r\n';

/** Runs BATCH and a body; returns what the backend received meanwhile (all connections). */
async function batchDelivers(g: StartedGuard, backend: RecordingBackend, marker: string): Promise<string[]> {
  const seen = since(backend);
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
  return seen();
}

for (const { mode, config } of MODES) describe(`${mode} mode`, () => {
  describe('backend with PIPELINING', () => {
    let backend: RecordingBackend;
    let g: StartedGuard;
    beforeAll(async () => {
      backend = await startRecordingBackend({ server: backendRefusesUnknown });
      g = await startGuard({ backendPort: backend.port, config });
      expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
    });
    afterAll(async () => {
      await g?.stop();
      await backend?.close();
    });

    test('MAIL + 5 RCPT (mixed) + DATA in one write: replies in order, only accepted recipients delivered', async () => {
      await batchDelivers(g, backend, 'batch-pipelined');
    });

    test('the backend received the forwarded part of the batch pipelined too', async () => {
      const seen = await batchDelivers(g, backend, 'batch-second');
      // The three forwarded RCPTs are in the stream in client order, the refused ones absent.
      const rcpts = seen.filter((l) => l.startsWith('RCPT'));
      expect(rcpts).toEqual(['RCPT TO:<one@example.com>', 'RCPT TO:<unknown-x@example.com>', 'RCPT TO:<two@example.com>']);
    });

    test('a body pipelined after a DATA the guard refuses (no valid recipient) is never forwarded', async () => {
      const seen = since(backend);
      const d = await greeted(g.port);
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
      const r = await d.repliesUntilClose(40);
      expect(r.slice(0, 3).map((x) => x.code)).toEqual([250, 550, 554]);
      expect(r[2]!.text).toContain('5.5.1');
      // "Subject: …" is an unknown verb, the RCPT is a command again (503: the DATA ended the attempt
      // or 250: the transaction is still open), "." is unknown; QUIT says goodbye.
      expect(r[3]!.code).toBe(500);
      expect(r.at(-1)!.code).toBe(221);
      const lines = seen();
      expect(lines.some((l) => l.includes('refused-body-marker'))).toBe(false);
      expect(lines).not.toContain('DATA');
      expect(lines.filter((l) => l.startsWith('RCPT'))).not.toContain('RCPT TO:<victim@elsewhere.test>');
      expect(backend.messages.length).toBe(msgsBefore);
    });

    test('a body pipelined after a DATA the backend refuses (it refused every recipient) is never forwarded', async () => {
      const seen = since(backend);
      const d = await greeted(g.port);
      const msgsBefore = backend.messages.length;
      d.send(
        'MAIL FROM:<sender@elsewhere.test>\r\n' +
          'RCPT TO:<unknown-a@example.com>\r\n' +
          'DATA\r\n' +
          'Subject: backend-refused-marker\r\n' +
          '.\r\n' +
          'QUIT\r\n',
      );
      const r = await d.repliesUntilClose(40);
      expect(r.slice(0, 2).map((x) => x.code)).toEqual([250, 550]);
      expect(r[2]!.code).toBeGreaterThanOrEqual(500);
      expect(r.every((x) => x.code !== 354)).toBe(true);
      const lines = seen();
      // The tap saw this session (its RCPT went to the backend), but nothing of the body.
      expect(lines).toContain('RCPT TO:<unknown-a@example.com>');
      expect(lines.some((l) => l.includes('backend-refused-marker'))).toBe(false);
      expect(backend.messages.length).toBe(msgsBefore);
    });

    test('a client that sends its whole session and half-closes (FIN) gets every reply; a cut message is not delivered', async () => {
      const session = 'EHLO script.test\r\nMAIL FROM:<s@elsewhere.test>\r\nRCPT TO:<script@example.com>\r\nDATA\r\n';
      const run1 = await halfClosed(g.port, `${session}Subject: half-close\r\n\r\nx\r\n.\r\nQUIT\r\n`);
      expect(run1.codes).toEqual([220, 250, 250, 250, 354, 250, 221]);
      const before = backend.messages.length;
      const run2 = await halfClosed(g.port, `${session}Subject: cut short\r\n\r\nno end`);
      expect(run2.codes).toEqual([220, 250, 250, 250, 354]);
      expect(backend.messages.length).toBe(before);
      expect(backend.lines().some((l) => l.includes('cut short'))).toBe(true);
      // The next client's message arrives alone: the backend session with the cut message open was
      // not lent again (pooled mode reuses the session given back last), its DATA never ended.
      const run3 = await halfClosed(g.port, `${session}Subject: after the cut\r\n\r\ny\r\n.\r\nQUIT\r\n`);
      expect(run3.codes).toEqual([220, 250, 250, 250, 354, 250, 221]);
      await withTimeout(backend.waitForMessages(before + 1), 5000, 'the message after the cut');
      expect(backend.messages.slice(before).map((m) => m.body.toString('latin1'))).toEqual(['Subject: after the cut\r\n\r\ny\r\n']);
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
      g = await startGuard({ backendPort: backend.port, config });
      expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
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

    test('a body pipelined after a refused DATA is never forwarded here either', async () => {
      const seen = since(backend);
      const d = await greeted(g.port);
      const msgsBefore = backend.messages.length;
      d.send('MAIL FROM:<sender@elsewhere.test>\r\nRCPT TO:<unknown-b@example.com>\r\nRCPT TO:<victim@elsewhere.test>\r\nDATA\r\nSubject: lockstep-refused-marker\r\n.\r\nQUIT\r\n');
      const r = await d.repliesUntilClose(40);
      expect(r.slice(0, 3).map((x) => x.code)).toEqual([250, 550, 550]);
      expect(r[3]!.code).toBeGreaterThanOrEqual(500);
      expect(r.every((x) => x.code !== 354)).toBe(true);
      expect(r.at(-1)!.code).toBe(221);
      const lines = seen();
      expect(lines.filter((l) => l.startsWith('RCPT'))).toEqual(['RCPT TO:<unknown-b@example.com>']);
      expect(lines.some((l) => l.includes('lockstep-refused-marker'))).toBe(false);
      expect(backend.messages.length).toBe(msgsBefore);
    });
  });

  // Pooled: one backend session only, so a session left stuck (an RSET written into the DATA stream
  // after the 354) would make the next client wait; it must be dropped and replaced at once.
  describe('a body sent before 354 that overflows the command buffer', () => {
    test('is refused with 421, or delivered intact: never forwarded with a hole', async () => {
      // The backend holds its 354 until the test releases it, so the client's early body piles up.
      let release: (() => void) | undefined;
      const body: string[] = [];
      let sawData = false;
      let ended = false;
      const server = net.createServer((s) => {
        s.on('error', () => undefined);
        let buf = '';
        let inData = false;
        s.write('220 gated ESMTP\r\n');
        s.on('data', (c: Buffer) => {
          buf += c.toString('latin1');
          for (let nl = buf.indexOf('\r\n'); nl >= 0; nl = buf.indexOf('\r\n')) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 2);
            if (inData) {
              if (line === '.') {
                inData = false;
                ended = true;
                s.write('250 2.0.0 queued\r\n');
              } else body.push(line);
              continue;
            }
            const verb = line.split(' ')[0]!.toUpperCase();
            if (verb === 'EHLO') s.write('250-gated\r\n250 PIPELINING\r\n');
            else if (verb === 'DATA') {
              sawData = true;
              inData = true;
              release = () => s.write('354 go\r\n');
            } else if (verb === 'QUIT') s.end('221 bye\r\n');
            else s.write('250 2.0.0 ok\r\n');
          }
        });
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      const sockets = new Set<net.Socket>();
      server.on('connection', (s) => {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
      });
      const pool = mode === 'pooled' ? { backend: { maxConnections: 20, pool: { enabled: true, minIdle: 1, max: 1, acquireTimeout: '5s', healthInterval: '30s' } } } : config;
      const g = await startGuard({ backendPort: (server.address() as net.AddressInfo).port, config: { ...pool, timeouts: { command: '5m', data: '3m', session: '30m', drain: '500ms' } } });
      try {
        const d = await greeted(g.port);
        expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
        expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
        const lines = Array.from({ length: 1500 }, (_, i) => `line ${String(i).padStart(5, '0')} ${'b'.repeat(80)}`);
        const wire = `${lines.join('\r\n')}\r\n.\r\n`;
        d.send(`DATA\r\n${wire.slice(0, 3000)}`);
        await until(() => sawData, 3000, 'DATA at the backend');
        await new Promise<void>((r) => d.socket.write(wire.slice(3000), () => r()));
        release!();
        const r = await d.repliesUntilClose(5);
        const codes = r.map((x) => x.code);
        if (codes.includes(250)) {
          expect(codes).toEqual([354, 250, ...codes.slice(2)]);
          expect(body).toEqual(lines);
        } else {
          expect(codes.at(-1)).toBe(421);
          expect(ended).toBe(false);
        }
        // The next client is served at once (pooled: on a fresh backend session), and the cut
        // session was closed once: no client session is left counted.
        const b = await greeted(g.port);
        expect((await b.cmd('MAIL FROM:<b@elsewhere.test>', 4000)).code).toBe(250);
        b.send('QUIT\r\n');
        await b.waitClosed();
        await until(() => g.guard.services.registry.size === 0, 3000, 'no client session left');
        expect(await g.guard.metrics.register.metrics()).toMatch(/relay_guard_sessions_active\{listener="mx"\} 0\n/);
        expect(g.logs.filter((l) => l.msg === 'session closed').length).toBe(2);
      } finally {
        await g.stop();
        for (const s of sockets) s.destroy();
        await new Promise<void>((r) => server.close(() => r()));
      }
    });
  });
});

/** Connect, wait for the greeting, send everything with FIN, collect reply codes until the guard closes. */
function halfClosed(port: number, data: string): Promise<{ codes: number[] }> {
  return withTimeout(
    new Promise((resolve, reject) => {
      const s = net.connect({ port, host: '127.0.0.1', localAddress: STRANGER });
      let text = '';
      s.on('error', reject);
      s.on('data', (c: Buffer) => {
        const first = text === '';
        text += c.toString('latin1');
        if (first) s.end(data);
      });
      s.on('close', () => resolve({ codes: text.split('\r\n').filter((l) => /^\d{3} /.test(l)).map((l) => Number(l.slice(0, 3))) }));
    }),
    5000,
    'half-closed session',
  );
}

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
