/**
 * Issue 10: pooled mode. Many clients share a few pre-greeted backend sessions, one transaction at
 * a time; the backend's per-source limit is never exceeded; a backend session lost while idle is
 * replaced silently, one lost mid-transaction costs only that client a 451.
 */
import { afterEach, describe, expect, onTestFinished, test } from 'vitest';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { startScriptedBackend } from '../helpers/scripted-backend.js';
import { until, withTimeout } from '../helpers/with-timeout.js';

let backend: RecordingBackend | undefined;
let g: StartedGuard | undefined;

afterEach(async () => {
  await g?.stop();
  await backend?.close();
  g = undefined;
  backend = undefined;
});

const POOL = (max: number, extra: Record<string, unknown> = {}) => ({
  backend: { maxConnections: 20, pool: { enabled: true, minIdle: 2, max, acquireTimeout: '10s', healthInterval: '30s', ...extra } },
});

async function sendOne(port: number, i: number): Promise<string> {
  const conn = new SMTPConnection({ port, host: '127.0.0.1', ignoreTLS: true, name: `client${i}.test` });
  await withTimeout(new Promise<void>((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => resolve());
  }), 10_000, 'connect');
  try {
    const info = await withTimeout(
      new Promise<{ response: string }>((resolve, reject) =>
        conn.send({ from: `s${i}@elsewhere.test`, to: [`user${i}@example.com`] }, `Subject: m${i}\r\n\r\nbody ${i}\r\n`, (err, inf) => (err ? reject(err) : resolve(inf as never))),
      ),
      20_000,
      `message ${i}`,
    );
    return info.response;
  } finally {
    conn.quit();
  }
}

