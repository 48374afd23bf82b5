/**
 * Issue 10 item 3: in pooled mode the backend learns who each transaction's client is — Postfix
 * XFORWARD before each MAIL, or XCLIENT + EHLO when the borrowed session carries another client —
 * and the log ties each client to the backend session it was lent (for Exchange, which knows
 * neither). A scripted backend on a raw socket records every line it gets.
 */
import net from 'node:net';
import { afterEach, describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { until } from '../helpers/with-timeout.js';
import { formatXforward, packAttributes, xtext } from '../../src/backend/xclient.js';

interface ScriptedBackend {
  readonly port: number;
  /** Command lines per backend connection (message bodies left out). */
  readonly connections: string[][];
  /** XFORWARD/XCLIENT lines that arrived between MAIL and end-of-data. */
  readonly insideTransaction: string[];
  close(): Promise<void>;
}

interface ScriptOptions {
  keywords: string[];
  /** Reply to XFORWARD (default 250). */
  xforwardReply?: string;
  /** Drop the connection when the first XCLIENT arrives (a backend failure in the preamble). */
  dropOnFirstXclient?: boolean;
  /** Refuse these XCLIENT lines with 501. */
  refuseXclient?: (line: string) => boolean;
}

/** A minimal SMTP server: PIPELINING-safe (answers line by line, in order), DATA until ".". */
async function startScriptedBackend(opts: ScriptOptions): Promise<ScriptedBackend> {
  const connections: string[][] = [];
  const insideTransaction: string[] = [];
  const sockets = new Set<net.Socket>();
  let queued = 0;
  let dropped = false;
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    const lines: string[] = [];
    connections.push(lines);
    let buf = '';
    let inData = false;
    let inTx = false;
    sock.write('220 backend.test ESMTP\r\n');
    sock.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      for (let nl = buf.indexOf('\r\n'); nl >= 0; nl = buf.indexOf('\r\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        if (inData) {
          if (line === '.') {
            inData = false;
            inTx = false;
            sock.write(`250 2.0.0 Ok: queued as Q${++queued}\r\n`);
          }
          continue;
        }
        lines.push(line);
        const verb = line.split(' ', 1)[0]!.toUpperCase();
        if ((verb === 'XFORWARD' || verb === 'XCLIENT') && inTx) insideTransaction.push(line);
        switch (verb) {
          case 'EHLO':
            sock.write(['250-backend.test', ...opts.keywords.map((k) => `250-${k}`), '250 8BITMIME', ''].join('\r\n'));
            break;
          case 'XFORWARD':
            sock.write(`${opts.xforwardReply ?? '250 2.0.0 Ok'}\r\n`);
            break;
          case 'XCLIENT':
            if (opts.dropOnFirstXclient && !dropped) {
              dropped = true;
              sock.destroy();
              return;
            }
            sock.write(opts.refuseXclient?.(line) ? '501 5.5.4 Bad HELO syntax\r\n' : '220 backend.test ESMTP\r\n');
            break;
          case 'MAIL':
            inTx = true;
            sock.write('250 2.1.0 Ok\r\n');
            break;
          case 'DATA':
            inData = true;
            sock.write('354 End data with <CR><LF>.<CR><LF>\r\n');
            break;
          case 'RSET':
            inTx = false;
            sock.write('250 2.0.0 Ok\r\n');
            break;
          case 'QUIT':
            sock.end('221 2.0.0 Bye\r\n');
            return;
          default:
            sock.write('250 2.0.0 Ok\r\n');
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as net.AddressInfo).port,
    connections,
    insideTransaction,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

let backend: ScriptedBackend | undefined;
let g: StartedGuard | undefined;

afterEach(async () => {
  await g?.stop();
  await backend?.close();
  g = undefined;
  backend = undefined;
});

const POOLED = (extra: Record<string, unknown>) => ({
  timeouts: { drain: '1s' },
  smtp: { hostname: 'guard.example.com', errorDelay: '0s' },
  backend: { pool: { enabled: true, minIdle: 1, max: 1, acquireTimeout: '10s', healthInterval: '30s' }, ...extra },
});

/** One client from `localAddress`: HELO/EHLO, `n` messages, QUIT. Returns the replies to end-of-data. */
async function client(port: number, localAddress: string, helo: string, n: number, verb: 'EHLO' | 'HELO' = 'EHLO'): Promise<number[]> {
  const d = await Dialog.connect(port, { localAddress });
  const codes: number[] = [];
  try {
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd(`${verb} ${helo}`)).code).toBe(250);
    for (let i = 0; i < n; i++) {
      expect((await d.cmd(`MAIL FROM:<${helo}-${i}@elsewhere.test>`)).code).toBe(250);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      codes.push((await d.cmd(`Subject: ${helo} ${i}\r\n\r\nbody\r\n.`)).code);
    }
    await d.cmd('QUIT');
  } finally {
    d.socket.destroy();
  }
  return codes;
}

/** For each MAIL line the backend got, the line right before it. */
function lineBeforeEachMail(lines: readonly string[]): Array<{ mail: string; before: string | undefined }> {
  return lines.flatMap((l, i) => (l.startsWith('MAIL FROM:') ? [{ mail: l, before: lines[i - 1] }] : []));
}

describe('pooled mode: XFORWARD per transaction (backend.xforward)', () => {
  test('two clients through one backend session: each MAIL is preceded by that client\'s XFORWARD, never inside a transaction', async () => {
    backend = await startScriptedBackend({ keywords: ['PIPELINING', 'XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE'] });
    g = await startGuard({ backendPort: backend.port, config: POOLED({ xforward: true }) });
    const [a, b] = await Promise.all([client(g.port, '127.0.0.2', 'alpha.test', 1), client(g.port, '127.0.0.3', 'beta.test', 1, 'HELO')]);
    expect(a).toEqual([250]);
    expect(b).toEqual([250]);
    expect(backend.connections).toHaveLength(1);
    const lines = backend.connections[0]!;
    const pairs = lineBeforeEachMail(lines);
    expect(pairs).toHaveLength(2);
    for (const { mail, before } of pairs) {
      const alpha = mail.includes('alpha.test');
      expect(before).toMatch(
        alpha
          ? /^XFORWARD NAME=\[UNAVAILABLE\] ADDR=127\.0\.0\.2 PORT=\d+ PROTO=ESMTP HELO=alpha\.test SOURCE=REMOTE$/
          : /^XFORWARD NAME=\[UNAVAILABLE\] ADDR=127\.0\.0\.3 PORT=\d+ PROTO=SMTP HELO=beta\.test SOURCE=REMOTE$/,
      );
    }
    expect(lines.filter((l) => l.startsWith('XFORWARD'))).toHaveLength(2);
    expect(backend.insideTransaction).toEqual([]);
    // The guard's own EHLO only: XFORWARD needs no new EHLO.
    expect(lines.filter((l) => l.startsWith('EHLO'))).toEqual(['EHLO guard.example.com']);
  });

  test('the log ties each client to the backend session: lent line and message accepted share backendSession', async () => {
    backend = await startScriptedBackend({ keywords: ['XFORWARD NAME ADDR PROTO HELO'] });
    g = await startGuard({ backendPort: backend.port, config: POOLED({ xforward: true }) });
    expect(await client(g.port, '127.0.0.2', 'alpha.test', 2)).toEqual([250, 250]);
    // Only advertised attributes: no PORT, no SOURCE.
    expect(backend.connections[0]!.filter((l) => l.startsWith('XFORWARD'))).toEqual([
      'XFORWARD NAME=[UNAVAILABLE] ADDR=127.0.0.2 PROTO=ESMTP HELO=alpha.test',
      'XFORWARD NAME=[UNAVAILABLE] ADDR=127.0.0.2 PROTO=ESMTP HELO=alpha.test',
    ]);
    const lent = g.logs.filter((l) => l.msg === 'pool: backend session lent');
    const accepted = g.logs.filter((l) => l.msg === 'message accepted');
    expect(lent).toHaveLength(2);
    expect(accepted).toHaveLength(2);
    for (const l of lent) {
      expect(l).toMatchObject({ clientIp: '127.0.0.2', helo: 'alpha.test', sessionId: accepted[0]!.sessionId });
      expect(typeof l.clientPort).toBe('number');
      expect(l.backendSession).toMatch(/^\d+:\d+$/);
      expect(l.backendSession).toMatch(new RegExp(`:${String(l.backendPort)}$`));
    }
    expect(accepted.map((l) => l.backendSession)).toEqual(lent.map((l) => l.backendSession));
    expect(accepted.map((l) => l.backendReply)).toEqual(['250 2.0.0 Ok: queued as Q1', '250 2.0.0 Ok: queued as Q2']);
  });

  test('a backend refusing XFORWARD with 550: the mail is still delivered, one warning per backend session', async () => {
    backend = await startScriptedBackend({ keywords: ['PIPELINING', 'XFORWARD NAME ADDR HELO'], xforwardReply: '550 5.7.0 Error: insufficient authorization' });
    g = await startGuard({ backendPort: backend.port, config: POOLED({ xforward: true }) });
    expect(await client(g.port, '127.0.0.2', 'alpha.test', 2)).toEqual([250, 250]);
    expect(backend.connections[0]!.filter((l) => l.startsWith('XFORWARD'))).toHaveLength(2);
    expect(g.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('pool: backend refused XFORWARD'))).toHaveLength(1);
  });

  test('xforward off (the default): the backend gets no XFORWARD although it offers it', async () => {
    backend = await startScriptedBackend({ keywords: ['XFORWARD NAME ADDR HELO', 'XCLIENT NAME ADDR HELO'] });
    g = await startGuard({ backendPort: backend.port, config: POOLED({}) });
    expect(await client(g.port, '127.0.0.2', 'alpha.test', 1)).toEqual([250]);
    expect(backend.connections[0]!.some((l) => /^X(FORWARD|CLIENT)/.test(l))).toBe(false);
  });
});

