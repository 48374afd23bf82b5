import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { afterEach, beforeAll, describe, expect, test } from 'vitest';
import { TlsContextManager, type TlsLog } from '../../src/net/tls-context.js';
import { makeCertificate, type TestCertificate } from '../helpers/certs.js';

type LogLine = { level: 'info' | 'warn' | 'error'; fields: object; message: string };

function captureLog(): TlsLog & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  return {
    lines,
    info: (fields, message) => lines.push({ level: 'info', fields, message }),
    warn: (fields, message) => lines.push({ level: 'warn', fields, message }),
    error: (fields, message) => lines.push({ level: 'error', fields, message }),
  };
}

/** Bounded wait: rejects after `ms` instead of hanging the test. */
function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

let certA: TestCertificate;
let certB: TestCertificate;
let certOtherKey: TestCertificate;
beforeAll(async () => {
  [certA, certB, certOtherKey] = await Promise.all([
    makeCertificate({ commonName: 'a.test' }),
    makeCertificate({ commonName: 'b.test' }),
    makeCertificate({ commonName: 'c.test' }),
  ]);
});

const fingerprintOf = (pem: string): string => new X509Certificate(pem).fingerprint256;

async function certDir(pair: TestCertificate): Promise<{ dir: string; certFile: string; keyFile: string; write(p: Partial<TestCertificate>): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'rg-tls-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  const write = async (p: Partial<TestCertificate>): Promise<void> => {
    if (p.cert !== undefined) await writeFile(certFile, p.cert);
    if (p.key !== undefined) await writeFile(keyFile, p.key);
  };
  await write(pair);
  return { dir, certFile, keyFile, write };
}

async function createManager(opts: Partial<Parameters<typeof TlsContextManager.create>[0]> = {}) {
  const log = captureLog();
  const mgr = await TlsContextManager.create({ log, ...opts });
  cleanups.push(() => mgr.close());
  return { mgr, log };
}

/** An implicit-TLS echo server on 127.0.0.1:0. */
async function echoServer(options: tls.TlsOptions): Promise<{ server: tls.Server; port: number }> {
  const server = tls.createServer(options, (sock) => {
    sock.on('error', () => {});
    sock.pipe(sock);
  });
  const sockets = new Set<net.Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await withTimeout(once(server, 'listening'), 5000, 'listen');
  cleanups.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  });
  return { server, port: (server.address() as net.AddressInfo).port };
}

/** Connect a TLS client; `servername` undefined means no SNI (connecting to an IP address). */
async function connectTls(port: number, opts: tls.ConnectionOptions = {}): Promise<tls.TLSSocket> {
  const sock = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...opts });
  cleanups.push(() => sock.destroy());
  await withTimeout(once(sock, 'secureConnect'), 5000, 'tls handshake');
  return sock;
}

async function echo(sock: tls.TLSSocket, text: string): Promise<string> {
  sock.write(text);
  const [data] = (await withTimeout(once(sock, 'data'), 5000, 'echo')) as [Buffer];
  return data.toString();
}

const peerFingerprint = (sock: tls.TLSSocket): string => sock.getPeerCertificate().fingerprint256;

