/**
 * Issue 4 acceptance, TLS at the guard: STARTTLS (RFC 3207) and implicit TLS (RFC 8314 §3) with real
 * clients (Node's tls, swaks --tls, openssl s_client), the STARTTLS command-injection test
 * (CVE-2011-0411), and a certificate reload that new sessions see while old ones keep working.
 * The client side runs twice: one backend connection per client, and pooled mode (the guard greets
 * and answers EHLO itself and lends a pre-opened backend session from MAIL to end-of-data), where
 * what the backend saw is searched across all its connections since the test began. The backend
 * leg (backend.tls: starttls) has its own per-client and pooled cases.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { MODES, since } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { makeCertificate, type TestCertificate } from '../helpers/certs.js';
import { withTimeout } from '../helpers/with-timeout.js';
import { TlsDialog } from '../helpers/tls-dialog.js';

const STRANGER = '127.0.0.9';

let certA: TestCertificate;
let certB: TestCertificate;

function writeCert(dir: string, c: TestCertificate): void {
  writeFileSync(path.join(dir, 'cert.pem'), c.cert);
  writeFileSync(path.join(dir, 'key.pem'), c.key);
}

function fingerprint(c: TestCertificate): string {
  return new X509Certificate(c.cert).fingerprint256;
}

beforeAll(async () => {
  certA = await makeCertificate({ commonName: 'cert-a.test' });
  certB = await makeCertificate({ commonName: 'cert-b.test' });
});

/** Plain connection up to a finished STARTTLS handshake. */
async function startTls(port: number, localAddress = STRANGER): Promise<TlsDialog> {
  const d = await Dialog.connect(port, { localAddress });
  expect((await d.reply()).code).toBe(220);
  const ehlo = await d.cmd('EHLO client.test');
  expect(ehlo.lines).toContain('STARTTLS');
  expect((await d.cmd('STARTTLS')).code).toBe(220);
  return TlsDialog.upgrade(d.socket);
}

/** Run a real client; `input` is written to its stdin once its output matches `after` (at once when absent). */
function run(cmd: string, args: string[], input?: string, after?: RegExp, timeoutMs = 15_000): Promise<{ code: number | null; out: string }> {
  return withTimeout(
    new Promise((resolve, reject) => {
      const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      let written = false;
      const feed = () => {
        if (written || (after && !after.test(out))) return;
        written = true;
        child.stdin.end(input ?? '');
      };
      child.stdout.on('data', (b: Buffer) => {
        out += b.toString();
        feed();
      });
      child.stderr.on('data', (b: Buffer) => (out += b.toString()));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, out }));
      feed();
    }),
    timeoutMs,
    cmd,
  );
}