describe('pooled mode: XCLIENT per client (backend.xclient)', () => {
  test('XCLIENT then EHLO before a client\'s first MAIL; not repeated for its second message; sent again for the next client', async () => {
    backend = await startScriptedBackend({ keywords: ['PIPELINING', 'XCLIENT NAME ADDR PORT PROTO HELO LOGIN'] });
    g = await startGuard({ backendPort: backend.port, config: POOLED({ xclient: true }) });
    expect(await client(g.port, '127.0.0.2', 'alpha.test', 2)).toEqual([250, 250]);
    expect(await client(g.port, '127.0.0.3', 'beta.test', 1)).toEqual([250]);
    expect(backend.connections).toHaveLength(1);
    const cmds = backend.connections[0]!.filter((l) => /^(EHLO|XCLIENT|MAIL)/.test(l));
    expect(cmds).toHaveLength(8);
    expect(cmds[0]).toBe('EHLO guard.example.com');
    expect(cmds[1]).toMatch(/^XCLIENT ADDR=127\.0\.0\.2 PORT=\d+ NAME=\[UNAVAILABLE\] HELO=alpha\.test PROTO=ESMTP$/);
    // Postfix takes the HELO name from the EHLO after XCLIENT: the client's own.
    expect(cmds.slice(2, 5)).toEqual(['EHLO alpha.test', 'MAIL FROM:<alpha.test-0@elsewhere.test>', 'MAIL FROM:<alpha.test-1@elsewhere.test>']);
    expect(cmds[5]).toMatch(/^XCLIENT ADDR=127\.0\.0\.3 PORT=\d+ NAME=\[UNAVAILABLE\] HELO=beta\.test PROTO=ESMTP$/);
    expect(cmds.slice(6)).toEqual(['EHLO beta.test', 'MAIL FROM:<beta.test-0@elsewhere.test>']);
    expect(backend.insideTransaction).toEqual([]);
  });

  test('XFORWARD is preferred when both are offered and both are configured', async () => {
    backend = await startScriptedBackend({ keywords: ['XCLIENT NAME ADDR HELO', 'XFORWARD NAME ADDR HELO'] });
    g = await startGuard({ backendPort: backend.port, config: POOLED({ xclient: true, xforward: true }) });
    expect(await client(g.port, '127.0.0.2', 'alpha.test', 1)).toEqual([250]);
    const lines = backend.connections[0]!;
    expect(lines.some((l) => l.startsWith('XCLIENT'))).toBe(false);
    expect(lines.filter((l) => l.startsWith('XFORWARD'))).toEqual(['XFORWARD NAME=[UNAVAILABLE] ADDR=127.0.0.2 HELO=alpha.test']);
  });

  test('the backend failing during XCLIENT: 451 4.3.0 to that MAIL, the session is replaced, the retry is delivered', async () => {
    backend = await startScriptedBackend({ keywords: ['XCLIENT NAME ADDR HELO'], dropOnFirstXclient: true });
    g = await startGuard({ backendPort: backend.port, config: POOLED({ xclient: true }) });
    const d = await Dialog.connect(g.port, { localAddress: '127.0.0.2' });
    try {
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('EHLO alpha.test')).code).toBe(250);
      const first = await d.cmd('MAIL FROM:<a@elsewhere.test>');
      expect(first.code).toBe(451);
      expect(first.text).toContain('4.3.0');
      expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd('Subject: x\r\n\r\nbody\r\n.')).code).toBe(250);
      await d.cmd('QUIT');
    } finally {
      d.socket.destroy();
    }
    expect(backend.connections.length).toBe(2);
    expect(backend.connections[1]!.filter((l) => /^(XCLIENT|MAIL)/.test(l))).toEqual(['XCLIENT ADDR=127.0.0.2 NAME=[UNAVAILABLE] HELO=alpha.test', 'MAIL FROM:<a@elsewhere.test>']);
  });
});

