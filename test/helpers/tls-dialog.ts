/**
 * Raw SMTP dialog over TLS: upgrade a plain socket after STARTTLS (RFC 3207) or connect with
 * implicit TLS (RFC 8314). Replies are read whole (multi-line aware), waits are bounded.
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { withTimeout } from './with-timeout.js';
import type { ParsedReply } from './dialog.js';

export class TlsDialog {
  private buf = '';
  private readonly replies: ParsedReply[] = [];
  private waiters: Array<() => void> = [];
  closed = false;

  private constructor(readonly socket: tls.TLSSocket) {
    socket.on('data', (c: Buffer) => {
      this.buf += c.toString('latin1');
      this.parse();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  /** Take over a plain socket that just got "220 Ready to start TLS" and run the client handshake. */
  static upgrade(plain: net.Socket, opts: tls.ConnectionOptions = {}): Promise<TlsDialog> {
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    return TlsDialog.handshake(tls.connect({ socket: plain, rejectUnauthorized: false, ...opts }));
  }

  /** Implicit TLS over any stream (e.g. one that adds a PROXY header in front). */
  static over(stream: Duplex, opts: tls.ConnectionOptions = {}): Promise<TlsDialog> {
    return TlsDialog.handshake(tls.connect({ socket: stream as net.Socket, rejectUnauthorized: false, ...opts }));
  }

  /** Implicit TLS: the handshake comes first, then the greeting. */
  static connect(port: number, localAddress?: string, opts: tls.ConnectionOptions = {}): Promise<TlsDialog> {
    return TlsDialog.handshake(
      tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ...(localAddress ? { localAddress } : {}), ...opts }),
    );
  }

  private static handshake(s: tls.TLSSocket): Promise<TlsDialog> {
    const d = new TlsDialog(s);
    return withTimeout(
      new Promise((resolve, reject) => {
        s.once('secureConnect', () => resolve(d));
        s.once('error', reject);
        s.once('close', () => reject(new Error('closed during the TLS handshake')));
      }),
      5000,
      'tls handshake',
    );
  }

  private parse(): void {
    let current: string[] = [];
    for (;;) {
      const nl = this.buf.indexOf('\r\n');
      if (nl < 0) break;
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 2);
      current.push(line);
      if (line.length < 4 || line[3] === ' ') {
        this.replies.push({ code: Number(line.slice(0, 3)), lines: current.map((l) => l.slice(4)), text: current.join('\n') });
        current = [];
      }
    }
    if (current.length > 0) this.buf = current.map((l) => `${l}\r\n`).join('') + this.buf;
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const fn of w) fn();
  }

  send(data: string | Buffer): void {
    this.socket.write(data);
  }

  async reply(ms = 5000): Promise<ParsedReply> {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (this.replies.length >= 1) return resolve();
          if (this.closed) return reject(new Error('connection closed before a reply'));
          this.waiters.push(check);
        };
        check();
      }),
      ms,
      'reply',
    );
    return this.replies.shift()!;
  }

  async cmd(line: string, ms = 5000): Promise<ParsedReply> {
    this.send(`${line}\r\n`);
    return this.reply(ms);
  }

  waitClosed(ms = 5000): Promise<void> {
    return withTimeout(
      new Promise<void>((resolve) => {
        const check = () => (this.closed ? resolve() : this.waiters.push(check));
        check();
      }),
      ms,
      'close',
    );
  }

  close(): void {
    this.socket.destroy();
  }
}
