/**
 * Issue 3 acceptance, no mail lost (invariant 3) and the backend's own limits: a backend killed
 * in the middle of DATA gives the client 4xx, never 250; an unreachable backend gives 421 4.3.0;
 * the next backend in the list is tried; the backend connection cap answers 421 4.7.0 before the
 * backend is touched; backend connections come from the configured source address.
 */
import net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { until, withTimeout } from '../helpers/with-timeout.js';
import { freePort } from '../helpers/free-port.js';
import { startScriptedBackend } from '../helpers/scripted-backend.js';

const STRANGER = '127.0.0.9';

let backend: RecordingBackend;
const guards: StartedGuard[] = [];
const dialogs: Dialog[] = [];

beforeAll(async () => {
  backend = await startRecordingBackend();
});
afterEach(async () => {
  for (const d of dialogs.splice(0)) d.close();
  for (const g of guards.splice(0)) await g.stop();
});
afterAll(async () => {
  await backend?.close();
});

async function guard(config: Record<string, unknown> = {}, backendPort = backend.port): Promise<StartedGuard> {
  const g = await startGuard({ backendPort, config: { timeouts: { command: '5m', data: '3m', session: '30m', drain: '500ms' }, ...config } });
  guards.push(g);
  return g;
}

async function connect(port: number): Promise<Dialog> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  dialogs.push(d);
  return d;
}

describe('no mail lost', () => {
  test('backend killed in the middle of DATA: the client gets 4xx, never 250', async () => {
    const g = await guard();
    const before = backend.messages.length;
    const d = await connect(g.port);
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO client.test')).code).toBe(250);
    expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    d.send('Subject: killed\r\n\r\nfirst half\r\n');
    await until(() => backend.lines().includes('first half'), 3000, 'body reached the backend');
    backend.killConnections();
    d.send('second half\r\n.\r\n');
    const r = await d.repliesUntilClose(10);
    expect(r.length).toBeGreaterThanOrEqual(1);
    expect(r[0]!.code === 451 || r[0]!.code === 421, JSON.stringify(r)).toBe(true);
    expect(r.some((x) => x.code >= 200 && x.code < 300)).toBe(false);
    expect(backend.messages.length).toBe(before);
  });

  test('backend killed after end-of-data, before its reply: 4xx, never 250', async () => {
    const silent = await startScriptedBackend({ onLine: (line, sock) => (line === '.' ? (sock.destroy(), null) : undefined) });
    try {
      const g = await guard({}, silent.port);
      const d = await connect(g.port);
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('EHLO client.test')).code).toBe(250);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      d.send('Subject: x\r\n\r\ny\r\n.\r\n');
      const r = await d.repliesUntilClose(10);
      expect(r[0]!.code).toBeGreaterThanOrEqual(400);
      expect(r[0]!.code).toBeLessThan(500);
      expect(r.some((x) => x.code < 300)).toBe(false);
    } finally {
      await silent.close();
    }
  });

  test('backend gone between commands (no transaction): the client gets 421 at once and is closed', async () => {
    const g = await guard();
    const d = await connect(g.port);
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO client.test')).code).toBe(250);
    backend.killConnections();
    const r = await d.reply(3000);
    expect(r.code).toBe(421);
    await d.waitClosed();
  });

  test('backend gone after RCPT: 4xx for the transaction, never 250 for DATA', async () => {
    const g = await guard();
    const before = backend.messages.length;
    const d = await connect(g.port);
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO client.test')).code).toBe(250);
    expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
    backend.killConnections();
    d.send('DATA\r\nSubject: x\r\n\r\ny\r\n.\r\n');
    const r = await d.repliesUntilClose(10);
    expect(r.length).toBeGreaterThanOrEqual(1);
    expect(r[0]!.code).toBeGreaterThanOrEqual(400);
    expect(r[0]!.code).toBeLessThan(500);
    expect(r.some((x) => x.code < 400)).toBe(false);
    expect(backend.messages.length).toBe(before);
  });

  test('backend unreachable at connect: 421 4.3.0 and close', async () => {
    const g = await guard({}, await freePort());
    const d = await connect(g.port);
    const r = await d.reply();
    expect(r.code).toBe(421);
    expect(r.text).toContain('4.3.0');
    await d.waitClosed();
  });

  test('first backend down, second up: the second one takes the mail', async () => {
    const down = await freePort();
    const g = await guard({ backends: [{ host: '127.0.0.1', port: down }, { host: '127.0.0.1', port: backend.port }] });
    const before = backend.messages.length;
    const d = await connect(g.port);
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO client.test')).code).toBe(250);
    expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<failover@example.com>')).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    expect((await d.cmd('Subject: failover\r\n\r\nx\r\n.')).code).toBe(250);
    await withTimeout(backend.waitForMessages(before + 1), 5000, 'message');
    expect(backend.messages[before]!.rcptTo).toEqual(['failover@example.com']);
  });
});