describe('pooled mode: XCLIENT refused while the session carries another client', () => {
  test('falls back to ADDR and PORT alone: the next client is never shown as the previous one', async () => {
    backend = await startScriptedBackend({ keywords: ['XCLIENT NAME ADDR PORT HELO'], refuseXclient: (l) => l.includes('HELO=beta') });
    g = await startGuard({ backendPort: backend.port, config: POOLED({ xclient: true }) });
    expect(await client(g.port, '127.0.0.2', 'alpha.test', 1)).toEqual([250]);
    expect(await client(g.port, '127.0.0.3', 'beta.test', 1)).toEqual([250]);
    const x = backend.connections[0]!.filter((l) => /^(XCLIENT|EHLO|MAIL)/.test(l));
    expect(x.slice(4, 8).map((l) => l.replace(/PORT=\d+/, 'PORT=n'))).toEqual([
      'XCLIENT ADDR=127.0.0.3 PORT=n NAME=[UNAVAILABLE] HELO=beta.test',
      'XCLIENT ADDR=127.0.0.3 PORT=n',
      'EHLO beta.test',
      'MAIL FROM:<beta.test-0@elsewhere.test>',
    ]);
  });

  test('refused again: that MAIL gets 451 and the session is replaced (never delivered as the previous client)', async () => {
    backend = await startScriptedBackend({ keywords: ['XCLIENT NAME ADDR PORT HELO'], refuseXclient: (l) => l.includes('127.0.0.3') });
    g = await startGuard({ backendPort: backend.port, config: POOLED({ xclient: true }) });
    expect(await client(g.port, '127.0.0.2', 'alpha.test', 1)).toEqual([250]);
    const d = await Dialog.connect(g.port, { localAddress: '127.0.0.3' });
    try {
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('EHLO beta.test')).code).toBe(250);
      expect((await d.cmd('MAIL FROM:<b@elsewhere.test>')).code).toBe(451);
      // On a fresh session nobody else's identity is left: the refusal only costs the attribution.
      expect((await d.cmd('MAIL FROM:<b@elsewhere.test>')).code).toBe(250);
      await d.cmd('QUIT');
    } finally {
      d.socket.destroy();
    }
    expect(backend.connections[0]!.some((l) => l === 'MAIL FROM:<b@elsewhere.test>')).toBe(false);
    expect(g.logs.some((l) => l.msg === 'pool: backend session dropped during XCLIENT')).toBe(true);
  });
});

