/**
 * A plaintext client socket that streams a large message reads into the guard's own buffers from
 * then on (src/net/client-reads.ts): one buffer shared by every such socket, and a private one
 * while a large message streams, forwarded to the backend without a copy. What could go wrong is a
 * read overwriting bytes something still needs: a write the kernel has not taken yet (a slow
 * backend), or pipelined commands the reader keeps after an end-of-data. Each test here makes that
 * happen and checks every byte, in both modes.
 */
import net from 'node:net';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { MODES } from '../helpers/modes.js';
import { startGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { until } from '../helpers/with-timeout.js';
import { startScriptedBackend } from '../helpers/scripted-backend.js';
import { startRecordingBackend } from '../helpers/recording-backend.js';
import { makeCertificate } from '../helpers/certs.js';
import { TlsDialog } from '../helpers/tls-dialog.js';
import { ClientReads, MAX_PRIVATE, clientReadStats } from '../../src/net/client-reads.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * A message body as sent after 354, ending with CRLF . CRLF: printable lines of 1 to 990 characters,
 * one in sixteen dot-stuffed (starting with two dots); no line is a lone dot before the end.
 */
function body(seed: number, bytes: number): Buffer {
  let x = seed >>> 0 || 1;
  const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 8);
  const out = Buffer.allocUnsafe(bytes + 1024);
  let n = 0;
  while (n < bytes) {
    if (rnd() % 16 === 0) {
      out[n++] = 0x2e;
      out[n++] = 0x2e;
    }
    const len = 1 + (rnd() % 990);
    for (let i = 0; i < len; i++) out[n++] = 0x30 + (rnd() % 79); // '0' … '~'
    out[n++] = 0x0d;
    out[n++] = 0x0a;
  }
  return Buffer.concat([out.subarray(0, n), Buffer.from('.\r\n')]);
}

/**
 * An SMTP backend that records each message's bytes as received (from after 354 to the end of
 * data, terminator included) and stops reading message bytes until resume() is called.
 */
