/**
 * BackendLink: one SMTP connection to the backend. Connects (trying each backend in turn), reads
 * the greeting, writes commands and hands each parsed reply to the callback of the command it
 * answers, in order. Commands wait for the previous reply unless the backend offered PIPELINING.
 */
import net from 'node:net';
import tls from 'node:tls';
import { EventEmitter } from 'node:events';
import { ReplyParser } from '../smtp/reply-parser.js';
import { ehloKeywords } from '../smtp/ehlo.js';
import type { Reply } from '../smtp/reply.js';

export interface BackendTarget {
  readonly host: string;
  readonly port: number;
  readonly name?: string;
}

export type BackendFailure = 'connect' | 'timeout' | 'closed' | 'protocol';

/** Called with the reply, or with the failure that means no reply will come. */
export type ReplyHandler = (reply: Reply | { failure: BackendFailure }) => void;

interface Pending {
  readonly verb: string;
  readonly handler: ReplyHandler;
  readonly timeoutMs: number;
  sentAt: number;
}

interface Queued extends Pending {
  readonly wire: Buffer | undefined;
}

export interface BackendLinkOptions {
  readonly connectTimeoutMs: number;
  readonly greetingTimeoutMs: number;
  readonly replyTimeoutMs: number;
  readonly sourceAddress?: string;
  /** Bytes written right after connect, before the greeting is read (an outbound PROXY header). */
  readonly preamble?: Buffer | ((socket: net.Socket) => Buffer);
  /** Observes each reply's latency (metrics). */
  readonly onReplyTime?: (verb: string, seconds: number) => void;
}

/** A command the link sends right before each MAIL (Postfix XFORWARD); its reply goes to onReply. */
export interface MailPreambleCommand {
  readonly verb: string;
  readonly line: string;
  readonly onReply: ReplyHandler;
}

let nextSerial = 0;

/**
 * Where every plaintext backend socket reads into (Node's `onread`, net.connect): one buffer for all
 * of them. Reads are handled one at a time on this thread and each is parsed before the next, so
 * one buffer is enough; the reply parser copies the rare partial line it keeps. The stream path
 * instead allocates a 64 KiB backing store per read and shrinks it to the bytes read: a malloc, a
 * realloc and an ArrayBuffer per reply, which the guard does not need.
 */
let readBuffer: Buffer | undefined;
function sharedReadBuffer(): Buffer {
  return (readBuffer ??= Buffer.allocUnsafe(64 * 1024));
}

function newReplyParser(): ReplyParser {
  return new ReplyParser({ maxLineBytes: 4096, maxLines: 200 });
}

export function isFailure(r: Reply | { failure: BackendFailure }): r is { failure: BackendFailure } {
  return 'failure' in r;
}

export class BackendLink extends EventEmitter {
  /** The backend advertised PIPELINING in its EHLO reply. */
  pipelining = false;
  /** Keywords of the backend's last 250 reply to EHLO on this link (keyword → parameters). */
  capabilities: ReadonlyMap<string, string> = new Map();
  /** The last HELO/EHLO name sent on this link. */
  lastHelo: { readonly verb: 'HELO' | 'EHLO'; readonly name: string } | undefined;
  /** Commands written right before each MAIL (XFORWARD lasts one transaction: XFORWARD_README). */
  beforeMail: ((link: BackendLink) => readonly MailPreambleCommand[]) | undefined;
  private readonly serial = ++nextSerial;
  private tagText: string | undefined;
  /** QUIT was written: a polite close has nothing more to say. */
  private quitSent = false;
  private messageOpen = false;
  private parser = newReplyParser();
  /**
   * The backend said 220 to STARTTLS: the next bytes must be its TLS handshake. Plaintext read in
   * the meantime (after the 220 line, in the same segment or later) is never parsed as a reply;
   * it only marks the connection as tainted, and startTls() then refuses to upgrade it.
   */
  private awaitingHandshake = false;
  private plaintextAfterStartTls = false;
  private readonly inflight: Pending[] = [];
  private readonly queue: Queued[] = [];
  private timer: NodeJS.Timeout | undefined;
  /** performance.now() deadline the running timer was armed for. */
  private timerAt = 0;
  private closed = false;

