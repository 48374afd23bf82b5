/**
 * Issue 3 acceptance, no mail lost (invariant 3) and the backend's own limits: a backend killed
 * in the middle of DATA, after end-of-data, between commands or after RCPT gives the client 4xx,
 * never 250; an unreachable or mute backend gives 4xx, never a hang; the next backend in the list
 * is tried; the backend connection cap is never exceeded; the backend's own per-source limit
 * (Exchange) is respected; backend connections come from the configured source address; the
 * client's QUIT reaches the backend once at most.
 * All of it twice: one backend connection per client, and pooled mode (the guard greets and
 * answers EHLO itself and lends a pre-opened backend session from MAIL to the reply to
 * end-of-data). Where pooled mode differs it is written out: a lost backend session costs that
 * transaction a 451 and the client goes on; the guard greets while the backend is down or mute and
 * a transaction then gets 451 after acquireTimeout; backend.maxConnections caps the pool, and a
 * client over it waits for a session instead of being refused at connect; the client's QUIT never
 * reaches a pooled session. The invariant is the same in both: never a 2xx after end-of-data the
 * backend did not give, a message delivered at most once, and once the backend is back the next
 * client's message goes through and no client session is left counted.
 */
import net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { MODES, withMode, since } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { until, withTimeout } from '../helpers/with-timeout.js';
import { freePort } from '../helpers/free-port.js';
import { startScriptedBackend, type ScriptedBackend } from '../helpers/scripted-backend.js';

const STRANGER = '127.0.0.9';

type Cfg = Record<string, unknown>;

let backend: RecordingBackend;
const guards: StartedGuard[] = [];
const dialogs: Dialog[] = [];
const servers: Array<{ close(): Promise<void> }> = [];

beforeAll(async () => {
  backend = await startRecordingBackend();
});
afterEach(async () => {
  for (const d of dialogs.splice(0)) d.close();
  for (const g of guards.splice(0)) await g.stop();
  for (const s of servers.splice(0)) await s.close();
});
afterAll(async () => {
  await backend?.close();
});

async function connect(port: number): Promise<Dialog> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  dialogs.push(d);
  return d;
}

async function greeted(port: number): Promise<Dialog> {
  const d = await connect(port);
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}


/** Messages the recording backend received whose body holds `marker`. */
function delivered(marker: string): number {
  return backend.messages.filter((m) => m.body.toString('latin1').includes(marker)).length;
}

/** Every client session is gone: the registry is empty and the gauge back to 0. */
async function noSessionLeft(g: StartedGuard): Promise<void> {
  await until(() => g.guard.services.registry.size === 0, 3000, 'no client session left');
  expect(await g.guard.metrics.register.metrics()).toMatch(/relay_guard_sessions_active\{listener="mx"\} 0\n/);
}

/**
 * After a scenario (the recording backend up): a new client's message is delivered, once, alone
 * and intact, and no client session is left counted (the pool, if any, serves again).
 */
async function healthy(g: StartedGuard, subject: string): Promise<void> {
  const before = backend.messages.length;
  const d = await greeted(g.port);
  await d.sendMessage('next@example.com', subject);
  expect((await d.cmd('QUIT')).code).toBe(221);
  await d.waitClosed();
  await withTimeout(backend.waitForMessages(before + 1), 5000, "the next client's message");
  expect(backend.messages.slice(before).map((m) => m.body.toString('latin1'))).toEqual([`Subject: ${subject}\r\n\r\nok\r\n`]);
  expect(backend.messages[before]!.rcptTo).toEqual(['next@example.com']);
  await noSessionLeft(g);
}

/** Pooled: how many backend sessions the pool replaced because they closed (relay_guard_pool_replacements_total). */
async function replacedClosed(g: StartedGuard): Promise<number> {
  const m = await g.guard.metrics.register.getSingleMetric('relay_guard_pool_replacements_total')!.get();
  return m.values.filter((v) => v.labels.reason === 'closed').reduce((n, v) => n + v.value, 0);
}