async function startSlowBackend(): Promise<{ port: number; messages: Buffer[]; resume(): void; close(): Promise<void> }> {
  const messages: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  let stopped = true;
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let text = '';
    let data: Buffer[] | undefined;
    let tail = Buffer.alloc(0);
    s.write('220 slow ESMTP\r\n');
    s.on('data', (c: Buffer) => {
      if (data) {
        data.push(c);
        tail = Buffer.concat([tail, c]).subarray(-5);
        if (tail.equals(Buffer.from('\r\n.\r\n'))) {
          messages.push(Buffer.concat(data));
          data = undefined;
          s.write('250 2.0.0 queued\r\n');
        }
        return;
      }
      text += c.toString('latin1');
      for (let nl = text.indexOf('\r\n'); nl >= 0; nl = text.indexOf('\r\n')) {
        const line = text.slice(0, nl);
        text = text.slice(nl + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') s.write('250-slow\r\n250-PIPELINING\r\n250 8BITMIME\r\n');
        else if (verb === 'QUIT') s.end('221 bye\r\n');
        else if (verb === 'DATA') {
          data = [];
          tail = Buffer.from('\r\n');
          s.write('354 go\r\n');
          if (stopped) s.pause();
        } else s.write('250 2.0.0 ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    messages,
    resume: () => {
      stopped = false;
      for (const s of sockets) s.resume();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

async function greeted(port: number): Promise<Dialog> {
  const d = await Dialog.connect(port);
  cleanups.push(() => d.close());
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}

/** MAIL, RCPT and DATA, each answered as a relay of the accepted domain would answer. */
async function intoData(d: Dialog, sender: string): Promise<void> {
  expect((await d.cmd(`MAIL FROM:<${sender}>`)).code).toBe(250);
  expect((await d.cmd('RCPT TO:<someone@example.com>')).code).toBe(250);
  expect((await d.cmd('DATA')).code).toBe(354);
}

/** One 256 KiB message: the session's socket reads into the guard's buffers from then on. */
async function takenOver(d: Dialog): Promise<void> {
  const before = clientReadStats().sockets;
  await intoData(d, 'big@elsewhere.test');
  d.send(body(9, 256 * 1024));
  expect((await d.reply()).code).toBe(250);
  expect(clientReadStats().sockets).toBe(before + 1);
}

/**
 * A guard in front of a scripted backend that stays silent on the second `line` it gets (the first
 * is takenOver's) until the test answers on `held()`; the first client taken over and in a
 * transaction (MAIL, RCPT).
 */
async function holdingSecond(line: string, config: Record<string, unknown>): Promise<{ port: number; lines: string[]; first: Dialog; held(): net.Socket | undefined }> {
  let held: net.Socket | undefined;
  let seen = 0;
  const backend = await startScriptedBackend({
    onLine: (l, socket) => {
      if (l !== line || ++seen !== 2) return undefined;
      held = socket;
      return null;
    },
  });
  cleanups.push(() => backend.close());
  const g = await startGuard({ backendPort: backend.port, config });
  cleanups.push(() => g.stop());
  const first = await greeted(g.port);
  await takenOver(first);
  expect((await first.cmd('MAIL FROM:<first@elsewhere.test>')).code).toBe(250);
  expect((await first.cmd('RCPT TO:<someone@example.com>')).code).toBe(250);
  return { port: g.port, lines: backend.lines, first, held: () => held };
}

/** Another client, taken over too (its reads go into the shared buffer), sends a whole message. */
async function anotherMessage(port: number): Promise<void> {
  const second = await greeted(port);
  await takenOver(second);
  await intoData(second, 'second@elsewhere.test');
  expect((await second.cmd(`Subject: two\r\n\r\n${'x'.repeat(3000)}\r\n.`)).code).toBe(250);
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe.each(MODES)('client read buffers ($mode)', ({ config }) => {
  test('three large messages at once, backend stalled: every byte arrives as sent', async () => {
    const backend = await startSlowBackend();
    cleanups.push(() => backend.close());
    const g = await startGuard({ backendPort: backend.port, config: { ...config, smtp: { maxMessageBytes: '64MB' } } });
    cleanups.push(() => g.stop());
    const { pinned: pinnedBefore, sockets: socketsBefore } = clientReadStats();

    // One bigger than what the kernel can buffer between guard and backend (send buffer up to
    // net.ipv4.tcp_wmem's 4 MiB, receive buffer up to tcp_rmem's, 32 MiB here): the guard's writes
    // then stay pending while that client keeps sending. Two smaller ones read meanwhile.
    const bodies = [[1, 48], [2, 6], [3, 6]].map(([seed, mib]) => body(seed!, mib! * 1024 * 1024));
    const clients = await Promise.all(bodies.map(() => greeted(g.port)));
    for (const d of clients) await intoData(d, 'a@elsewhere.test');
    clients.forEach((d, i) => d.socket.write(bodies[i]!));
    await until(() => clientReadStats().pinned > pinnedBefore, 20_000, 'a write holding a read buffer');
    backend.resume();
    for (const d of clients) expect((await d.reply(20_000)).code).toBe(250);

    expect(backend.messages.map(sha).sort()).toEqual(bodies.map(sha).sort());
    expect(clientReadStats().sockets).toBe(socketsBefore + 3);
    for (const d of clients) expect((await d.cmd('QUIT')).code).toBe(221);
    await until(() => clientReadStats().privateOut === 0, 5000, 'every private read buffer given back');
  });

  test('with every private buffer taken, a large message streams through the shared one, every byte as sent', async () => {
    // Take them all (the guard runs in this process): the session must forward copies.
    const holders = Array.from({ length: MAX_PRIVATE }, () => new ClientReads());
    for (const h of holders) {
      h.wantPrivate();
      h.next();
    }
    cleanups.push(() => holders.forEach((h) => h.close()));
    expect(clientReadStats().privateOut).toBe(MAX_PRIVATE);
    const backend = await startSlowBackend();
    cleanups.push(() => backend.close());
    const g = await startGuard({ backendPort: backend.port, config: { ...config, smtp: { maxMessageBytes: '64MB' } } });
    cleanups.push(() => g.stop());
    const bodies = [[4, 40], [5, 4]].map(([seed, mib]) => body(seed!, mib! * 1024 * 1024));
    const clients = await Promise.all(bodies.map(() => greeted(g.port)));
    for (const d of clients) await intoData(d, 'a@elsewhere.test');
    clients.forEach((d, i) => d.socket.write(bodies[i]!));
    // Stalled until the first client can no longer send: the guard stopped reading it.
    await until(() => clients[0]!.socket.writableLength > 0, 20_000, 'the first client held back');
    backend.resume();
    for (const d of clients) expect((await d.reply(20_000)).code).toBe(250);
    expect(backend.messages.map(sha).sort()).toEqual(bodies.map(sha).sort());
    expect(clientReadStats().privateOut).toBe(MAX_PRIVATE);
  });

  test('commands pipelined after the end of data survive other clients reading meanwhile', async () => {
    // The end-of-data is answered only once another client has sent a whole message.
    const { port, lines, first, held } = await holdingSecond('.', config);
    expect((await first.cmd('DATA')).code).toBe(354);
    // The end of the message and the next transaction's commands in one write (one read).
    first.send('Subject: one\r\n\r\nfirst body\r\n.\r\nMAIL FROM:<next-sender@elsewhere.test>\r\nRCPT TO:<next-rcpt@example.com>\r\n');
    await until(() => held() !== undefined, 5000, 'the end-of-data at the backend');
    await anotherMessage(port);
    held()!.write('250 2.0.0 queued\r\n');
    for (let i = 0; i < 3; i++) expect((await first.reply()).code).toBe(250);
    expect(lines).toContain('MAIL FROM:<next-sender@elsewhere.test>');
    expect(lines).toContain('RCPT TO:<next-rcpt@example.com>');
  });

  test('a body sent before the 354 waits in the reader, intact, while other clients read', async () => {
    // The 354 comes only once another client has sent a whole message.
    const { port, lines, first, held } = await holdingSecond('DATA', config);
    // DATA and the whole message in one write, without waiting for 354 (a client that does not wait).
    first.send('DATA\r\nSubject: early\r\n\r\nthe early body line\r\n.\r\n');
    await until(() => held() !== undefined, 5000, 'the DATA at the backend');
    await anotherMessage(port);
    held()!.write('354 go\r\n');
    expect((await first.reply()).code).toBe(354);
    expect((await first.reply()).code).toBe(250);
    expect(lines).toContain('Subject: early');
    expect(lines).toContain('the early body line');
  });

  test('a session taken over can still STARTTLS; its next large message goes through over TLS', async () => {
    const cert = await makeCertificate({ commonName: 'guard.test' });
    const dir = mkdtempSync(path.join(tmpdir(), 'rg-reads-tls-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(path.join(dir, 'cert.pem'), cert.cert);
    writeFileSync(path.join(dir, 'key.pem'), cert.key);
    const tlsConf = { certFile: path.join(dir, 'cert.pem'), keyFile: path.join(dir, 'key.pem') };
    const backend = await startRecordingBackend();
    cleanups.push(() => backend.close());
    const g = await startGuard({ backendPort: backend.port, config: { ...config, listeners: [{ name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', starttls: true, tls: tlsConf }] } });
    cleanups.push(() => g.stop());

    const d = await greeted(g.port);
    await takenOver(d);
    expect((await d.cmd('STARTTLS')).code).toBe(220);
    const t = await TlsDialog.upgrade(d.socket);
    cleanups.push(() => t.close());
    expect((await t.cmd('EHLO client.test')).code).toBe(250);
    expect((await t.cmd('MAIL FROM:<after-tls@elsewhere.test>')).code).toBe(250);
    expect((await t.cmd('RCPT TO:<someone@example.com>')).code).toBe(250);
    expect((await t.cmd('DATA')).code).toBe(354);
    const big = body(7, 512 * 1024);
    t.send(big);
    expect((await t.reply(20_000)).code).toBe(250);
    await backend.waitForMessages(2);
    const sent = backend.messages.find((m) => m.mailFrom === 'after-tls@elsewhere.test');
    expect(sent).toBeDefined();
    // smtp-server gives the body un-dot-stuffed, without the terminator.
    const unstuffed = big.subarray(0, big.length - 3).toString('latin1').replace(/^\.\./gm, '.');
    expect(sha(sent!.body)).toBe(sha(Buffer.from(unstuffed, 'latin1')));
  });

  test('behind PROXY protocol: taken over at the first large read, every byte as sent', async () => {
    const backend = await startSlowBackend();
    backend.resume();
    cleanups.push(() => backend.close());
    const g = await startGuard({
      backendPort: backend.port,
      config: { ...config, listeners: [{ name: 'lb', address: '127.0.0.1', port: 0, kind: 'mx', proxyProtocol: 'required', proxyNetworks: ['127.0.0.1/32'] }] },
    });
    cleanups.push(() => g.stop());
    const before = clientReadStats().sockets;
    const d = await Dialog.connect(g.port);
    cleanups.push(() => d.close());
    d.send('PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n');
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO client.test')).code).toBe(250);
    await intoData(d, 'behind-lb@elsewhere.test');
    const big = body(11, 3 * 1024 * 1024);
    d.send(big);
    expect((await d.reply(20_000)).code).toBe(250);
    expect(clientReadStats().sockets).toBe(before + 1);
    expect(backend.messages.map(sha)).toEqual([sha(big)]);
  });
});