  private sock: net.Socket;
  /** The TCP socket connectOne made (reads through onread into the shared buffer). */
  private readonly plain: net.Socket;
  /** True once the backend leg runs over TLS (STARTTLS, RFC 3207). */
  tls = false;

  private constructor(
    socket: net.Socket,
    readonly target: BackendTarget,
    private readonly opts: BackendLinkOptions,
  ) {
    super();
    this.sock = socket;
    this.plain = socket;
    this.attach(socket);
  }

  /**
   * Stable name of this backend session for logs: serial number and local port ("12:50432", the
   * port the backend logs as the remote one). Read on first use (a getsockname call), and kept
   * before the socket closes, when a failure is about to be logged.
   */
  get tag(): string {
    return (this.tagText ??= `${this.serial}:${this.sock.localPort ?? 0}`);
  }

  /** The current transport (the TLS socket after startTls). */
  get socket(): net.Socket {
    return this.sock;
  }

  /** Bytes read into the shared buffer (plaintext sockets, see sharedReadBuffer): a view, valid during the call. */
  private onRead(nread: number): void {
    // After startTls the TLS socket reads, through its own stream; the plain socket says nothing more.
    if (this.sock !== this.plain) return;
    this.onData(sharedReadBuffer().subarray(0, nread));
  }