describe('pooled mode', () => {
  test('50 concurrent clients through a pool of 5: every message delivered, never a 6th backend connection', async () => {
    backend = await startRecordingBackend({ maxConnections: 5 });
    g = await startGuard({ backendPort: backend.port, config: POOL(5) });
    const responses = await Promise.all(Array.from({ length: 50 }, (_, i) => sendOne(g!.port, i)));
    expect(responses.every((r) => r.startsWith('250'))).toBe(true);
    await backend.waitForMessages(50);
    expect(backend.messages).toHaveLength(50);
    expect(backend.maxConcurrent()).toBeLessThanOrEqual(5);
    // Each message carried exactly its own recipient: no two transactions shared a backend session.
    for (const m of backend.messages) {
      const i = /body (\d+)/.exec(m.body.toString())![1];
      expect(m.rcptTo).toEqual([`user${i}@example.com`]);
      expect(m.mailFrom).toBe(`s${i}@elsewhere.test`);
    }
    // The size gauges are read at collection: every session is idle again, none busy, never above 5.
    const text = await g.guard.metrics.register.metrics();
    const gauge = (state: string) => Number(new RegExp(`relay_guard_pool_sessions\\{[^}]*state="${state}"[^}]*\\} (\\d+)`).exec(text)?.[1]);
    expect(gauge('busy')).toBe(0);
    expect(gauge('idle')).toBeGreaterThanOrEqual(2);
    expect(gauge('idle')).toBeLessThanOrEqual(5);
  });

  test('/readyz in pooled mode opens no connection beyond the pool (the backend refuses a 3rd)', async () => {
    backend = await startRecordingBackend({ maxConnections: 2 });
    g = await startGuard({ backendPort: backend.port, config: { ...POOL(2), admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false } } });
    await until(() => backend!.maxConcurrent() >= 2, 5_000, 'pool warm');
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`http://127.0.0.1:${g.guard.adminAddress()!.port}/readyz`, { signal: AbortSignal.timeout(10_000) });
      expect(res.status).toBe(200);
    }
    expect(backend.maxConcurrent()).toBeLessThanOrEqual(2);
  });

  test('the guard greets and answers EHLO itself; relay policy still applies', async () => {
    backend = await startRecordingBackend();
    g = await startGuard({ backendPort: backend.port, config: POOL(3) });
    await until(() => backend!.openConnections() >= 2, 5000, 'warm pool');
    const d = await Dialog.connect(g.port, { localAddress: '127.0.0.9' });
    expect((await d.reply()).code).toBe(220);
    const ehlo = await d.cmd('EHLO client.test');
    expect(ehlo.code).toBe(250);
    expect(ehlo.text).toContain('PIPELINING');
    expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<victim@elsewhere.test>')).code).toBe(550);
    expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
    expect((await d.cmd('RSET')).code).toBe(250);
    expect((await d.cmd('QUIT')).code).toBe(221);
    // No backend connection of its own for this client: it borrowed a warm one (the pool stays within max).
    expect(backend.connections.length).toBeLessThanOrEqual(3);
    expect(backend.lines()).not.toContain('RCPT TO:<victim@elsewhere.test>');
    expect(backend.lines()).not.toContain('EHLO client.test');
  });

  test('an idle backend session killed is replaced silently', async () => {
    backend = await startRecordingBackend();
    g = await startGuard({ backendPort: backend.port, config: POOL(3) });
    await until(() => backend!.openConnections() >= 2, 5000, 'warm pool');
    backend.killConnections();
    await until(() => backend!.openConnections() >= 2, 5000, 'pool refilled');
    expect((await sendOne(g.port, 1)).startsWith('250')).toBe(true);
    const rep = await g.guard.metrics.register.getSingleMetric('relay_guard_pool_replacements_total')!.get();
    expect(rep.values.find((v) => v.labels.reason === 'closed')?.value ?? 0).toBeGreaterThanOrEqual(1);
  });

  test('a backend session killed mid-transaction: 451 to that client only, and the pool recovers', async () => {
    backend = await startRecordingBackend();
    g = await startGuard({ backendPort: backend.port, config: POOL(3, { minIdle: 1 }) });
    await until(() => backend!.openConnections() >= 1, 5000, 'warm pool');
    const d = await Dialog.connect(g.port);
    await d.reply();
    await d.cmd('EHLO client.test');
    expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    d.send('Subject: lost\r\n\r\nfirst part\r\n');
    await until(() => backend!.lines().includes('first part'), 5000, 'body reaches the backend');
    backend.killConnections();
    d.send('second part\r\n.\r\n');
    const r = await d.reply();
    expect(r.code).toBe(451);
    // The same client goes on with another backend session.
    expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    d.send('Subject: retry\r\n\r\nretried\r\n.\r\n');
    expect((await d.reply()).code).toBe(250);
    await d.cmd('QUIT');
    await backend.waitForMessages(1);
    expect(backend.messages.map((m) => m.body.toString())).toEqual([expect.stringContaining('retried')]);
    // Other clients are unaffected.
    expect((await sendOne(g.port, 2)).startsWith('250')).toBe(true);
  });

  test('a silent client in mid-transaction gives its backend session up after stressTimeout when others wait; not when nobody waits', async () => {
    backend = await startRecordingBackend();
    g = await startGuard({ backendPort: backend.port, config: POOL(1, { minIdle: 1, acquireTimeout: '20s', stressTimeout: '300ms' }) });
    const a = await Dialog.connect(g.port);
    await a.reply();
    await a.cmd('EHLO a.test');
    expect((await a.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
    expect((await a.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
    // Nobody waits: silence longer than stressTimeout is fine (the full command timeout applies).
    const quiet = new Promise<void>((resolve) => setTimeout(resolve, 900));
    await quiet;
    expect((await a.cmd('RSET')).code).toBe(250);
    expect((await a.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
    expect((await a.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
    expect((await a.cmd('DATA')).code).toBe(354);
    a.send('Subject: half\r\n\r\nnever finished\r\n'); // then silence, holding the only session
    await until(() => backend!.lines().includes('never finished'), 5000, 'body reaches the backend');
    // b waits for the session; a is cut after stressTimeout, b goes through.
    const b = await Dialog.connect(g.port);
    await b.reply();
    await b.cmd('EHLO b.test');
    const started = Date.now();
    expect((await b.cmd('MAIL FROM:<b@elsewhere.test>', 10_000)).code).toBe(250);
    expect(Date.now() - started).toBeLessThan(5_000);
    const cut = await a.reply();
    expect(cut.code).toBe(421);
    await a.waitClosed();
    expect((await b.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
    expect((await b.cmd('DATA')).code).toBe(354);
    b.send('Subject: b\r\n\r\nfrom b\r\n.\r\n');
    expect((await b.reply()).code).toBe(250);
    await b.cmd('QUIT');
    await backend.waitForMessages(1);
    // a's half message never reached the backend as mail; b's did.
    expect(backend.messages.map((m) => m.body.toString())).toEqual([expect.stringContaining('from b')]);
    expect(g.logs.some((l) => l.msg === 'pool: silent client released its backend session for waiting clients')).toBe(true);
  });

  test('one info line per transaction names the backend session: accepted, and rejected by the backend', async () => {
    backend = await startRecordingBackend({
      server: {
        onData(stream, _session, cb) {
          let body = '';
          stream.on('data', (c: Buffer) => (body += c.toString('latin1')));
          stream.on('end', () => (body.includes('refuse me') ? cb(Object.assign(new Error('Content refused'), { responseCode: 554 })) : cb(null, 'queued as ABC123')));
        },
      },
    });
    g = await startGuard({ backendPort: backend.port, config: POOL(1, { minIdle: 1 }) });
    const d = await Dialog.connect(g.port);
    await d.reply();
    await d.cmd('EHLO c.test');
    for (const [text, want] of [['fine', 250], ['refuse me', 554]] as const) {
      expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd(`Subject: x\r\n\r\n${text}\r\n.`)).code).toBe(want);
    }
    await d.cmd('QUIT');
    const accepted = g.logs.find((l) => l.msg === 'message accepted');
    const rejected = g.logs.find((l) => l.msg === 'message rejected by backend');
    expect(accepted).toMatchObject({ level: 30, clientIp: '127.0.0.1', mailFrom: 'a@elsewhere.test', backendSession: expect.stringMatching(/^\d+:\d+$/) });
    expect(String(accepted!.backendReply)).toContain('ABC123');
    expect(rejected).toMatchObject({ level: 30, backendSession: accepted!.backendSession });
    expect(String(rejected!.backendReply)).toContain('554');
    // The lending itself is a debug line.
    expect(g.logs.find((l) => l.msg === 'pool: backend session lent')).toMatchObject({ level: 20 });
  });

  test('no free backend session within acquireTimeout: 451, never a hang', async () => {
    backend = await startRecordingBackend();
    g = await startGuard({ backendPort: backend.port, config: POOL(1, { minIdle: 1, acquireTimeout: '300ms' }) });
    const a = await Dialog.connect(g.port);
    await a.reply();
    await a.cmd('EHLO a.test');
    expect((await a.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250); // holds the only session
    const b = await Dialog.connect(g.port);
    await b.reply();
    await b.cmd('EHLO b.test');
    const r = await b.cmd('MAIL FROM:<b@elsewhere.test>');
    expect(r.code).toBe(451);
    await a.cmd('RSET'); // gives the session back
    expect((await b.cmd('MAIL FROM:<b@elsewhere.test>')).code).toBe(250);
    a.close();
    b.close();
  });

  test('a trusted private verb outside a transaction (ETRN): forwarded on a session this client then keeps, as with AUTH', async () => {
    backend = await startRecordingBackend();
    g = await startGuard({
      backendPort: backend.port,
      rules: { relayNetworks: ['127.0.0.2/32'] },
      config: { ...POOL(3, { minIdle: 1 }), smtp: { trustedVerbs: ['ETRN'] } },
    });
    const d = await Dialog.connect(g.port, { localAddress: '127.0.0.2' });
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO internal.test')).code).toBe(250);
    const r = await d.cmd('ETRN example.com');
    expect(r.code).not.toBe(421); // the backend's own answer (this one does not know ETRN), not an internal error
    expect(r.code).toBeGreaterThanOrEqual(250);
    await until(() => backend!.lines().includes('ETRN example.com'), 3000, 'ETRN reached the backend');
    // The session goes on, on that same backend session, and mail still flows.
    expect((await d.cmd('MAIL FROM:<a@example.com>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    expect((await d.cmd('Subject: after ETRN\r\n\r\nbody\r\n.')).code).toBe(250);
    await backend.waitForMessages(1);
    expect(g.logs.some((l) => l.msg === 'internal error')).toBe(false);
    // A stranger's ETRN is still refused, without a backend session.
    const s = await Dialog.connect(g.port, { localAddress: '127.0.0.9' });
    await s.reply();
    await s.cmd('EHLO outside.test');
    expect((await s.cmd('ETRN example.com')).code).toBe(502);
    s.close();
    d.close();
  });

  test('a refused MAIL with RCPT and DATA pipelined behind it: the session is not lent on until they are answered, and a backend that says 354 anyway delivers nothing', async () => {
    // A broken backend: refuses one sender at MAIL, yet takes RCPT and DATA after it.
    const sb = await startScriptedBackend({ onLine: (line) => (line.startsWith('MAIL FROM:<bad@') ? '550 5.7.1 sender refused\r\n' : undefined) });
    try {
      g = await startGuard({ backendPort: sb.port, config: POOL(1, { minIdle: 1 }) });
      const a = await Dialog.connect(g.port);
      const b = await Dialog.connect(g.port);
      await a.reply();
      await b.reply();
      await a.cmd('EHLO a.test');
      await b.cmd('EHLO b.test');
      a.send('MAIL FROM:<bad@elsewhere.test>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n');
      b.send('MAIL FROM:<good@elsewhere.test>\r\n'); // waits for the only session
      expect((await a.reply()).code).toBe(550);
      await a.reply(); // the backend's answer to the orphan RCPT
      const data = await a.reply();
      expect(data.code).toBeGreaterThanOrEqual(500); // never 354: the transaction has no sender
      expect((await b.reply()).code).toBe(250);
      expect((await b.cmd('RCPT TO:<b@example.com>')).code).toBe(250);
      expect((await b.cmd('DATA')).code).toBe(354);
      expect((await b.cmd('Subject: b\r\n\r\nfrom b\r\n.')).code).toBe(250);
      // b's MAIL went out only after the session was free of a's commands (or on a fresh session).
      const mailB = sb.lines.indexOf('MAIL FROM:<good@elsewhere.test>');
      expect(mailB).toBeGreaterThan(sb.lines.indexOf('DATA'));
      expect(g.logs.some((l) => l.msg === 'internal error')).toBe(false);
      a.close();
      b.close();
    } finally {
      await g?.stop();
      g = undefined;
      await sb.close();
    }
  });

  test("QUIT in mid-transaction: the guard says goodbye, the backend session goes back with RSET (not QUIT) and stays open", async () => {
    backend = await startRecordingBackend();
    g = await startGuard({ backendPort: backend.port, config: POOL(1, { minIdle: 1 }) });
    await until(() => backend!.openConnections() === 1, 5000, 'warm pool');
    const d = await Dialog.connect(g.port);
    await d.reply();
    await d.cmd('EHLO a.test');
    d.send('MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<user@example.com>\r\nQUIT\r\n');
    expect((await d.reply()).code).toBe(250);
    expect((await d.reply()).code).toBe(250);
    expect((await d.reply()).code).toBe(221);
    await d.waitClosed();
    await until(() => backend!.lines().includes('RSET'), 3000, 'RSET on the pooled session');
    expect(backend.lines()).not.toContain('QUIT');
    expect(backend.openConnections()).toBe(1);
    expect(backend.connections.length).toBe(1);
    // The same backend session carries the next client's message.
    const r = await sendOne(g.port, 7);
    expect(r).toMatch(/^250/);
    expect(backend.connections.length).toBe(1);
  });

  test('the admin API shows the pool (GET /api/v1/pool) and which backend session each client holds (GET /api/v1/sessions)', async () => {
    const TOKEN = 'pool-admin-token-0123456789abcdef';
    backend = await startRecordingBackend();
    g = await startGuard({
      backendPort: backend.port,
      config: { ...POOL(3, { minIdle: 2 }), admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false } },
      env: { RELAY_GUARD_ADMIN_TOKEN: TOKEN },
    });
    const a = g.guard.adminAddress()!;
    const get = async (p: string) => {
      const res = await fetch(`http://${a.host}:${a.port}/api/v1/${p}`, { headers: { authorization: `Bearer ${TOKEN}` } });
      expect(res.status).toBe(200);
      return (await res.json()) as Record<string, unknown>;
    };
    await until(() => backend!.openConnections() >= 2, 5000, 'warm pool');
    const d = await Dialog.connect(g.port);
    onTestFinished(() => d.close());
    await d.reply();
    await d.cmd('EHLO a.test');
    // Between transactions the client holds no backend session.
    let sessions = (await get('sessions')).sessions as Array<Record<string, unknown>>;
    expect(sessions).toHaveLength(1);
    expect(sessions[0]!.backendSession).toBeUndefined();
    expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
    const pool = await get('pool');
    expect(pool).toMatchObject({ enabled: true, minIdle: 2, max: 3, lent: 1, dedicated: 0, waiting: 0 });
    const list = pool.sessions as Array<{ backendSession: string; state: string; idleSeconds?: number }>;
    expect(list.length).toBe((pool.idle as number) + (pool.lent as number) + (pool.dedicated as number));
    const lent = list.filter((x) => x.state === 'lent');
    expect(lent).toHaveLength(1);
    expect(lent[0]!.backendSession).toMatch(/^\d+:\d+$/);
    for (const x of list.filter((y) => y.state === 'idle')) expect(x.idleSeconds).toBeGreaterThanOrEqual(0);
    sessions = (await get('sessions')).sessions as Array<Record<string, unknown>>;
    expect(sessions[0]!.backendSession).toBe(lent[0]!.backendSession);
    expect((await d.cmd('RSET')).code).toBe(250);
    expect(await get('pool')).toMatchObject({ lent: 0 });
    d.close();
    // Per-client mode: no pool; a session names its own backend connection.
    const pc = await startGuard({ backendPort: backend.port, config: { admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false } }, env: { RELAY_GUARD_ADMIN_TOKEN: TOKEN } });
    try {
      const b = pc.guard.adminAddress()!;
      const res = await fetch(`http://${b.host}:${b.port}/api/v1/pool`, { headers: { authorization: `Bearer ${TOKEN}` } });
      expect(await res.json()).toEqual({ enabled: false });
      const e = await Dialog.connect(pc.port);
      await e.reply();
      const s2 = (await (await fetch(`http://${b.host}:${b.port}/api/v1/sessions`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { sessions: Array<Record<string, unknown>> };
      expect(s2.sessions[0]!.backendSession).toMatch(/^\d+:\d+$/);
      e.close();
    } finally {
      await pc.stop();
    }
  });
});