describe('per-client mode: XFORWARD before each MAIL', () => {
  test('the client\'s own address and HELO, before every MAIL on its connection', async () => {
    backend = await startScriptedBackend({ keywords: ['PIPELINING', 'XFORWARD NAME ADDR PORT PROTO HELO SOURCE'] });
    g = await startGuard({ backendPort: backend.port, config: { timeouts: { drain: '1s' }, smtp: { hostname: 'guard.example.com', errorDelay: '0s' }, backend: { xforward: true } } });
    expect(await client(g.port, '127.0.0.3', 'gamma.test', 2)).toEqual([250, 250]);
    await until(() => backend!.connections.length === 1, 2000, 'one backend connection');
    const pairs = lineBeforeEachMail(backend.connections[0]!);
    expect(pairs).toHaveLength(2);
    for (const p of pairs) expect(p.before).toMatch(/^XFORWARD NAME=\[UNAVAILABLE\] ADDR=127\.0\.0\.3 PORT=\d+ PROTO=ESMTP HELO=gamma\.test SOURCE=REMOTE$/);
    expect(backend.insideTransaction).toEqual([]);
  });
});

describe('XFORWARD formatting', () => {
  const ALL = new Set(['NAME', 'ADDR', 'PORT', 'PROTO', 'HELO', 'SOURCE']);

  test('IPv6 addresses carry the IPV6: prefix; an unknown HELO is [UNAVAILABLE]; HELO is xtext', () => {
    expect(formatXforward({ clientIp: '2001:db8::1', clientPort: 25, helo: '', esmtp: false }, ALL)).toEqual([
      'XFORWARD NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::1 PORT=25 PROTO=SMTP HELO=[UNAVAILABLE] SOURCE=REMOTE',
    ]);
    expect(formatXforward({ clientIp: '192.0.2.1', clientPort: 1, helo: 'a+b=c', esmtp: true }, new Set(['HELO']))).toEqual(['XFORWARD HELO=a+2Bb+3Dc']);
    expect(formatXforward({ clientIp: '192.0.2.1', clientPort: 1, helo: 'x', esmtp: true }, new Set())).toEqual([]);
  });

  test('a long HELO is sent in a second command; no line exceeds 512 octets with CRLF (property)', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 0, maxLength: 255 }), fc.boolean(), (helo, esmtp) => {
        const lines = formatXforward({ clientIp: '2001:db8:ffff:ffff:ffff:ffff:ffff:ffff', clientPort: 65535, helo, esmtp }, ALL);
        for (const l of lines) {
          expect(Buffer.byteLength(`${l}\r\n`)).toBeLessThanOrEqual(512);
          expect(l.startsWith('XFORWARD ')).toBe(true);
        }
        // Every attribute exactly once, in order, across the lines.
        const attrs = lines.flatMap((l) => l.split(' ').slice(1));
        expect(attrs.map((a) => a.split('=', 1)[0])).toEqual(['NAME', 'ADDR', 'PORT', 'PROTO', 'HELO', 'SOURCE']);
        expect(attrs[4]).toBe(`HELO=${helo === '' ? '[UNAVAILABLE]' : xtext(helo)}`);
      }),
    );
    expect(packAttributes('XFORWARD', ['A=1', `B=${'x'.repeat(500)}`])).toEqual(['XFORWARD A=1', `XFORWARD B=${'x'.repeat(500)}`]);
  });
});