  private attach(socket: net.Socket): void {
    // The plain socket delivers through onread (connectOne); a TLS socket through its stream.
    if (socket !== this.plain) socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => this.fail('closed'));
    socket.on('close', () => this.fail('closed'));
    socket.on('drain', () => this.emit('drain'));
  }

  /**
   * RFC 3207 on the backend leg: after the backend's 220 to STARTTLS, run the client handshake on
   * this connection and carry on over TLS. Only with nothing in flight. Resolves with an error
   * message on failure (the link is then closed) or undefined on success.
   *
   * Any byte the backend sent after its 220 and before the handshake (a reply, half a reply, a
   * capability line) fails the upgrade and closes the link: read over TLS later, it would pass for
   * a reply the backend gave inside the protected channel (the backend-side mirror of
   * CVE-2011-0411). After the handshake a fresh parser reads the replies: nothing buffered in
   * plaintext survives into the TLS session.
   */
  startTls(options: tls.ConnectionOptions, timeoutMs: number): Promise<string | undefined> {
    if (this.closed) return Promise.resolve('closed');
    if (this.outstanding > 0) throw new Error('BackendLink.startTls with commands in flight');
    if (!this.awaitingHandshake) throw new Error('BackendLink.startTls without a 220 to STARTTLS');
    if (this.plaintextAfterStartTls) {
      this.fail('protocol');
      return Promise.resolve('plaintext after the STARTTLS 220, before the handshake');
    }
    const plain = this.sock;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    plain.removeAllListeners('drain');
    plain.removeAllListeners('error');
    plain.on('error', () => undefined);
    const secure = tls.connect({ ...options, socket: plain });
    this.sock = secure;
    return new Promise((resolve) => {
      let done = false;
      const finish = (err: string | undefined) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        secure.off('secureConnect', onSecure);
        secure.off('error', onError);
        secure.off('close', onClose);
        if (err === undefined) {
          this.tls = true;
          this.awaitingHandshake = false;
          this.parser = newReplyParser();
          this.attach(secure);
        } else this.fail('protocol');
        resolve(err);
      };
      const onSecure = () => finish(undefined);
      const onError = (e: Error) => finish(e.message);
      const onClose = () => finish('closed during the TLS handshake');
      const timer = setTimeout(() => finish('TLS handshake timeout'), timeoutMs);
      secure.once('secureConnect', onSecure);
      secure.once('error', onError);
      secure.once('close', onClose);
    });
  }

  /**
   * Connect to the first backend that answers with a greeting. Resolves with the link and the
   * greeting reply, or with the last failure.
   */
  static async connect(
    targets: readonly BackendTarget[],
    opts: BackendLinkOptions,
  ): Promise<{ ok: true; link: BackendLink; greeting: Reply; connectSeconds: number } | { ok: false; failure: BackendFailure; target?: BackendTarget }> {
    let last: { ok: false; failure: BackendFailure; target?: BackendTarget } = { ok: false, failure: 'connect' };
    for (const target of targets) {
      const started = performance.now();
      const r = await BackendLink.connectOne(target, opts);
      if (r.ok) return { ...r, connectSeconds: (performance.now() - started) / 1000 };
      last = { ok: false, failure: r.failure, target };
    }
    return last;
  }

  private static connectOne(
    target: BackendTarget,
    opts: BackendLinkOptions,
  ): Promise<{ ok: true; link: BackendLink; greeting: Reply } | { ok: false; failure: BackendFailure }> {
    return new Promise((resolve) => {
      let link: BackendLink | undefined;
      const socket = net.connect({
        host: target.host,
        port: target.port,
        noDelay: true,
        ...(opts.sourceAddress ? { localAddress: opts.sourceAddress } : {}),
        // Nothing can be read before 'connect', where the link is made.
        onread: {
          buffer: sharedReadBuffer(),
          callback: (nread: number) => {
            link?.onRead(nread);
            return true; // keep reading (false would stop the socket)
          },
        },
      });
      let done = false;
      const finish = (r: { ok: true; link: BackendLink; greeting: Reply } | { ok: false; failure: BackendFailure }) => {
        if (done) return;
        done = true;
        clearTimeout(connectTimer);
        if (!r.ok) socket.destroy();
        resolve(r);
      };
      const connectTimer = setTimeout(() => finish({ ok: false, failure: 'timeout' }), opts.connectTimeoutMs);
      socket.once('error', () => finish({ ok: false, failure: 'connect' }));
      socket.once('connect', () => {
        clearTimeout(connectTimer);
        const made = new BackendLink(socket, target, opts);
        link = made;
        if (opts.preamble) socket.write(typeof opts.preamble === 'function' ? opts.preamble(socket) : opts.preamble);
        // The greeting is the reply to an implicit first "command".
        made.expect('GREETING', (r) => {
          if (isFailure(r)) finish({ ok: false, failure: r.failure });
          else finish({ ok: true, link: made, greeting: r });
        }, opts.greetingTimeoutMs);
      });
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Commands written and not yet answered, plus commands waiting to be written. */
  get outstanding(): number {
    return this.inflight.length + this.queue.length;
  }

  /** The backend said 354 and has not yet answered an end-of-data: it reads everything as message text. */
  get inMessage(): boolean {
    return this.messageOpen;
  }

  /** A command with this verb is written (or queued) and not yet answered. */
  awaiting(verb: string): boolean {
    return this.inflight.some((p) => p.verb === verb) || this.queue.some((p) => p.verb === verb);
  }

  /** Send a command line (with CRLF) and get its reply. */
  send(verb: string, wire: Buffer, handler: ReplyHandler, timeoutMs = this.opts.replyTimeoutMs): void {
    if (this.closed) {
      handler({ failure: 'closed' });
      return;
    }
    if (verb === 'MAIL' && this.beforeMail) {
      for (const p of this.beforeMail(this)) this.send(p.verb, Buffer.from(`${p.line}\r\n`, 'latin1'), p.onReply);
    } else if (verb === 'HELO' || verb === 'EHLO') {
      this.lastHelo = { verb, name: wire.toString('latin1', 5).trim() };
    }
    if (verb === 'QUIT') this.quitSent = true;
    const item: Queued = { verb, wire, handler, timeoutMs, sentAt: 0 };
    if (this.inflight.length === 0 || (this.pipelining && this.queue.length === 0)) this.transmit(item);
    else this.queue.push(item);
  }

  /** Expect a reply to bytes already written with writeRaw (end-of-data, AUTH responses). */
  expect(verb: string, handler: ReplyHandler, timeoutMs = this.opts.replyTimeoutMs): void {
    if (this.closed) {
      handler({ failure: 'closed' });
      return;
    }
    this.inflight.push({ verb, handler, timeoutMs, sentAt: performance.now() });
    this.arm();
  }

  /** A write is not finished yet: the socket still holds the buffer it was given (not a copy). */
  get writesPending(): boolean {
    return this.sock.writableLength > 0;
  }

  /** Write bytes that are not a command (message data). Returns false when the socket buffer is full. */
  writeRaw(data: Buffer): boolean {
    if (this.closed) return true;
    return this.sock.write(data);
  }

  /** Close politely (QUIT, no reply awaited) or abort at once. Pending handlers get 'closed'. */
  close(polite: boolean): void {
    if (this.closed) return;
    if (polite && this.inflight.length === 0) {
      // After the client's own QUIT went through (and was answered) there is nothing left to say.
      if (this.quitSent) this.sock.end();
      else this.sock.end('QUIT\r\n');
    }
    else this.sock.destroy();
    this.fail('closed');
  }

  private transmit(item: Queued): void {
    item.sentAt = performance.now();
    this.inflight.push(item);
    if (item.wire) this.sock.write(item.wire);
    this.arm();
  }

  /**
   * One reply timer per link, armed for the head command's deadline. A later command (pipelined,
   * or the next one) leaves a running timer alone when it is due no sooner; the timer, when it
   * fires early for the current head, re-arms for what is left. This saves a clearTimeout and a
   * setTimeout per command on the hot path.
   */
  private arm(): void {
    const head = this.inflight[0];
    if (!head) return;
    const deadline = head.sentAt + head.timeoutMs;
    if (this.timer !== undefined && this.timerAt <= deadline) return;
    clearTimeout(this.timer);
    this.timerAt = deadline;
    this.timer = setTimeout(this.onTimer, Math.max(0, deadline - performance.now()));
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    const head = this.inflight[0];
    if (!head) return;
    const left = head.sentAt + head.timeoutMs - performance.now();
    // Timers run on a millisecond clock: within a millisecond of the deadline counts as due.
    if (left <= 1) this.fail('timeout');
    else this.arm();
  };

  private onData(chunk: Buffer): void {
    if (this.awaitingHandshake) {
      // Plaintext between the 220 to STARTTLS and the handshake: never a reply (see startTls).
      this.plaintextAfterStartTls = true;
      return;
    }
    const events = this.parser.push(chunk);
    for (let i = 0; i < events.length; i++) {
      const ev = events[i]!;
      if (ev.kind === 'error') {
        this.fail('protocol');
        return;
      }
      const head = this.inflight.shift();
      if (!head) {
        // A reply nobody asked for: the backend is out of step (or says 421 on its own).
        this.emit('unsolicited', ev.reply);
        continue;
      }
      this.opts.onReplyTime?.(head.verb, (performance.now() - head.sentAt) / 1000);
      if (head.verb === 'EHLO' && ev.reply.code === 250) this.capabilities = ehloKeywords(ev.reply);
      else if (head.verb === 'DATA') this.messageOpen = ev.reply.code === 354;
      else if (head.verb === 'DATA-END') this.messageOpen = false;
      else if (head.verb === 'STARTTLS' && ev.reply.code === 220) {
        // RFC 3207 §4: from here on the backend's next bytes are its TLS handshake. What this
        // segment holds after the 220 (more replies, or the start of one) is plaintext that must
        // never be read as a reply: count it, and let startTls refuse the upgrade.
        this.awaitingHandshake = true;
        this.plaintextAfterStartTls = i + 1 < events.length || this.parser.pending;
        this.parser = newReplyParser();
        head.handler(ev.reply);
        return;
      }
      head.handler(ev.reply);
      if (this.closed) return;
    }
    while (this.queue.length > 0 && (this.inflight.length === 0 || this.pipelining)) this.transmit(this.queue.shift()!);
    this.arm();
  }

  private fail(failure: BackendFailure): void {
    if (this.closed) return;
    this.closed = true;
    // Someone waits for a reply and will log this failure: name the session while the port is known.
    if (this.inflight.length + this.queue.length > 0) void this.tag;
    clearTimeout(this.timer);
    if (failure !== 'closed' || !this.sock.destroyed) this.sock.destroy();
    const waiting = [...this.inflight, ...this.queue];
    this.inflight.length = 0;
    this.queue.length = 0;
    for (const p of waiting) p.handler({ failure });
    this.emit('closed', failure);
  }
}