/** Pooled: wait (bounded) until the pool has seen `n` more of its sessions closed than `before`. */
async function poolNoticed(g: StartedGuard, before: number, n: number): Promise<void> {
  const deadline = Date.now() + 5000;
  while ((await replacedClosed(g)) < before + n) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for the pool to notice ${n} closed sessions`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * A TCP relay on a fixed port that either refuses (nothing listens: the backend is down) or
 * forwards to the recording backend (the backend came back).
 */
async function comesBack(port: number): Promise<void> {
  const sockets = new Set<net.Socket>();
  const relay = net.createServer((c) => {
    const up = net.connect(backend.port, '127.0.0.1');
    for (const s of [c, up]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        sockets.delete(s);
        c.destroy();
        up.destroy();
      });
    }
    c.pipe(up);
    up.pipe(c);
  });
  await new Promise<void>((resolve, reject) => {
    relay.once('error', reject);
    relay.listen(port, '127.0.0.1', () => resolve());
  });
  servers.push({
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => relay.close(() => r()));
    },
  });
}

/** A scripted backend closed after the test. */
async function scripted(opts: Parameters<typeof startScriptedBackend>[0] = {}): Promise<ScriptedBackend> {
  const b = await startScriptedBackend(opts);
  servers.push(b);
  return b;
}

for (const { mode, config: modeConfig } of MODES) describe(`${mode} mode`, () => {
  const pooled = mode === 'pooled';

  async function guard(config: Cfg = {}, backendPort = backend.port): Promise<StartedGuard> {
    const g = await startGuard({ backendPort, config: withMode(withMode(modeConfig, { timeouts: { command: '5m', data: '3m', session: '30m', drain: '500ms' } }), config) });
    guards.push(g);
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(pooled);
    return g;
  }

  /** Pooled: both warm sessions are open and idle (so a kill now hits the ones a client will use). */
  async function warm(g: StartedGuard): Promise<void> {
    if (pooled) await until(() => g.guard.services.pool!.idleCount >= 2, 5000, 'warm pool');
  }

  describe('no mail lost', () => {
    test('backend killed in the middle of DATA: the client gets 4xx, never 250; nothing delivered', async () => {
      const g = await guard();
      await warm(g);
      const marker = `killed-mid-data ${mode}`;
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      d.send(`Subject: ${marker}\r\n\r\nfirst half ${mode}\r\n`);
      await until(() => backend.lines().includes(`first half ${mode}`), 3000, 'body reached the backend');
      const open = pooled ? g.guard.services.pool!.live : 0;
      const replacedBefore = pooled ? await replacedClosed(g) : 0;
      backend.killConnections();
      d.send('second half\r\n.\r\n');
      if (pooled) {
        // Only that transaction is lost: 451, and the client goes on with another backend session.
        const r = await d.reply();
        expect(r.code).toBe(451);
        expect(r.text).toContain('4.3.0');
        await poolNoticed(g, replacedBefore, open);
        await d.sendMessage('user@example.com', `after the kill ${mode}`);
        await until(() => delivered(`after the kill ${mode}`) === 1, 5000, 'the retried message');
        expect((await d.cmd('QUIT')).code).toBe(221);
      } else {
        const r = await d.repliesUntilClose(10);
        expect(r.length).toBeGreaterThanOrEqual(1);
        expect(r[0]!.code === 451 || r[0]!.code === 421, JSON.stringify(r)).toBe(true);
        expect(r.some((x) => x.code >= 200 && x.code < 300)).toBe(false);
      }
      await d.waitClosed();
      expect(delivered(marker)).toBe(0);
      await healthy(g, `after mid-data kill ${mode}`);
      expect(delivered(`after the kill ${mode}`)).toBe(pooled ? 1 : 0);
    });

    test('backend killed after end-of-data, before its reply: 4xx, never 250; the next message goes through', async () => {
      // The backend dies on the first end-of-data it gets, then (restarted) answers normally.
      let killed = false;
      const b = await scripted({
        onLine: (line, sock) => {
          if (line !== '.' || killed) return undefined;
          killed = true;
          sock.destroy();
          return null;
        },
      });
      const g = await guard({}, b.port);
      await warm(g);
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      d.send(`Subject: lost reply ${mode}\r\n\r\ny\r\n.\r\n`);
      if (pooled) {
        const r = await d.reply();
        expect(r.code).toBe(451);
        expect(r.text).toContain('4.3.0');
        // The same client retries on another backend session: one more end-of-data, answered 250.
        await d.sendMessage('user@example.com', `retry ${mode}`);
        expect((await d.cmd('QUIT')).code).toBe(221);
      } else {
        const r = await d.repliesUntilClose(10);
        expect(r.length).toBeGreaterThanOrEqual(1);
        expect(r[0]!.code).toBeGreaterThanOrEqual(400);
        expect(r[0]!.code).toBeLessThan(500);
        expect(r.some((x) => x.code < 300)).toBe(false);
      }
      await d.waitClosed();
      expect(killed).toBe(true);
      // The next client is served.
      const e = await greeted(g.port);
      await e.sendMessage('next@example.com', `next ${mode}`);
      expect((await e.cmd('QUIT')).code).toBe(221);
      await e.waitClosed();
      // Each end-of-data went to the backend once: no message was sent twice by the guard.
      expect(b.lines.filter((l) => l === '.')).toHaveLength(pooled ? 3 : 2);
      expect(b.lines.filter((l) => l === `Subject: lost reply ${mode}`)).toHaveLength(1);
      await noSessionLeft(g);
    });

    test('backend gone between commands (no transaction)', async () => {
      const g = await guard();
      await warm(g);
      const d = await greeted(g.port);
      const open = pooled ? g.guard.services.pool!.live : 0;
      const replacedBefore = pooled ? await replacedClosed(g) : 0;
      backend.killConnections();
      if (pooled) {
        // The client holds no backend session between transactions: it is told nothing, and its
        // next message goes out on a new one.
        await poolNoticed(g, replacedBefore, open);
        expect((await d.cmd('NOOP')).code).toBe(250);
        await d.sendMessage('user@example.com', `between commands ${mode}`);
        await until(() => delivered(`between commands ${mode}`) === 1, 5000, 'the message');
        expect((await d.cmd('QUIT')).code).toBe(221);
      } else {
        // Per client: 421 at once, and close.
        const r = await d.reply(3000);
        expect(r.code).toBe(421);
        expect(r.text).toContain('4.3.0');
      }
      await d.waitClosed();
      await healthy(g, `after kill between commands ${mode}`);
    });

    test('backend gone after RCPT: 4xx for the transaction, never 250 for DATA', async () => {
      const g = await guard();
      const seen = since(backend);
      const marker = `gone after RCPT ${mode}`;
      if (pooled) await warm(g);
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      const open = pooled ? g.guard.services.pool!.live : 0;
      const replacedBefore = pooled ? await replacedClosed(g) : 0;
      backend.killConnections();
      if (pooled) {
        // The transaction is lost, not the session: RCPT and DATA get 451 (never a 5xx, which
        // would make a client bounce the message), then the same client sends it again.
        await poolNoticed(g, replacedBefore, open);
        const rcpt = await d.cmd('RCPT TO:<other@example.com>');
        expect(rcpt.code).toBe(451);
        expect(rcpt.text).toContain('4.3.0');
        const data = await d.cmd('DATA');
        expect(data.code).toBe(451);
        expect(data.text).toContain('4.3.0');
        await d.sendMessage('user@example.com', marker);
        await until(() => delivered(marker) === 1, 5000, 'the message sent again');
        expect((await d.cmd('QUIT')).code).toBe(221);
        await d.waitClosed();
      } else {
        d.send(`DATA\r\nSubject: ${marker}\r\n\r\ny\r\n.\r\n`);
        const r = await d.repliesUntilClose(10);
        expect(r.length).toBeGreaterThanOrEqual(1);
        expect(r[0]!.code).toBeGreaterThanOrEqual(400);
        expect(r[0]!.code).toBeLessThan(500);
        expect(r.some((x) => x.code < 400)).toBe(false);
        await d.waitClosed();
        expect(seen()).not.toContain('DATA');
        expect(delivered(marker)).toBe(0);
      }
      await healthy(g, `after RCPT kill next ${mode}`);
    });

    test('backend unreachable, then back', async () => {
      const down = await freePort();
      const g = await guard({ backend: { connectTimeout: '1s', pool: { acquireTimeout: '500ms' } } }, down);
      const d = await connect(g.port);
      if (pooled) {
        // The guard greets and answers EHLO itself; a transaction finds no backend session: 451, not a hang, not 2xx.
        expect((await d.reply()).code).toBe(220);
        expect((await d.cmd('EHLO client.test')).code).toBe(250);
        const r = await d.cmd('MAIL FROM:<s@elsewhere.test>');
        expect(r.code).toBe(451);
        expect(r.text).toContain('4.3.0');
        expect((await d.cmd('QUIT')).code).toBe(221);
      } else {
        const r = await d.reply();
        expect(r.code).toBe(421);
        expect(r.text).toContain('4.3.0');
      }
      await d.waitClosed();
      await noSessionLeft(g);
      await comesBack(down);
      await healthy(g, `backend back ${mode}`);
    });

    test('first backend down, second up: the second one takes the mail', async () => {
      const down = await freePort();
      const g = await guard({ backends: [{ host: '127.0.0.1', port: down }, { host: '127.0.0.1', port: backend.port }] });
      const before = backend.messages.length;
      const d = await greeted(g.port);
      expect((await d.cmd('MAIL FROM:<s@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<failover@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd(`Subject: failover ${mode}\r\n\r\nx\r\n.`)).code).toBe(250);
      await withTimeout(backend.waitForMessages(before + 1), 5000, 'message');
      expect(backend.messages[before]!.rcptTo).toEqual(['failover@example.com']);
      expect(delivered(`failover ${mode}`)).toBe(1);
      expect((await d.cmd('QUIT')).code).toBe(221);
      await d.waitClosed();
      await healthy(g, `failover next ${mode}`);
    });
  });

  describe('the end of a session', () => {
    /**
     * A backend that answers QUIT without closing, so a second QUIT would be seen; counts QUITs and
     * notes the end of each connection (the guard's EHLO or greeting-time line makes it known).
     */
    async function quietBackend() {
      const conns = new Map<net.Socket, { quits: number; ended: boolean }>();
      const b = await scripted({
        onLine: (line, socket) => {
          let c = conns.get(socket);
          if (!c) {
            const entry = { quits: 0, ended: false };
            conns.set(socket, entry);
            socket.once('end', () => (entry.ended = true));
            socket.once('close', () => (entry.ended = true));
            c = entry;
          }
          if (line !== 'QUIT') return undefined;
          c.quits++;
          return '221 bye\r\n';
        },
      });
      return { b, conns: () => [...conns.values()] };
    }

    /** Pooled: stop the guard; each pooled backend session then gets exactly one QUIT and is closed. */
    async function stopAndCount(g: StartedGuard, conns: () => Array<{ quits: number; ended: boolean }>): Promise<void> {
      guards.splice(guards.indexOf(g), 1);
      await g.stop();
      await until(() => conns().every((c) => c.ended), 3000, 'every pooled backend session closed');
      expect(conns().map((c) => c.quits)).toEqual(conns().map(() => 1));
    }

    test("the client's QUIT reaches the backend once at most: no second QUIT after the backend's 221", async () => {
      const { b, conns } = await quietBackend();
      const g = await guard({}, b.port);
      await warm(g);
      const d = await greeted(g.port);
      if (pooled) {
        // A pooled session is the pool's: the guard answers the client's QUIT itself (after a
        // message, so a session was lent and given back), the backend sees no QUIT and stays open.
        await d.sendMessage('user@example.com', `quit ${mode}`);
        const bye = await d.cmd('QUIT');
        expect(bye.code).toBe(221);
        expect(bye.text).toContain('2.0.0');
        await d.waitClosed();
        await noSessionLeft(g);
        expect(b.lines.filter((l) => l === 'QUIT')).toHaveLength(0);
        expect(conns().some((c) => c.ended)).toBe(false);
        expect(b.lines.filter((l) => l === '.')).toHaveLength(1);
        await stopAndCount(g, conns);
      } else {
        expect((await d.cmd('QUIT')).code).toBe(221);
        await d.waitClosed();
        await until(() => conns().length === 1 && conns()[0]!.ended, 3000, 'the guard closed its backend connection');
        expect(b.lines.filter((l) => l === 'QUIT')).toHaveLength(1);
        await noSessionLeft(g);
      }
    });

    test('a client that leaves without QUIT: the backend gets one QUIT at most', async () => {
      const { b, conns } = await quietBackend();
      const g = await guard({}, b.port);
      await warm(g);
      const d = await greeted(g.port);
      d.close();
      await noSessionLeft(g);
      if (pooled) {
        // Nothing is said to the pooled sessions for that client; they stay open for the next one.
        expect(b.lines.filter((l) => l === 'QUIT')).toHaveLength(0);
        expect(conns().some((c) => c.ended)).toBe(false);
        await stopAndCount(g, conns);
      } else {
        // Per client: the guard says QUIT to the backend itself, once.
        await until(() => conns().length === 1 && conns()[0]!.ended, 3000, 'the guard closed its backend connection');
        expect(b.lines.filter((l) => l === 'QUIT')).toHaveLength(1);
      }
    });
  });

  describe("the backend's own limits", () => {
    if (pooled) {
      test('backend.maxConnections: 2 caps the pool (pool.max 4): a third concurrent transaction waits for a session, the backend never sees a third connection', async () => {
        const connsBefore = backend.connections.length;
        const g = await guard({ backend: { maxConnections: 2 } });
        await warm(g);
        const a = await greeted(g.port);
        const b = await greeted(g.port);
        const c = await greeted(g.port);
        expect((await a.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
        expect((await b.cmd('MAIL FROM:<b@elsewhere.test>')).code).toBe(250);
        // c is greeted (the guard greets) but its MAIL waits: both sessions are lent.
        c.send('MAIL FROM:<c@elsewhere.test>\r\n');
        await until(() => g.guard.services.pool!.waiting === 1, 3000, 'c waits for a backend session');
        expect(backend.connections.length - connsBefore).toBe(2);
        // A session given back is lent to c.
        expect((await a.cmd('RCPT TO:<a@example.com>')).code).toBe(250);
        expect((await a.cmd('DATA')).code).toBe(354);
        expect((await a.cmd(`Subject: cap a ${mode}\r\n\r\nok\r\n.`)).code).toBe(250);
        expect((await c.reply()).code).toBe(250);
        expect((await c.cmd('RCPT TO:<c@example.com>')).code).toBe(250);
        expect((await c.cmd('DATA')).code).toBe(354);
        expect((await c.cmd(`Subject: cap c ${mode}\r\n\r\nok\r\n.`)).code).toBe(250);
        for (const x of [a, b, c]) {
          expect((await x.cmd('QUIT')).code).toBe(221);
          await x.waitClosed();
        }
        await until(() => delivered(`cap c ${mode}`) === 1 && delivered(`cap a ${mode}`) === 1, 5000, 'both messages');
        await healthy(g, `cap next ${mode}`);
        expect(backend.connections.length - connsBefore).toBe(2);
      });

      test('backend.maxConnections: 2, all lent, acquireTimeout passed: 451 4.3.0 to that transaction only', async () => {
        const g = await guard({ backend: { maxConnections: 2, pool: { acquireTimeout: '300ms' } } });
        await warm(g);
        const a = await greeted(g.port);
        const b = await greeted(g.port);
        const c = await greeted(g.port);
        expect((await a.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
        expect((await b.cmd('MAIL FROM:<b@elsewhere.test>')).code).toBe(250);
        const r = await c.cmd('MAIL FROM:<c@elsewhere.test>', 5000);
        expect(r.code).toBe(451);
        expect(r.text).toContain('4.3.0');
        // Once a session is free again, c's next try goes through.
        expect((await a.cmd('RSET')).code).toBe(250);
        await c.sendMessage('c@example.com', `after wait timeout ${mode}`);
        for (const x of [a, b, c]) {
          expect((await x.cmd('QUIT')).code).toBe(221);
          await x.waitClosed();
        }
        await until(() => delivered(`after wait timeout ${mode}`) === 1, 5000, 'the message');
        await healthy(g, `wait timeout next ${mode}`);
      });
    } else {
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
        for (const x of [b, e]) {
          expect((await x.cmd('QUIT')).code).toBe(221);
          await x.waitClosed();
        }
        await healthy(g, `cap next ${mode}`);
      });
    }

    test("the backend's own limit at connect (Exchange's per-source limit, 1 here)", async () => {
      const limited = await scripted({ maxConnections: 1 });
      const g = await guard({}, limited.port);
      if (pooled) {
        // The pool keeps the one session the backend allows; its 421 to a further connection never
        // reaches a client: both clients are greeted, and the second transaction waits for the session.
        await until(() => g.guard.services.pool!.idleCount === 1, 3000, 'the one pooled session');
        const a = await greeted(g.port);
        const b = await greeted(g.port);
        expect((await a.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
        b.send('MAIL FROM:<b@elsewhere.test>\r\n');
        await until(() => g.guard.services.pool!.waiting === 1, 3000, 'b waits for the session');
        expect((await a.cmd('RCPT TO:<a@example.com>')).code).toBe(250);
        expect((await a.cmd('DATA')).code).toBe(354);
        expect((await a.cmd(`Subject: limit a ${mode}\r\n\r\nok\r\n.`)).code).toBe(250);
        expect((await b.reply()).code).toBe(250);
        expect((await b.cmd('RCPT TO:<b@example.com>')).code).toBe(250);
        expect((await b.cmd('DATA')).code).toBe(354);
        expect((await b.cmd(`Subject: limit b ${mode}\r\n\r\nok\r\n.`)).code).toBe(250);
        for (const x of [a, b]) {
          expect((await x.cmd('QUIT')).code).toBe(221);
          await x.waitClosed();
        }
        expect(limited.remotes).toHaveLength(1);
        expect(limited.lines.filter((l) => l === '.')).toHaveLength(2);
      } else {
        // Per client: the backend's 421 is relayed to the second client and its session closed.
        const a = await connect(g.port);
        expect((await a.reply()).code).toBe(220);
        const b = await connect(g.port);
        const r = await b.reply();
        expect(r.code).toBe(421);
        expect(r.text).toContain('Too many connections from your host');
        await b.waitClosed();
        // The first session is unaffected.
        expect((await a.cmd('EHLO client.test')).code).toBe(250);
        await a.sendMessage('a@example.com', `limit a ${mode}`);
        expect((await a.cmd('QUIT')).code).toBe(221);
        await a.waitClosed();
        expect(limited.lines.filter((l) => l === '.')).toHaveLength(1);
      }
      await noSessionLeft(g);
    });

    test('a backend that accepts TCP but never greets: 4xx after the greeting timeout, never a hang; served once it greets', async () => {
      // Mute until `speak`: then each new connection is relayed to the recording backend.
      let speak = false;
      const sockets = new Set<net.Socket>();
      const mute = net.createServer((s) => {
        sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => sockets.delete(s));
        if (!speak) return;
        const up = net.connect(backend.port, '127.0.0.1');
        up.on('error', () => undefined);
        up.on('close', () => s.destroy());
        s.on('close', () => up.destroy());
        s.pipe(up);
        up.pipe(s);
      });
      await new Promise<void>((r) => mute.listen(0, '127.0.0.1', () => r()));
      servers.push({
        close: async () => {
          for (const s of sockets) s.destroy();
          await new Promise<void>((r) => mute.close(() => r()));
        },
      });
      const g = await guard({ backend: { greetingTimeout: '300ms', pool: { acquireTimeout: '1s' } } }, (mute.address() as net.AddressInfo).port);
      const d = await connect(g.port);
      if (pooled) {
        // The guard greets; the transaction finds no greeted backend session: 451 4.3.0, the client stays.
        expect((await d.reply()).code).toBe(220);
        expect((await d.cmd('EHLO client.test')).code).toBe(250);
        const r = await d.cmd('MAIL FROM:<s@elsewhere.test>', 5000);
        expect(r.code).toBe(451);
        expect(r.text).toContain('4.3.0');
        expect((await d.cmd('QUIT')).code).toBe(221);
      } else {
        const r = await d.reply(3000);
        expect(r.code).toBe(421);
        expect(r.text).toContain('4.3.0');
      }
      await d.waitClosed();
      // The guard gave up on every mute connection (none left open behind the timeout).
      await until(() => sockets.size === 0, 3000, 'mute connections closed by the guard');
      await noSessionLeft(g);
      speak = true;
      await healthy(g, `mute backend greets ${mode}`);
    });

    test('backend.sourceAddress: the backend sees connections from 127.0.0.5 only', async () => {
      const peer = await scripted();
      const g = await guard({ backend: { sourceAddress: '127.0.0.5' } }, peer.port);
      await warm(g);
      const d = await greeted(g.port);
      await d.sendMessage('user@example.com', `source address ${mode}`);
      expect((await d.cmd('QUIT')).code).toBe(221);
      await d.waitClosed();
      // Per client: the client's own connection; pooled: the warm sessions.
      expect(peer.remotes.length).toBeGreaterThanOrEqual(pooled ? 2 : 1);
      if (!pooled) expect(peer.remotes).toHaveLength(1);
      expect(new Set(peer.remotes)).toEqual(new Set(['127.0.0.5']));
      expect(peer.lines).toContain(`Subject: source address ${mode}`);
      await noSessionLeft(g);
    });
  });
});