describe('TlsContextManager: start', () => {
  test('without files it generates a self-signed certificate and warns', async () => {
    const { mgr, log } = await createManager({ hostname: 'guard.example.test' });
    expect(mgr.selfSigned).toBe(true);
    const warn = log.lines.find((l) => l.level === 'warn');
    expect(warn?.message).toMatch(/self-signed/);
    const yearMs = 365 * 24 * 3600 * 1000;
    expect(Math.abs(mgr.notAfter.getTime() - (Date.now() + yearMs))).toBeLessThan(24 * 3600 * 1000);

    const { port } = await echoServer(mgr.serverOptions());
    const sock = await connectTls(port);
    const peer = sock.getPeerCertificate();
    expect(peer.subject.CN).toBe('guard.example.test');
    expect(peer.fingerprint256).toBe(mgr.fingerprint256);
    expect(await echo(sock, 'hello')).toBe('hello');
  });

  test('with files it serves them and reports notAfter', async () => {
    const files = await certDir(certA);
    const { mgr, log } = await createManager({ certFile: files.certFile, keyFile: files.keyFile });
    expect(mgr.selfSigned).toBe(false);
    expect(mgr.notAfter.getTime()).toBe(new Date(new X509Certificate(certA.cert).validTo).getTime());
    expect(log.lines.some((l) => l.level === 'warn')).toBe(false);
    const { port } = await echoServer(mgr.serverOptions());
    expect(peerFingerprint(await connectTls(port, { servername: 'a.test' }))).toBe(fingerprintOf(certA.cert));
    expect(peerFingerprint(await connectTls(port))).toBe(fingerprintOf(certA.cert));
  });

  test.each([
    { name: 'cert without key', files: (f: { certFile: string }) => ({ certFile: f.certFile }), error: /together/ },
    { name: 'missing file', files: (f: { certFile: string }) => ({ certFile: f.certFile, keyFile: `${f.certFile}.nope` }), error: /ENOENT/ },
    { name: 'key of another certificate', files: 'mismatch' as const, error: /does not match/ },
  ])('startup fails loudly: $name', async ({ files, error }) => {
    const f = await certDir(certA);
    if (files === 'mismatch') {
      await f.write({ key: certOtherKey.key });
      await expect(createManager({ certFile: f.certFile, keyFile: f.keyFile })).rejects.toThrow(error);
    } else {
      await expect(createManager(files(f))).rejects.toThrow(error);
    }
  });

  test('an expired certificate is served but warned about', async () => {
    const expired = await makeCertificate({ commonName: 'old.test', days: -1 });
    const f = await certDir(expired);
    const { mgr, log } = await createManager({ certFile: f.certFile, keyFile: f.keyFile });
    expect(mgr.notAfter.getTime()).toBeLessThan(Date.now());
    expect(log.lines.some((l) => l.level === 'warn' && /expired/.test(l.message))).toBe(true);
  });

  test('minVersion TLSv1.3 refuses a TLS 1.2-only client', async () => {
    const f = await certDir(certA);
    const { mgr } = await createManager({ certFile: f.certFile, keyFile: f.keyFile, minVersion: 'TLSv1.3' });
    const { port } = await echoServer(mgr.serverOptions());
    const sock = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, maxVersion: 'TLSv1.2' });
    cleanups.push(() => sock.destroy());
    const [err] = (await withTimeout(once(sock, 'error').catch((e: unknown) => [e]), 5000, 'handshake failure')) as [Error];
    expect(err).toBeInstanceOf(Error);
    const ok = await connectTls(port);
    expect(ok.getProtocol()).toBe('TLSv1.3');
  });

  test('ciphers restricts TLS 1.2 suites, also after a reload', async () => {
    const f = await certDir(certA);
    const { mgr } = await createManager({ certFile: f.certFile, keyFile: f.keyFile, ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384' });
    const { port } = await echoServer(mgr.serverOptions());
    const tls12 = { maxVersion: 'TLSv1.2' as const, servername: 'a.test' };
    expect((await connectTls(port, tls12)).getCipher().name).toBe('ECDHE-ECDSA-AES256-GCM-SHA384');

    const refused = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...tls12, ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' });
    cleanups.push(() => refused.destroy());
    const [err] = (await withTimeout(once(refused, 'error').catch((e: unknown) => [e]), 5000, 'handshake failure')) as [Error];
    expect(err).toBeInstanceOf(Error);

    await f.write(certB);
    expect(await mgr.reload()).toEqual({ ok: true });
    const after = await connectTls(port, tls12);
    expect(peerFingerprint(after)).toBe(fingerprintOf(certB.cert));
    expect(after.getCipher().name).toBe('ECDHE-ECDSA-AES256-GCM-SHA384');
  });
});

