/**
 * Issue 4 acceptance, PROXY protocol inbound (HAProxy's proxy-protocol.txt v1 and v2): a header from
 * a configured load balancer makes the carried address the client address for policy and logs; a
 * header from anyone else is refused; `required` refuses a missing header; `optional` serves plain
 * clients normally. End to end with a real HAProxy sending PROXY v2 in front of the guard.
 * The inbound side runs twice: one backend connection per client, and pooled mode (the guard greets
 * and answers EHLO itself and lends a pre-opened backend session from MAIL to end-of-data), where
 * what the backend saw is searched across all its connections since the test began. Outbound PROXY
 * is per client only (a pooled backend session serves many clients: the config refuses the pair).
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { MODES, since, withMode, guardHousekeeping } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { TlsDialog } from '../helpers/tls-dialog.js';
import { startHaproxy, type RunningHaproxy } from '../helpers/haproxy.js';
import { formatProxyV1, formatProxyV2, type ProxyAddresses } from '../../src/net/proxy-protocol.js';

const BALANCER = '127.0.0.20';
const STRANGER = '127.0.0.9';
const TRUSTED_BEHIND_HAPROXY = '127.0.0.2';
const OFFICE = '10.1.2.3'; // in relayNetworks, only ever seen through a PROXY header
const OUTSIDER = '203.0.113.7';

function header(version: 1 | 2, source: string): Buffer {
  const info: ProxyAddresses = source.includes(':')
    ? { family: 'tcp6', sourceAddress: source, sourcePort: 40000, destAddress: '2001:db8::25', destPort: 25 }
    : { family: 'tcp4', sourceAddress: source, sourcePort: 40000, destAddress: '192.0.2.25', destPort: 25 };
  return version === 1 ? formatProxyV1(info) : formatProxyV2(info);
}

for (const { mode, config } of MODES) describe(`${mode} mode`, () => {
  let backend: RecordingBackend;
  let g: StartedGuard;

  beforeAll(async () => {
    backend = await startRecordingBackend();
    g = await startGuard({
      backendPort: backend.port,
      rules: { relayNetworks: ['10.1.2.0/24', `${TRUSTED_BEHIND_HAPROXY}/32`] },
      config: {
        ...config,
        timeouts: { drain: '1s' },
        listeners: [
          // HAProxy connects from 127.0.0.1.
          { name: 'lb', address: '127.0.0.1', port: 0, kind: 'mx', proxyProtocol: 'optional', proxyNetworks: [`${BALANCER}/32`, '127.0.0.1/32'] },
          { name: 'strict', address: '127.0.0.1', port: 0, kind: 'mx', proxyProtocol: 'required', proxyNetworks: [`${BALANCER}/32`] },
          // Implicit TLS behind a balancer: the header comes before the TLS handshake.
          { name: 'lbtls', address: '127.0.0.1', port: 0, kind: 'smtps', proxyProtocol: 'required', proxyNetworks: [`${BALANCER}/32`] },
        ],
      },
    });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
  });

  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  async function viaBalancer(listener: string, version: 1 | 2, source: string): Promise<Dialog> {
    const d = await Dialog.connect(g.guard.address(listener).port, { localAddress: BALANCER });
    d.send(header(version, source));
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO client.test')).code).toBe(250);
    return d;
  }

  function refusedLogFor(ip: string): Array<Record<string, unknown>> {
    return g.logs.filter((l) => l.msg === 'rcpt refused' && l.clientIp === ip);
  }

  describe('headers from a configured balancer', () => {
    for (const version of [1, 2] as const) {
      test(`v${version}: carried address in relayNetworks → relay allowed`, async () => {
        const summaries = g.logs.filter((l) => l.msg === 'session closed' && l.clientIp === OFFICE).length;
        const accepted = g.logs.filter((l) => l.msg === 'message accepted').length;
        const d = await viaBalancer('lb', version, OFFICE);
        expect((await d.cmd('MAIL FROM:<app@example.com>')).code).toBe(250);
        expect((await d.cmd(`RCPT TO:<pal-v${version}@elsewhere.test>`)).code).toBe(250);
        expect((await d.cmd('DATA')).code).toBe(354);
        const before = backend.messages.length;
        expect((await d.cmd(`Subject: v${version}\r\n\r\nvia proxy\r\n.`)).code).toBe(250);
        expect(backend.messages.length).toBe(before + 1);
        expect(backend.messages.at(-1)!.rcptTo).toEqual([`pal-v${version}@elsewhere.test`]);
        expect((await d.cmd('QUIT')).code).toBe(221);
        d.close();
        // The transaction's line and the session summary name the carried client (address and port).
        expect(g.logs.filter((l) => l.msg === 'message accepted').slice(accepted)).toEqual([
          expect.objectContaining({ clientIp: OFFICE, clientPort: 40000, mailFrom: 'app@example.com' }),
        ]);
        expect(g.logs.filter((l) => l.msg === 'session closed' && l.clientIp === OFFICE)).toHaveLength(summaries + 1);
        expect(g.logs.some((l) => l.clientIp === BALANCER)).toBe(false);
      });

      test(`v${version}: carried stranger → 550, the log names the carried address`, async () => {
        const d = await viaBalancer('strict', version, OUTSIDER);
        expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
        expect((await d.cmd(`RCPT TO:<victim-v${version}@elsewhere.test>`)).code).toBe(550);
        await d.cmd('QUIT');
        d.close();
        const lines = refusedLogFor(OUTSIDER);
        expect(lines.some((l) => l.rcpt === `victim-v${version}@elsewhere.test`)).toBe(true);
        expect(refusedLogFor(BALANCER)).toEqual([]);
      });
    }

    test('v2 with an IPv6 client address', async () => {
      const d = await viaBalancer('strict', 2, '2001:db8::7');
      expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<victim6@elsewhere.test>')).code).toBe(550);
      await d.cmd('QUIT');
      d.close();
      expect(refusedLogFor('2001:db8::7').length).toBe(1);
    });
  });

  describe('implicit TLS behind a balancer', () => {
    test('PROXY v2 header and the ClientHello in one TCP write: handshake completes, carried address used', async () => {
      const raw = net.connect({ port: g.guard.address('lbtls').port, host: '127.0.0.1', localAddress: BALANCER });
      await new Promise((r) => raw.once('connect', r));
      // A pass-through stream that puts the PROXY header in front of the first TLS record, as a
      // balancer that coalesces them does.
      let first = true;
      const carrier = new Duplex({
        write(chunk: Buffer, _enc, cb) {
          raw.write(first ? Buffer.concat([header(2, OUTSIDER), chunk]) : chunk, cb);
          first = false;
        },
        read() {},
      });
      raw.on('data', (b: Buffer) => carrier.push(b));
      raw.on('end', () => carrier.push(null));
      raw.on('error', () => carrier.destroy());
      const t = await TlsDialog.over(carrier);
      expect((await t.reply()).code).toBe(220);
      expect((await t.cmd('EHLO tls-behind-lb.test')).code).toBe(250);
      expect((await t.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      expect((await t.cmd('RCPT TO:<victim-tls-lb@elsewhere.test>')).code).toBe(550);
      await t.cmd('QUIT');
      t.close();
      raw.destroy();
      expect(refusedLogFor(OUTSIDER).some((l) => l.rcpt === 'victim-tls-lb@elsewhere.test')).toBe(true);
    });
  });

  describe('refusals', () => {
    // Before and after the greeting: the bytes that follow a refused header in the same chunk are
    // never read as commands (the session drops a chunk its socket was destroyed for).
    for (const version of [1, 2] as const) for (const when of ['at once', 'after the greeting'] as const) {
      test(`v${version} header from a peer not in proxyNetworks (optional listener), ${when} → closed, nothing forwarded`, async () => {
        const conns = backend.connections.length;
        const seen = since(backend);
        const d = await Dialog.connect(g.guard.address('lb').port, { localAddress: STRANGER });
        if (when === 'after the greeting') expect((await d.reply()).code).toBe(220);
        d.send(Buffer.concat([header(version, OFFICE), Buffer.from('EHLO spoof.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<victim@elsewhere.test>\r\n')]));
        await d.waitClosed();
        const replies: number[] = [];
        for (;;) {
          const r = await d.reply(50).catch(() => undefined);
          if (!r) break;
          replies.push(r.code);
          if (replies.length > 10) break;
        }
        expect(replies.filter((c) => c === 250)).toEqual([]);
        expect(backend.lines().join('\n')).not.toContain('victim@elsewhere.test');
        // No client command reached the backend (per client: at most the greeting connection, QUIT at
        // once; pooled: an RSET may still come from the session an earlier test left mid-transaction).
        expect(seen().filter((l) => !guardHousekeeping(l))).toEqual([]);
        if (mode === 'per-client') expect(backend.connections.length - conns).toBeLessThanOrEqual(1);
      });
    }

    test('a peer not in proxyNetworks on a required listener is refused at connect', async () => {
      const d = await Dialog.connect(g.guard.address('strict').port, { localAddress: STRANGER });
      d.send(header(1, OFFICE));
      const r = await d.reply();
      expect(r.code).toBe(421);
      await d.waitClosed();
    });

    test('required: a balancer that sends no header is refused', async () => {
      const conns = backend.connections.length;
      const seen = since(backend);
      const d = await Dialog.connect(g.guard.address('strict').port, { localAddress: BALANCER });
      d.send('EHLO no-header.test\r\n');
      const r = await d.reply();
      expect(r.code).toBe(421);
      await d.waitClosed();
      expect(seen().filter((l) => !guardHousekeeping(l))).toEqual([]);
      if (mode === 'per-client') expect(backend.connections.length).toBe(conns); // no backend connection opened for it
    });

    test('a malformed header is refused', async () => {
      const d = await Dialog.connect(g.guard.address('strict').port, { localAddress: BALANCER });
      d.send('PROXY TCP4 999.1.1.1 192.0.2.1 1 25\r\n');
      expect((await d.reply()).code).toBe(421);
      await d.waitClosed();
    });

    test('refusals are counted', async () => {
      const m = await g.guard.metrics.connections.get();
      const n = m.values.filter((v) => v.labels.outcome === 'proxy_refused').reduce((a, v) => a + v.value, 0);
      expect(n).toBeGreaterThanOrEqual(4);
      // …and each one once by rule id, with one log line (issue 18 item 3).
      const byRule = (await g.guard.metrics.commandRefusals.get()).values.filter((v) => v.labels.rule === 'proxy-refused').reduce((a, v) => a + v.value, 0);
      expect(byRule).toBe(n);
      expect(g.logs.filter((l) => l.msg === 'proxy header refused' && l.ruleId === 'proxy-refused')).toHaveLength(n);
    });
  });

  describe('optional without a header', () => {
    test('a direct client gets a normal session judged on its socket address', async () => {
      const d = await Dialog.connect(g.guard.address('lb').port, { localAddress: STRANGER });
      expect((await d.reply(1000)).code).toBe(220); // at once: no waiting for a header
      expect((await d.cmd('EHLO direct.test')).code).toBe(250);
      expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<victim-direct@elsewhere.test>')).code).toBe(550);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      await d.cmd('QUIT');
      d.close();
      expect(refusedLogFor(STRANGER).some((l) => l.rcpt === 'victim-direct@elsewhere.test')).toBe(true);
    });

    test('a silent peer from the balancer network gets a session after a short wait', async () => {
      const d = await Dialog.connect(g.guard.address('lb').port, { localAddress: BALANCER });
      expect((await d.reply(5000)).code).toBe(220);
      expect((await d.cmd('EHLO lb-host.test')).code).toBe(250);
      await d.cmd('QUIT');
      d.close();
    });
  });

  describe('HAProxy (send-proxy-v2) in front of the guard', () => {
    let haproxy: RunningHaproxy;
    beforeAll(async () => {
      haproxy = await startHaproxy({ backendPort: g.guard.address('lb').port, sendProxy: 'v2' });
    });
    afterAll(async () => {
      await haproxy?.stop();
    });

    test('policy decides on the real client address: stranger refused, trusted host relays', async () => {
      const s = await Dialog.connect(haproxy.port, { localAddress: STRANGER });
      expect((await s.reply()).code).toBe(220);
      expect((await s.cmd('EHLO stranger.test')).code).toBe(250);
      expect((await s.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      expect((await s.cmd('RCPT TO:<victim-haproxy@elsewhere.test>')).code).toBe(550);
      await s.cmd('QUIT');
      s.close();
      expect(refusedLogFor(STRANGER).some((l) => l.rcpt === 'victim-haproxy@elsewhere.test')).toBe(true);

      const t = await Dialog.connect(haproxy.port, { localAddress: TRUSTED_BEHIND_HAPROXY });
      expect((await t.reply()).code).toBe(220);
      expect((await t.cmd('EHLO trusted.test')).code).toBe(250);
      expect((await t.cmd('MAIL FROM:<app@example.com>')).code).toBe(250);
      expect((await t.cmd('RCPT TO:<pal-haproxy@elsewhere.test>')).code).toBe(250);
      expect((await t.cmd('DATA')).code).toBe(354);
      const before = backend.messages.length;
      expect((await t.cmd('Subject: haproxy\r\n\r\nthrough haproxy\r\n.')).code).toBe(250);
      expect(backend.messages.length).toBe(before + 1);
      expect(backend.messages.at(-1)!.rcptTo).toEqual(['pal-haproxy@elsewhere.test']);
      await t.cmd('QUIT');
      t.close();
    });
  });
});

describe('backend leg, one backend connection per client', () => {
  let backend: RecordingBackend;
  beforeAll(async () => {
    backend = await startRecordingBackend();
  });
  afterAll(async () => {
    await backend?.close();
  });

  describe('outbound: PROXY to the backend (backend.proxyProtocol)', () => {
    for (const version of ['v1', 'v2'] as const) {
      test(`${version}: a second guard behind the first sees the real client address`, async () => {
        // front (sends PROXY) → g's 'strict' listener (requires PROXY from 127.0.0.1) → recording backend
        const inner = await startGuard({
          backendPort: backend.port,
          config: {
            timeouts: { drain: '1s' },
            listeners: [{ name: 'inner', address: '127.0.0.1', port: 0, kind: 'mx', proxyProtocol: 'required', proxyNetworks: ['127.0.0.1/32'] }],
          },
        });
        const front = await startGuard({ backendPort: inner.port, config: { timeouts: { drain: '1s' }, backend: { proxyProtocol: version } } });
        try {
          const d = await Dialog.connect(front.port, { localAddress: STRANGER });
          expect((await d.reply()).code).toBe(220);
          expect((await d.cmd('EHLO outer.test')).code).toBe(250);
          expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
          expect((await d.cmd(`RCPT TO:<user-${version}@example.com>`)).code).toBe(250);
          expect((await d.cmd('DATA')).code).toBe(354);
          const before = backend.messages.length;
          expect((await d.cmd(`Subject: ${version}\r\n\r\nthrough two guards\r\n.`)).code).toBe(250);
          expect(backend.messages.length).toBe(before + 1);
          await d.cmd('QUIT');
          d.close();
          const accepted = inner.logs.filter((l) => l.msg === 'message accepted');
          expect(accepted.map((l) => l.clientIp)).toEqual([STRANGER]);
          expect(inner.logs.some((l) => l.msg === 'proxy header refused')).toBe(false);
        } finally {
          await front.stop();
          await inner.stop();
        }
      });
    }
  });

  describe('readiness with outbound PROXY (backend.proxyProtocol)', () => {
    for (const version of ['off', 'v1', 'v2'] as const) {
      test(`${version}: /readyz probes a backend that requires a PROXY header ${version === 'off' ? 'without one: not ready' : 'with a header naming the probe: ready'}`, async () => {
        const inner = await startGuard({
          backendPort: backend.port,
          config: {
            timeouts: { drain: '1s' },
            listeners: [{ name: 'inner', address: '127.0.0.1', port: 0, kind: 'mx', proxyProtocol: 'required', proxyNetworks: ['127.0.0.1/32'] }],
          },
        });
        const front = await startGuard({
          backendPort: inner.port,
          config: { timeouts: { drain: '1s' }, backend: { proxyProtocol: version }, admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false } },
        });
        try {
          const a = front.guard.adminAddress()!;
          const res = await fetch(`http://127.0.0.1:${a.port}/readyz`, { signal: AbortSignal.timeout(10_000) });
          expect(res.status).toBe(version === 'off' ? 503 : 200);
          if (version !== 'off') expect(inner.logs.some((l) => l.msg === 'proxy header refused')).toBe(false);
        } finally {
          await front.stop();
          await inner.stop();
        }
      });
    }
  });

  test('/readyz: a backend that greets with 421 (at its connection limit) is not ready', async () => {
    const conns = new Set<net.Socket>();
    const busy = net.createServer((s) => {
      conns.add(s);
      s.on('close', () => conns.delete(s));
      s.on('error', () => s.destroy());
      s.end('421 4.3.2 Too many connections\r\n');
    });
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const g = await startGuard({
      backendPort: (busy.address() as net.AddressInfo).port,
      config: { timeouts: { drain: '1s' }, admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false } },
    });
    try {
      const res = await fetch(`http://127.0.0.1:${g.guard.adminAddress()!.port}/readyz`, { signal: AbortSignal.timeout(10_000) });
      expect(res.status).toBe(503);
    } finally {
      await g.stop();
      for (const c of conns) c.destroy();
      await new Promise((r) => busy.close(r));
    }
  });

  describe('outbound: XCLIENT (backend.xclient)', () => {
    /** smtp-server honouring XCLIENT, with the client address it believed at each MAIL. */
    async function startXclientBackend(): Promise<{ xb: RecordingBackend; remote: string[] }> {
      const remote: string[] = [];
      const xb = await startRecordingBackend({
        server: {
          useXClient: true,
          onMailFrom(_a, session, cb) {
            remote.push(session.remoteAddress);
            cb();
          },
        },
      });
      return { xb, remote };
    }

    test('smtp-server with XCLIENT: ADDR, PORT and NAME are sent after the greeting; the backend sees the client', async () => {
      const { xb, remote } = await startXclientBackend();
      const front = await startGuard({ backendPort: xb.port, config: { timeouts: { drain: '1s' }, backend: { xclient: true }, smtp: { hostname: 'guard.example.com', errorDelay: '0s' } } });
      try {
        const d = await Dialog.connect(front.port, { localAddress: STRANGER });
        expect((await d.reply()).code).toBe(220);
        const ehlo = await d.cmd('EHLO client.test');
        expect(ehlo.lines.some((l) => /^XCLIENT/i.test(l))).toBe(false); // never advertised to clients
        expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
        await d.cmd('QUIT');
        d.close();
        const lines = xb.lines();
        expect(lines[0]).toBe('EHLO guard.example.com');
        expect(lines[1]).toMatch(/^XCLIENT ADDR=127\.0\.0\.9 PORT=\d+ NAME=\[UNAVAILABLE\]$/);
        expect(lines[2]).toBe('EHLO client.test');
        expect(remote).toEqual([STRANGER]);
      } finally {
        await front.stop();
        await xb.close();
      }
    });

    for (const { mode, config } of MODES) {
      test(`${mode} mode: a client behind a balancer (inbound PROXY v2) is named to the backend with the carried address and port`, async () => {
        const { xb, remote } = await startXclientBackend();
        const front = await startGuard({
          backendPort: xb.port,
          config: withMode(config, {
            backend: { xclient: true },
            timeouts: { drain: '1s' },
            smtp: { hostname: 'guard.example.com', errorDelay: '0s' },
            listeners: [{ name: 'lb', address: '127.0.0.1', port: 0, kind: 'mx', proxyProtocol: 'required', proxyNetworks: [`${BALANCER}/32`] }],
          }),
        });
        try {
          expect(front.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
          const d = await Dialog.connect(front.port, { localAddress: BALANCER });
          d.send(header(2, OUTSIDER));
          expect((await d.reply()).code).toBe(220);
          expect((await d.cmd('EHLO behind-lb.test')).code).toBe(250);
          expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
          expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
          expect((await d.cmd('DATA')).code).toBe(354);
          expect((await d.cmd('Subject: lb\r\n\r\nbehind a balancer\r\n.')).code).toBe(250);
          expect((await d.cmd('QUIT')).code).toBe(221);
          d.close();
          const xclient = xb.lines().filter((l) => /^XCLIENT/i.test(l));
          expect(xclient).toHaveLength(1);
          expect(xclient[0]).toMatch(/^XCLIENT ADDR=203\.0\.113\.7 PORT=40000\b/);
          expect(remote).toEqual([OUTSIDER]);
          expect(front.logs.filter((l) => l.msg === 'message accepted')).toEqual([expect.objectContaining({ clientIp: OUTSIDER, clientPort: 40000 })]);
          expect(front.logs.some((l) => l.clientIp === BALANCER)).toBe(false);
        } finally {
          await front.stop();
          await xb.close();
        }
      });
    }

    test('Postfix smtp-sink (advertises XCLIENT NAME HELO): only advertised attributes are sent; mail flows', async () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'rg-sink-'));
      chmodSync(dir, 0o777);
      const sockPath = path.join(dir, 'sink');
      const sink = spawn('smtp-sink', ['-u', 'nobody', '-d', `${dir}/%Y%m%d%H%M%S.`, `unix:${sockPath}`, '64'], { stdio: 'ignore' });
      const sent: string[] = [];
      // A byte tap on 127.0.0.1:0 in front of the sink's UNIX socket (no port guessing).
      const tap = net.createServer((c) => {
        const up = connectWhenReady(sockPath);
        c.on('data', (b: Buffer) => {
          sent.push(...b.toString('latin1').split('\r\n').filter(Boolean));
          void up.then((u) => u.write(b));
        });
        void up.then((u) => {
          u.pipe(c);
          u.on('error', () => c.destroy());
          c.on('close', () => u.destroy());
        });
        c.on('error', () => undefined);
      });
      await new Promise<void>((r) => tap.listen(0, '127.0.0.1', () => r()));
      const front = await startGuard({
        backendPort: (tap.address() as net.AddressInfo).port,
        config: { timeouts: { drain: '1s' }, backend: { xclient: true }, smtp: { hostname: 'guard.example.com', errorDelay: '0s' } },
      });
      try {
        const d = await Dialog.connect(front.port, { localAddress: STRANGER });
        expect((await d.reply()).code).toBe(220);
        expect((await d.cmd('EHLO client.test')).code).toBe(250);
        expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
        expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
        expect((await d.cmd('DATA')).code).toBe(354);
        expect((await d.cmd('Subject: sink\r\n\r\nto smtp-sink\r\n.')).code).toBe(250);
        await d.cmd('QUIT');
        d.close();
        expect(sent.slice(0, 3)).toEqual(['EHLO guard.example.com', 'XCLIENT NAME=[UNAVAILABLE]', 'EHLO client.test']);
        const dumps = readdirSync(dir).filter((f) => f !== 'sink');
        expect(dumps.length).toBe(1);
        const dump = readFileSync(path.join(dir, dumps[0]!), 'latin1');
        expect(dump).toContain('X-Helo-Args: client.test');
        expect(dump).toContain('X-Rcpt-Args: <user@example.com>');
      } finally {
        await front.stop();
        await new Promise<void>((r) => tap.close(() => r()));
        sink.kill('SIGTERM');
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  /** Connect to a UNIX socket that a just-started server may not have bound yet (bounded retries, each on an event). */
  function connectWhenReady(sockPath: string, attempts = 200): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const tryOnce = (left: number) => {
        const s = net.connect(sockPath);
        s.once('connect', () => resolve(s));
        s.once('error', (err) => {
          if (left <= 0) return reject(err);
          setImmediate(() => tryOnce(left - 1));
        });
      };
      tryOnce(attempts);
    });
  }
});
