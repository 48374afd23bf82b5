/**
 * Postfix's smtp-sink as a backend: it advertises PIPELINING 8BITMIME AUTH XCLIENT XFORWARD
 * ENHANCEDSTATUSCODES DSN — and not SMTPUTF8 — and writes one file per transaction with
 * X-Mail-Args / X-Rcpt-Args (what really arrived). It listens on a UNIX socket in a temporary
 * folder; a byte tap on 127.0.0.1:0 in front of it records every line the guard sent (no port guessing).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface SmtpSink {
  port: number;
  /** Lines the guard sent to the sink, across all connections, in arrival order. */
  sent: string[];
  /** The transaction files written so far (their text). */
  dumps(): string[];
  stop(): Promise<void>;
}

/** Connect to a UNIX socket that a just-started server may not have bound yet (bounded retries, each on an event). */
function connectWhenReady(sockPath: string, attempts = 500): Promise<net.Socket> {
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

export async function startSmtpSink(): Promise<SmtpSink> {
  const dir = mkdtempSync(path.join(tmpdir(), 'rg-sink-'));
  chmodSync(dir, 0o777);
  const sockPath = path.join(dir, 'sink');
  const sink: ChildProcess = spawn('smtp-sink', ['-u', 'nobody', '-d', `${dir}/%Y%m%d%H%M%S.`, `unix:${sockPath}`, '64'], { stdio: 'ignore' });
  const sent: string[] = [];
  const open = new Set<net.Socket>();
  const tap = net.createServer((c) => {
    open.add(c);
    let partial = '';
    const up = connectWhenReady(sockPath);
    c.on('data', (b: Buffer) => {
      partial += b.toString('utf8');
      const lines = partial.split('\r\n');
      partial = lines.pop() ?? '';
      sent.push(...lines);
      void up.then((u) => u.write(b), () => c.destroy());
    });
    void up.then(
      (u) => {
        open.add(u);
        u.pipe(c);
        u.on('error', () => c.destroy());
        u.on('close', () => c.destroy());
        c.on('close', () => u.destroy());
      },
      () => c.destroy(),
    );
    c.on('error', () => undefined);
  });
  await new Promise<void>((r) => tap.listen(0, '127.0.0.1', () => r()));
  return {
    port: (tap.address() as net.AddressInfo).port,
    sent,
    dumps: () => readdirSync(dir).filter((f) => f !== 'sink').sort().map((f) => readFileSync(path.join(dir, f), 'utf8')),
    async stop() {
      for (const s of open) s.destroy();
      await new Promise<void>((r) => tap.close(() => r()));
      sink.kill('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
