/**
 * Raw-socket SMTP dialog for byte-exact tests: send bytes, read whole replies (multi-line aware).
 * Works over any socket, plain or TLS (tls-dialog.ts wraps a TLSSocket in the same class).
 */
import net from 'node:net';
import { withTimeout } from './with-timeout.js';

export interface ParsedReply {
  code: number;
  lines: string[];
  text: string;
}

export class Dialog<S extends net.Socket = net.Socket> {
  private buf = '';
  private readonly replies: ParsedReply[] = [];
  private waiters: Array<() => void> = [];
  closed = false;
  readonly socket: S;

  private constructor(socket: S) {
    this.socket = socket;
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

  /** Read replies from an already connected socket (e.g. a TLSSocket after its handshake started). */
  static wrap<T extends net.Socket>(socket: T): Dialog<T> {
    return new Dialog(socket);
  }

  static connect(port: number, opts: { localAddress?: string; host?: string } = {}): Promise<Dialog> {
    return withTimeout(
      new Promise((resolve, reject) => {
        const s = net.connect({ port, host: opts.host ?? '127.0.0.1', ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) });
        s.once('connect', () => resolve(new Dialog(s)));
        s.once('error', reject);
      }),
      5000,
      'connect',
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

  /** Next reply (waits up to ms). */
  async reply(ms = 5000): Promise<ParsedReply> {
    const [r] = await this.replyN(1, ms);
    return r!;
  }

  async replyN(n: number, ms = 5000): Promise<ParsedReply[]> {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (this.replies.length >= n) return resolve();
          if (this.closed) return reject(new Error(`connection closed after ${this.replies.length} of ${n} replies: ${JSON.stringify(this.replies)}`));
          this.waiters.push(check);
        };
        check();
      }),
      ms,
      `${n} replies`,
    );
    return this.replies.splice(0, n);
  }

  /** Send a command and return its reply. */
  async cmd(line: string, ms = 5000): Promise<ParsedReply> {
    this.send(`${line}\r\n`);
    return this.reply(ms);
  }

  /**
   * One message on an open, greeted session (MAIL, RCPT, DATA, a short body with `subject`); throws
   * unless each reply is the success one (250, 250, 354, 250).
   */
  async sendMessage(rcpt: string, subject: string, from = 's@elsewhere.test'): Promise<void> {
    const steps: Array<[string, number]> = [[`MAIL FROM:<${from}>`, 250], [`RCPT TO:<${rcpt}>`, 250], ['DATA', 354], [`Subject: ${subject}\r\n\r\nok\r\n.`, 250]];
    for (const [line, want] of steps) {
      const r = await this.cmd(line);
      if (r.code !== want) throw new Error(`${line.split('\r\n')[0]}: expected ${want}, got ${r.text}`);
    }
  }

  /** Read replies until the connection closes (bounded: at most `max` replies, `perReplyMs` each). */
  async repliesUntilClose(max = 40, perReplyMs = 3000): Promise<ParsedReply[]> {
    const out: ParsedReply[] = [];
    for (let i = 0; i < max; i++) {
      try {
        out.push(await this.reply(perReplyMs));
      } catch {
        break;
      }
    }
    return out;
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