describe('the end of a session', () => {
  /** A backend that answers QUIT without closing, so a second QUIT would be seen; resolves `ended` when the guard closes. */
  async function quietBackend() {
    let ended!: () => void;
    const done = new Promise<void>((r) => (ended = r));
    let watched = false;
    const b = await startScriptedBackend({
      onLine: (line, socket) => {
        if (!watched) {
          watched = true;
          socket.once('end', () => ended());
        }
        return line === 'QUIT' ? '221 bye\r\n' : undefined;
      },
    });
    return { b, ended: done };
  }

  test("the client's QUIT reaches the backend once: no second QUIT after the backend's 221", async () => {
    const { b, ended } = await quietBackend();
    try {
      const g = await guard({}, b.port);
      const d = await connect(g.port);
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('EHLO client.test')).code).toBe(250);
      expect((await d.cmd('QUIT')).code).toBe(221);
      await d.waitClosed();
      await withTimeout(ended, 3000, 'the guard closed its backend connection');
      expect(b.lines.filter((l) => l === 'QUIT')).toHaveLength(1);
    } finally {
      await b.close();
    }
  });

  test('a client that leaves without QUIT: the guard says QUIT to the backend itself, once', async () => {
    const { b, ended } = await quietBackend();
    try {
      const g = await guard({}, b.port);
      const d = await connect(g.port);
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('EHLO client.test')).code).toBe(250);
      d.close();
      await withTimeout(ended, 3000, 'the guard closed its backend connection');
      expect(b.lines.filter((l) => l === 'QUIT')).toHaveLength(1);
    } finally {
      await b.close();
    }
  });
});

describe("the backend's own limits", () => {
  test('backend.maxConnections: 2 → the third concurrent client gets 421 4.7.0 before the backend sees it', async () => {
    const g = await guard({ backend: { maxConnections: 2 } });
    const connsBefore = backend.connections.length;
    const a = await connect(g.port);
    expect((await a.reply()).code).toBe(220);
    const b = await connect(g.port);
    expect((await b.reply()).code).toBe(220);
    const c = await connect(g.port);
    const r = await c.reply();
    expect(r.code).toBe(421);
    expect(r.text).toContain('4.7.0');
    await c.waitClosed();
    expect(backend.connections.length - connsBefore).toBe(2);
    // A slot freed is a slot usable again.
    expect((await a.cmd('QUIT')).code).toBe(221);
    await a.waitClosed();
    await until(() => g.guard.services.registry.all().length === 1, 3000, 'first session gone');
    const e = await connect(g.port);
    expect((await e.reply()).code).toBe(220);
    expect(backend.connections.length - connsBefore).toBe(3);
  });

  test("the backend's own refusal at connect (Exchange's per-source limit) is relayed and the session closed", async () => {
    const limited = await startScriptedBackend({ maxConnections: 1 });
    try {
      const g = await guard({}, limited.port);
      const a = await connect(g.port);
      expect((await a.reply()).code).toBe(220);
      const b = await connect(g.port);
      const r = await b.reply();
      expect(r.code).toBe(421);
      expect(r.text).toContain('Too many connections from your host');
      await b.waitClosed();
      // The first session is unaffected.
      expect((await a.cmd('EHLO client.test')).code).toBe(250);
      expect((await a.cmd('QUIT')).code).toBe(221);
    } finally {
      await limited.close();
    }
  });

  test('a backend that accepts TCP but never greets: 421 4.3.0 after the greeting timeout', async () => {
    const mute = net.createServer((s) => s.on('error', () => undefined));
    await new Promise<void>((r) => mute.listen(0, '127.0.0.1', () => r()));
    try {
      const g = await guard({ backend: { greetingTimeout: '300ms' } }, (mute.address() as net.AddressInfo).port);
      const d = await connect(g.port);
      const r = await d.reply(3000);
      expect(r.code).toBe(421);
      expect(r.text).toContain('4.3.0');
      await d.waitClosed();
    } finally {
      mute.close();
    }
  });

  test('backend.sourceAddress: the backend sees connections from 127.0.0.5', async () => {
    const peer = await startScriptedBackend();
    try {
      const g = await guard({ backend: { sourceAddress: '127.0.0.5' } }, peer.port);
      const d = await connect(g.port);
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('QUIT')).code).toBe(221);
      expect(peer.remotes).toEqual(['127.0.0.5']);
    } finally {
      await peer.close();
    }
  });
});