describe('TlsContextManager: reload', () => {
  test('a new certificate reaches new handshakes while an old session keeps working', async () => {
    const f = await certDir(certA);
    const { mgr } = await createManager({ certFile: f.certFile, keyFile: f.keyFile });
    const attached = await echoServer(mgr.serverOptions());
    mgr.attach(attached.server);
    const sniOnly = await echoServer(mgr.serverOptions()); // no attach(): only SNICallback follows reloads

    const old = await connectTls(attached.port, { servername: 'a.test' });
    expect(peerFingerprint(old)).toBe(fingerprintOf(certA.cert));
    expect(await echo(old, 'before')).toBe('before');

    await f.write(certB);
    const reloaded = once(mgr, 'reload');
    expect(await mgr.reload()).toEqual({ ok: true });
    const [event] = (await withTimeout(reloaded, 1000, 'reload event')) as [{ fingerprint256: string }];
    expect(event.fingerprint256).toBe(fingerprintOf(certB.cert));
    expect(mgr.fingerprint256).toBe(fingerprintOf(certB.cert));

    // New handshakes: with SNI (SNICallback) and without SNI (attach → setSecureContext).
    expect(peerFingerprint(await connectTls(attached.port, { servername: 'b.test' }))).toBe(fingerprintOf(certB.cert));
    expect(peerFingerprint(await connectTls(attached.port))).toBe(fingerprintOf(certB.cert));
    expect(peerFingerprint(await connectTls(sniOnly.port, { servername: 'b.test' }))).toBe(fingerprintOf(certB.cert));

    // The session opened before the reload is still up, on its old certificate.
    expect(old.destroyed).toBe(false);
    expect(await echo(old, 'after')).toBe('after');
    expect(peerFingerprint(old)).toBe(fingerprintOf(certA.cert));
  });

  test('STARTTLS upgrades via socketOptions() get the reloaded certificate', async () => {
    const f = await certDir(certA);
    const { mgr } = await createManager({ certFile: f.certFile, keyFile: f.keyFile });
    // A plain server that upgrades every connection at once, as the session does after "220 Ready to start TLS".
    const server = net.createServer((plain) => {
      const secure = new tls.TLSSocket(plain, mgr.socketOptions());
      secure.on('error', () => {});
      secure.pipe(secure);
    });
    server.listen(0, '127.0.0.1');
    await withTimeout(once(server, 'listening'), 5000, 'listen');
    const conns = new Set<net.Socket>();
    server.on('connection', (s) => conns.add(s));
    cleanups.push(async () => {
      for (const s of conns) s.destroy();
      await new Promise((r) => server.close(r));
    });
    const port = (server.address() as net.AddressInfo).port;

    expect(peerFingerprint(await connectTls(port))).toBe(fingerprintOf(certA.cert));
    await f.write(certB);
    expect(await mgr.reload()).toEqual({ ok: true });
    const sock = await connectTls(port);
    expect(peerFingerprint(sock)).toBe(fingerprintOf(certB.cert));
    expect(await echo(sock, 'x')).toBe('x');
  });

  // `bad` is a function: the certificates only exist once beforeAll has run.
  test.each([
    { name: 'garbage certificate', bad: () => ({ cert: 'not a certificate\n' }), error: /certificate/ },
    { name: 'empty certificate file', bad: () => ({ cert: '' }), error: /certificate/ },
    { name: 'garbage key', bad: () => ({ key: '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n' }), error: /key/ },
    { name: 'new certificate with the key of another', bad: () => ({ cert: certB.cert, key: certOtherKey.key }), error: /does not match/ },
  ])('a bad pair on reload keeps the old certificate: $name', async ({ bad, error }) => {
    const f = await certDir(certA);
    const { mgr, log } = await createManager({ certFile: f.certFile, keyFile: f.keyFile });
    const { port } = await echoServer(mgr.serverOptions());
    const old = await connectTls(port, { servername: 'a.test' });
    await f.write(bad());
    let emitted = false;
    mgr.on('reload', () => (emitted = true));

    const r = await mgr.reload();
    expect(r.ok).toBe(false);
    expect(r.error).toMatch(error);
    expect(emitted).toBe(false);
    expect(log.lines.some((l) => l.level === 'error' && /keeping the previous/.test(l.message))).toBe(true);
    expect(mgr.fingerprint256).toBe(fingerprintOf(certA.cert));
    expect(peerFingerprint(await connectTls(port, { servername: 'a.test' }))).toBe(fingerprintOf(certA.cert));
    expect(await echo(old, 'still here')).toBe('still here');
  });

  test('an unchanged pair reloads without an event', async () => {
    const f = await certDir(certA);
    const { mgr } = await createManager({ certFile: f.certFile, keyFile: f.keyFile });
    let emitted = false;
    mgr.on('reload', () => (emitted = true));
    expect(await mgr.reload()).toEqual({ ok: true });
    expect(emitted).toBe(false);
  });

  test('self-signed mode: reload is a no-op that succeeds', async () => {
    const { mgr } = await createManager({ hostname: 'x.test' });
    const before = mgr.fingerprint256;
    expect(await mgr.reload()).toEqual({ ok: true });
    expect(mgr.fingerprint256).toBe(before);
  });

  test('watch: replacing the files (by rename, as renewal tools do) reloads after the debounce', async () => {
    const f = await certDir(certA);
    const { mgr } = await createManager({ certFile: f.certFile, keyFile: f.keyFile, watch: true, watchDebounceMs: 50 });
    const reloaded = once(mgr, 'reload');
    await writeFile(join(f.dir, 'cert.pem.tmp'), certB.cert);
    await writeFile(join(f.dir, 'key.pem.tmp'), certB.key);
    const { rename } = await import('node:fs/promises');
    await rename(join(f.dir, 'key.pem.tmp'), f.keyFile);
    await rename(join(f.dir, 'cert.pem.tmp'), f.certFile);
    await withTimeout(reloaded, 5000, 'reload after file change');
    expect(mgr.fingerprint256).toBe(fingerprintOf(certB.cert));
  });
});
