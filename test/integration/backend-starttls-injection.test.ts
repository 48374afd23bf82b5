/**
 * Issue 16 item 2: the backend leg's STARTTLS is clean. A backend (or anyone on the path) that
 * writes plaintext after its "220 Ready to start TLS" and before the handshake must never get a
 * line into a reply the guard reads over TLS (the mirror of CVE-2011-0411 on the guard's client
 * side). The guard drops that backend connection instead of upgrading it: per-client mode → the
 * client gets 421 4.3.0; pooled mode → the pooled session is discarded and another one opened.
 * After a clean upgrade the replies are read by a fresh parser.
 * The backend is scripted (raw net server + node:tls) so it can lie exactly where it must.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { MODES, withMode } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog, type ParsedReply } from '../helpers/dialog.js';
import { makeCertificate, type TestCertificate } from '../helpers/certs.js';
import { startTlsScriptedBackend, type TlsScriptedBackend } from '../helpers/tls-scripted-backend.js';
import { until } from '../helpers/with-timeout.js';

const STRANGER = '127.0.0.9';

/** What a lying backend writes after its 220 to STARTTLS, in the same write. */
const INJECTIONS: ReadonlyArray<{ name: string; bytes: string }> = [
  // a whole reply: read as a reply to the next command, it answers for the backend
  { name: 'a whole reply', bytes: '250 injected\r\n' },
  // the start of a multi-line reply: glued in front of the first reply over TLS (the EHLO)
  { name: 'a reply prefix', bytes: '250-HELP injected\r\n' },
  // a capability: the backend "offers" AUTH it never offered over TLS
  { name: 'a capability line', bytes: '250-AUTH PLAIN LOGIN injected\r\n' },
  // an unterminated line
  { name: 'a partial line', bytes: '250-injected' },
];

let cert: TestCertificate;
beforeAll(async () => {
  cert = await makeCertificate({ commonName: 'localhost' });
});

/** Every reply the client gets on one connection, up to close or QUIT (bounded). */
async function dialogue(port: number, pooled: boolean): Promise<ParsedReply[]> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  const got: ParsedReply[] = [];
  try {
    const greeting = await d.reply();
    got.push(greeting);
    if (greeting.code !== 220) {
      await d.waitClosed();
      return got;
    }
    for (const line of ['EHLO client.test', 'MAIL FROM:<s@elsewhere.test>', 'RCPT TO:<bob@example.com>', 'DATA', 'Subject: t\r\n\r\nhello\r\n.', 'QUIT']) {
      const r = await d.cmd(line, pooled ? 8000 : 5000);
      got.push(r);
      if (r.code >= 400) break;
    }
  } finally {
    d.close();
  }
  return got;
}

function guardConfig(modeConfig: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const base = withMode(modeConfig, {
    timeouts: { drain: '1s' },
    backend: { tls: 'starttls', tlsRejectUnauthorized: false, pool: { acquireTimeout: '2s' } },
    smtp: { hostname: 'guard.example.com', errorDelay: '0s' },
  });
  return withMode(base, extra);
}

for (const { mode, config } of MODES) describe(`${mode} mode`, () => {
  const pooled = mode === 'pooled';

  test('control: an honest STARTTLS backend is upgraded, and mail goes through over TLS', async () => {
    const b = await startTlsScriptedBackend({ key: cert.key, cert: cert.cert });
    const g = await startGuard({ backendPort: b.port, config: guardConfig(config) });
    try {
      const replies = await dialogue(g.port, pooled);
      expect(replies.map((r) => r.code)).toEqual([220, 250, 250, 250, 354, 250, 221]);
      expect(b.messages).toHaveLength(1);
      expect(b.lines.filter((l) => /^MAIL/.test(l.line)).every((l) => l.tls)).toBe(true);
      expect(b.handshakes).toBeGreaterThan(0);
    } finally {
      await g.stop();
      await b.close();
    }
  });

  for (const inj of INJECTIONS) {
    test(`plaintext after the backend's STARTTLS 220 (${inj.name}): the connection is dropped, no injected byte reaches a client`, async () => {
      const b = await startTlsScriptedBackend({ key: cert.key, cert: cert.cert, afterStartTls: () => inj.bytes });
      const g = await startGuard({ backendPort: b.port, config: guardConfig(config) });
      try {
        const replies = await dialogue(g.port, pooled);
        const text = replies.map((r) => r.text).join('\n');
        expect(text).not.toContain('injected');
        expect(text).not.toMatch(/AUTH/);
        if (pooled) {
          // The guard greets; no pooled session could be prepared, so the transaction gets a 4xx.
          expect(replies[0]!.code).toBe(220);
          expect(replies.at(-1)!.code).toBe(451);
          expect(replies.at(-1)!.text).toContain('4.3.0');
        } else {
          expect(replies).toHaveLength(1);
          expect(replies[0]!.code).toBe(421);
          expect(replies[0]!.text).toContain('4.3.0');
        }
        // No TLS handshake ever ran over a tainted connection, and no command went over it after STARTTLS.
        expect(b.handshakes).toBe(0);
        expect(b.lines.filter((l) => l.tls)).toEqual([]);
        expect(b.messages).toHaveLength(0);
        const failed = g.logs.filter((l) => l.msg === 'backend tls failed');
        expect(failed.length).toBeGreaterThan(0);
        expect(String(failed[0]!.reason)).toMatch(/plaintext after the STARTTLS 220/);
      } finally {
        await g.stop();
        await b.close();
      }
    });
  }
});

describe('pooled mode: a tainted pooled session is discarded and replaced', () => {
  let b: TlsScriptedBackend;
  let g: StartedGuard;
  afterAll(async () => {
    await g?.stop();
    await b?.close();
  });

  test('the first backend connection injects, the next ones do not: the client gets a clean session and its mail through', async () => {
    b = await startTlsScriptedBackend({ key: cert.key, cert: cert.cert, afterStartTls: (i) => (i === 0 ? '250-HELP injected\r\n' : '') });
    g = await startGuard({
      backendPort: b.port,
      config: guardConfig(MODES[1]!.config, { backend: { pool: { minIdle: 1, max: 2, acquireTimeout: '5s' } } }),
    });
    expect(g.guard.services.pool).toBeDefined();
    const replies = await dialogue(g.port, true);
    expect(replies.map((r) => r.text).join('\n')).not.toContain('injected');
    expect(replies.map((r) => r.code)).toEqual([220, 250, 250, 250, 354, 250, 221]);
    expect(b.messages).toHaveLength(1);
    // The first connection never got a handshake; a later one did and carried the message.
    expect(b.lines.filter((l) => l.connection === 0 && l.tls)).toEqual([]);
    await until(() => b.handshakes >= 1, 5000, 'a clean pooled session');
    const replaced = (await g.guard.metrics.poolReplacements.get()).values.find((v) => v.labels.reason === 'tls_failed');
    expect(replaced?.value).toBe(1);
  });
});