for (const { mode, config } of MODES) describe(`${mode} mode`, () => {
  let backend: RecordingBackend;
  let g: StartedGuard;
  let certDir: string;

  beforeAll(async () => {
    certDir = mkdtempSync(path.join(tmpdir(), 'rg-tls-'));
    writeCert(certDir, certA);
    backend = await startRecordingBackend();
    const tlsConf = { certFile: path.join(certDir, 'cert.pem'), keyFile: path.join(certDir, 'key.pem') };
    g = await startGuard({
      backendPort: backend.port,
      config: {
        ...config,
        timeouts: { drain: '1s' },
        listeners: [
          { name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', starttls: true, tls: tlsConf },
          { name: 'smtps', address: '127.0.0.1', port: 0, kind: 'smtps', tls: tlsConf },
        ],
      },
    });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
  });

  afterAll(async () => {
    await g?.stop();
    await backend?.close();
    if (certDir) rmSync(certDir, { recursive: true, force: true });
  });

  describe('STARTTLS with Node tls', () => {
    test('handshake, state reset (MAIL before the new EHLO → 503), then a message goes through', async () => {
      const seen = since(backend);
      const t = await startTls(g.port);
      expect(t.socket.getPeerX509Certificate()?.fingerprint256).toBe(fingerprint(certA));
      // RFC 3207 §4.2: the client must discard what it knew; the server forgets the EHLO.
      expect((await t.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(503);
      const ehlo = await t.cmd('EHLO client.test');
      expect(ehlo.code).toBe(250);
      expect(ehlo.lines).not.toContain('STARTTLS');
      expect((await t.cmd('STARTTLS')).code).toBeGreaterThanOrEqual(500);
      expect((await t.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      expect((await t.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
      expect((await t.cmd('DATA')).code).toBe(354);
      const before = backend.messages.length;
      expect((await t.cmd('Subject: over starttls\r\n\r\nnode tls body\r\n.')).code).toBe(250);
      expect(backend.messages.length).toBe(before + 1);
      expect(backend.messages.at(-1)!.body.toString()).toContain('node tls body');
      expect((await t.cmd('QUIT')).code).toBe(221);
      t.close();
      // The refused MAIL before the new EHLO never reached the backend; the one after it did, once.
      expect(seen().filter((l) => /^MAIL/i.test(l))).toEqual(['MAIL FROM:<a@elsewhere.test>']);
    });

    test('the session summary says tls and the handshake is counted', async () => {
      const t = await startTls(g.port);
      expect((await t.cmd('EHLO client.test')).code).toBe(250);
      await t.cmd('QUIT');
      await t.waitClosed();
      const m = await g.guard.metrics.tlsHandshakes.get();
      const ok = m.values.find((v) => v.labels.kind === 'starttls' && v.labels.result === 'success');
      expect(ok?.value ?? 0).toBeGreaterThanOrEqual(1);
      expect(g.logs.filter((l) => l.msg === 'session closed').at(-1)).toMatchObject({ clientIp: STRANGER, tls: true });
    });
  });

  describe('CVE-2011-0411: plaintext pipelined after STARTTLS is discarded', () => {
    for (const injected of ['RSET', 'MAIL FROM:<x@y.test>']) {
      test(`"STARTTLS\\r\\n${injected}\\r\\n" in one write: the injected command is never answered nor forwarded`, async () => {
        const seen = since(backend);
        const d = await Dialog.connect(g.port, { localAddress: STRANGER });
        expect((await d.reply()).code).toBe(220);
        expect((await d.cmd('EHLO client.test')).code).toBe(250);
        d.send(`STARTTLS\r\n${injected}\r\n`);
        const r = await d.reply();
        expect(r.code).toBe(220);
        const t = await TlsDialog.upgrade(d.socket);
        // The first reply inside TLS must be the one to our NOOP, not to the injected command; the
        // next one the EHLO's (multi-line): an injected RSET answered by the guard itself would read
        // "250 2.0.0 OK" too, and push the NOOP's reply into the EHLO's place.
        const noop = await t.cmd('NOOP');
        expect(noop.text).toBe('250 2.0.0 OK');
        const ehlo = await t.cmd('EHLO client.test');
        expect(ehlo.code).toBe(250);
        expect(ehlo.lines).toContain('PIPELINING');
        // A message of our own inside TLS: its MAIL is the only one the backend gets, and no RSET.
        expect((await t.cmd('MAIL FROM:<after-tls@elsewhere.test>')).code).toBe(250);
        expect((await t.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
        expect((await t.cmd('DATA')).code).toBe(354);
        expect((await t.cmd('Subject: after STARTTLS\r\n\r\ninjection test\r\n.')).code).toBe(250);
        expect((await t.cmd('QUIT')).code).toBe(221);
        await t.waitClosed();
        const sent = seen();
        expect(sent.filter((l) => /^(RSET|MAIL)/i.test(l))).toEqual(['MAIL FROM:<after-tls@elsewhere.test>']);
        expect(sent.join('\n')).not.toContain('x@y.test');
      });
    }
  });

  describe('real TLS clients', () => {
    test('swaks --tls delivers a message over STARTTLS', async () => {
      const before = backend.messages.length;
      const r = await run('swaks', [
        '--server', `127.0.0.1:${g.port}`, '--tls', '--local-interface', STRANGER,
        '--from', 'alice@elsewhere.test', '--to', 'bob@example.com', '--body', `swaks tls body ${mode}`,
      ]);
      expect(r.code, r.out).toBe(0);
      expect(r.out).toMatch(/<- +220 .*TLS/i);
      expect(r.out).toContain('TLS started');
      expect(backend.messages.length).toBe(before + 1);
      expect(backend.messages.at(-1)!.body.toString()).toContain(`swaks tls body ${mode}`);
    });

    test('openssl s_client -starttls smtp completes the handshake and gets the new EHLO answered', async () => {
      const r = await run(
        'openssl',
        ['s_client', '-starttls', 'smtp', '-connect', `127.0.0.1:${g.port}`, '-servername', 'cert-a.test', '-ign_eof'],
        'EHLO openssl.test\r\nQUIT\r\n',
      );
      expect(r.out).toContain('CN = cert-a.test');
      expect(r.out).toMatch(/Protocol\s*:\s*TLSv1\.[23]/);
      expect(r.out).toMatch(/^250[ -]/m);
      expect(r.out).toMatch(/^221 /m);
    });

    test('implicit TLS (smtps): TLS from the first byte, no STARTTLS offered, message delivered', async () => {
      const port = g.guard.address('smtps').port;
      const t = await TlsDialog.connect(port, STRANGER);
      expect((await t.reply()).code).toBe(220);
      const ehlo = await t.cmd('EHLO client.test');
      expect(ehlo.code).toBe(250);
      expect(ehlo.lines).not.toContain('STARTTLS');
      expect((await t.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      expect((await t.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
      expect((await t.cmd('RCPT TO:<victim@elsewhere.test>')).code).toBe(550);
      expect((await t.cmd('DATA')).code).toBe(354);
      const before = backend.messages.length;
      expect((await t.cmd('Subject: smtps\r\n\r\nimplicit body\r\n.')).code).toBe(250);
      expect(backend.messages.length).toBe(before + 1);
      expect(backend.messages.at(-1)!.rcptTo).toEqual(['bob@example.com']);
      await t.cmd('QUIT');
      t.close();
    });

    test('openssl s_client against smtps (implicit TLS)', async () => {
      const port = g.guard.address('smtps').port;
      const r = await run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-ign_eof'], 'EHLO openssl.test\r\nQUIT\r\n', /^220 /m);
      expect(r.out).toContain('CN = cert-a.test');
      expect(r.out).toMatch(/^220 /m);
      expect(r.out).toMatch(/^221 /m);
    });
  });

  describe('certificate reload', () => {
    test('after reload new sessions see cert B; a session opened with cert A keeps working', async () => {
      const old = await startTls(g.port);
      const oldFingerprint = old.socket.getPeerX509Certificate()?.fingerprint256;
      expect(oldFingerprint).toBe(fingerprint(certA));
      expect((await old.cmd('EHLO old.test')).code).toBe(250);

      writeCert(certDir, certB);
      await g.guard.reload();

      const fresh = await startTls(g.port);
      expect(fresh.socket.getPeerX509Certificate()?.fingerprint256).toBe(fingerprint(certB));
      const implicit = await TlsDialog.connect(g.guard.address('smtps').port, STRANGER);
      expect(implicit.socket.getPeerX509Certificate()?.fingerprint256).toBe(fingerprint(certB));
      implicit.close();
      await fresh.cmd('QUIT');
      fresh.close();

      // The old session still sends a message on its cert-A connection.
      expect(old.closed).toBe(false);
      expect((await old.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      expect((await old.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
      expect((await old.cmd('DATA')).code).toBe(354);
      const before = backend.messages.length;
      expect((await old.cmd('Subject: old\r\n\r\nsent after reload\r\n.')).code).toBe(250);
      expect(backend.messages.length).toBe(before + 1);
      expect(backend.messages.at(-1)!.body.toString()).toContain('sent after reload');
      await old.cmd('QUIT');
      old.close();
      writeCert(certDir, certA);
      await g.guard.reload();
    });
  });

  describe('certificate reload on file change (no SIGHUP)', () => {
    test('replacing the PEM files is picked up by new handshakes within a bounded wait', async () => {
      const port = g.guard.address('smtps').port;
      const served = async (): Promise<string | undefined> => {
        const t = await TlsDialog.connect(port, STRANGER);
        const fp = t.socket.getPeerX509Certificate()?.fingerprint256;
        t.close();
        return fp;
      };
      expect(await served()).toBe(fingerprint(certA));
      writeCert(certDir, certB);
      const deadline = Date.now() + 10_000;
      let fp = await served();
      // Each probe is a real handshake (an event), bounded in count and time; the watcher debounces.
      for (let i = 0; i < 2000 && fp !== fingerprint(certB) && Date.now() < deadline; i++) fp = await served();
      expect(fp).toBe(fingerprint(certB));
      writeCert(certDir, certA);
      await g.guard.reload();
      expect(await served()).toBe(fingerprint(certA));
    });
  });

  describe('TLS settings and failures', () => {
    test('plaintext after the 220 to STARTTLS fails the handshake: closed, nothing forwarded', async () => {
      const d = await Dialog.connect(g.port, { localAddress: STRANGER });
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('EHLO client.test')).code).toBe(250);
      expect((await d.cmd('STARTTLS')).code).toBe(220);
      const seen = since(backend);
      d.send('MAIL FROM:<plain@after-starttls.test>\r\n');
      await d.waitClosed();
      expect(seen().filter((l) => /^MAIL/i.test(l))).toEqual([]);
      expect(backend.lines().join('\n')).not.toContain('plain@after-starttls.test');
      const m = await g.guard.metrics.tlsHandshakes.get();
      expect(m.values.find((v) => v.labels.kind === 'starttls' && v.labels.result === 'failure')?.value ?? 0).toBeGreaterThanOrEqual(1);
    });

    test('no certificate configured: self-signed at start with a warning; minVersion TLSv1.3 refuses a TLS 1.2 client', async () => {
      const b = await startRecordingBackend();
      const guard = await startGuard({
        backendPort: b.port,
        config: { ...config, timeouts: { drain: '1s' }, listeners: [{ name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', tls: { minVersion: 'TLSv1.3' } }] },
      });
      try {
        expect(guard.logs.some((l) => l.level === 40 && /self-signed/i.test(String(l.msg)))).toBe(true);
        const ok = await startTls(guard.port);
        expect(ok.socket.getProtocol()).toBe('TLSv1.3');
        await ok.cmd('QUIT');
        ok.close();
        const d = await Dialog.connect(guard.port, { localAddress: STRANGER });
        expect((await d.reply()).code).toBe(220);
        expect((await d.cmd('EHLO old-client.test')).code).toBe(250);
        expect((await d.cmd('STARTTLS')).code).toBe(220);
        await expect(TlsDialog.upgrade(d.socket, { maxVersion: 'TLSv1.2' })).rejects.toThrow();
      } finally {
        await guard.stop();
        await b.close();
      }
    });
  });
});

describe('backend leg STARTTLS (backend.tls: starttls)', () => {
  let backendCert: TestCertificate;
  let caDir: string;
  const secureMail: boolean[] = [];

  beforeAll(async () => {
    backendCert = await makeCertificate({ commonName: 'localhost' });
    caDir = mkdtempSync(path.join(tmpdir(), 'rg-backend-ca-'));
    writeFileSync(path.join(caDir, 'ca.pem'), backendCert.cert);
  });
  afterAll(() => {
    if (caDir) rmSync(caDir, { recursive: true, force: true });
  });

  /** A backend with its own STARTTLS; AUTH only over TLS (smtp-server's default). */
  function tlsBackend(): Promise<RecordingBackend> {
    return startRecordingBackend({
      server: {
        hideSTARTTLS: false,
        disabledCommands: [],
        key: backendCert.key,
        cert: backendCert.cert,
        authMethods: ['PLAIN', 'LOGIN'],
        onAuth(auth, _s, cb) {
          if (auth.username === 'carol' && auth.password === 'backend-tls-pw') cb(null, { user: 'carol' });
          else cb(new Error('Invalid username or password'));
        },
        onMailFrom(_address, session, cb) {
          secureMail.push(session.secure);
          cb();
        },
      },
    });
  }

  async function guardFor(b: RecordingBackend, backend: Record<string, unknown>, host = '127.0.0.1'): Promise<StartedGuard> {
    return startGuard({
      backendPort: b.port,
      config: {
        timeouts: { drain: '1s' },
        backends: [{ host, port: b.port }],
        backend: { tls: 'starttls', ...backend },
        smtp: { hostname: 'guard.example.com', errorDelay: '0s' },
      },
    });
  }

  test('no-verify mode: the guard upgrades its backend connection; the session is unaware; AUTH works over both TLS legs', async () => {
    const b = await tlsBackend();
    const guard = await guardFor(b, { tlsRejectUnauthorized: false });
    try {
      const t = await startTls(guard.port);
      const ehlo = await t.cmd('EHLO client.test');
      expect(ehlo.lines.some((l) => /^AUTH .*PLAIN/.test(l))).toBe(true); // the backend offers AUTH only over TLS
      expect((await t.cmd(`AUTH PLAIN ${Buffer.from('\0carol\0backend-tls-pw').toString('base64')}`)).code).toBe(235);
      expect((await t.cmd('MAIL FROM:<carol@example.com>')).code).toBe(250);
      expect((await t.cmd('RCPT TO:<pal@elsewhere.test>')).code).toBe(250);
      expect((await t.cmd('DATA')).code).toBe(354);
      expect((await t.cmd('Subject: b\r\n\r\nover two TLS legs\r\n.')).code).toBe(250);
      expect(b.messages.at(-1)!.body.toString()).toContain('over two TLS legs');
      expect(secureMail.at(-1)).toBe(true);
      await t.cmd('QUIT');
      t.close();
      // What went over the wire to the backend: our EHLO and STARTTLS in clear, nothing else readable.
      const wire = Buffer.concat(b.connections.at(-1)!).toString('latin1');
      expect(wire.startsWith('EHLO guard.example.com\r\nSTARTTLS\r\n')).toBe(true);
      expect(wire).not.toContain('MAIL FROM');
      expect(wire).not.toContain('over two TLS legs');
    } finally {
      await guard.stop();
      await b.close();
    }
  });

  test('verify mode with tlsCaFile: the self-signed backend certificate is accepted', async () => {
    const b = await tlsBackend();
    const guard = await guardFor(b, { tlsRejectUnauthorized: true, tlsCaFile: path.join(caDir, 'ca.pem') }, 'localhost');
    try {
      const d = await Dialog.connect(guard.port, { localAddress: STRANGER });
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('EHLO client.test')).code).toBe(250);
      expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd('Subject: ca\r\n\r\nverified backend\r\n.')).code).toBe(250);
      expect(secureMail.at(-1)).toBe(true);
      await d.cmd('QUIT');
      d.close();
    } finally {
      await guard.stop();
      await b.close();
    }
  });

  test('verify mode without the CA: the backend is unusable → 421 4.3.0, logged', async () => {
    const b = await tlsBackend();
    const guard = await guardFor(b, { tlsRejectUnauthorized: true });
    try {
      const d = await Dialog.connect(guard.port, { localAddress: STRANGER });
      const r = await d.reply();
      expect(r.code).toBe(421);
      expect(r.text).toContain('4.3.0');
      await d.waitClosed();
      expect(guard.logs.some((l) => l.msg === 'backend tls failed')).toBe(true);
      expect(b.messages.length).toBe(0);
    } finally {
      await guard.stop();
      await b.close();
    }
  });

  test('pooled mode: every pooled backend session is upgraded before its first transaction; nothing readable on the wire', async () => {
    const b = await tlsBackend();
    const guard = await guardFor(b, { tlsRejectUnauthorized: false, pool: { enabled: true, minIdle: 2, max: 2, acquireTimeout: '5s', healthInterval: '30s' } });
    try {
      for (let i = 0; i < 3; i++) {
        const d = await Dialog.connect(guard.port, { localAddress: STRANGER });
        expect((await d.reply()).code).toBe(220);
        expect((await d.cmd('EHLO client.test')).code).toBe(250);
        expect((await d.cmd(`MAIL FROM:<p${i}@elsewhere.test>`)).code).toBe(250);
        expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
        expect((await d.cmd('DATA')).code).toBe(354);
        expect((await d.cmd(`Subject: pooled ${i}\r\n\r\npooled over TLS ${i}\r\n.`)).code).toBe(250);
        await d.cmd('QUIT');
        d.close();
      }
      expect(b.messages.map((m) => m.body.toString()).filter((t) => t.includes('pooled over TLS'))).toHaveLength(3);
      expect(secureMail.slice(-3)).toEqual([true, true, true]);
      expect(b.connections.length).toBeLessThanOrEqual(2);
      for (const c of b.connections) {
        const wire = Buffer.concat(c).toString('latin1');
        expect(wire.startsWith('EHLO guard.example.com\r\nSTARTTLS\r\n')).toBe(true);
        expect(wire).not.toContain('MAIL FROM');
      }
    } finally {
      await guard.stop();
      await b.close();
    }
  });

  test('pooled mode: AUTH over both TLS legs (the backend offers AUTH only over TLS; the pool learned it from its EHLO over TLS)', async () => {
    const b = await tlsBackend();
    const guard = await guardFor(b, { tlsRejectUnauthorized: false, pool: { enabled: true, minIdle: 2, max: 2, acquireTimeout: '5s', healthInterval: '30s' } });
    try {
      expect(guard.guard.services.pool, 'pooled mode is on').toBeDefined();
      const t = await startTls(guard.port);
      const ehlo = await t.cmd('EHLO client.test');
      expect(ehlo.lines.some((l) => /^AUTH .*PLAIN/.test(l))).toBe(true);
      expect((await t.cmd(`AUTH PLAIN ${Buffer.from('\0carol\0backend-tls-pw').toString('base64')}`)).code).toBe(235);
      expect((await t.cmd('MAIL FROM:<carol@example.com>')).code).toBe(250);
      expect((await t.cmd('RCPT TO:<pal@elsewhere.test>')).code).toBe(250);
      expect((await t.cmd('DATA')).code).toBe(354);
      expect((await t.cmd('Subject: b\r\n\r\npooled, over two TLS legs\r\n.')).code).toBe(250);
      expect(b.messages.at(-1)!.body.toString()).toContain('pooled, over two TLS legs');
      expect(secureMail.at(-1)).toBe(true);
      await t.cmd('QUIT');
      t.close();
      expect(b.connections.length).toBeLessThanOrEqual(2);
      for (const c of b.connections) {
        const wire = Buffer.concat(c).toString('latin1');
        expect(wire.startsWith('EHLO guard.example.com\r\nSTARTTLS\r\n')).toBe(true);
        expect(wire).not.toContain('AUTH');
        expect(wire).not.toContain('MAIL FROM');
        expect(wire).not.toContain('over two TLS legs');
      }
    } finally {
      await guard.stop();
      await b.close();
    }
  });

  test('a backend that does not offer STARTTLS: plaintext, with a warning', async () => {
    const b = await startRecordingBackend();
    const guard = await guardFor(b, { tlsRejectUnauthorized: false });
    try {
      const d = await Dialog.connect(guard.port, { localAddress: STRANGER });
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('EHLO client.test')).code).toBe(250);
      expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
      await d.cmd('QUIT');
      d.close();
      expect(guard.logs.some((l) => l.msg === 'backend tls not started, continuing in plaintext')).toBe(true);
      expect(b.lines()).toContain('MAIL FROM:<a@elsewhere.test>');
    } finally {
      await guard.stop();
      await b.close();
    }
  });
});
