/**
 * A real open-relay backend for tests: nodemailer's smtp-server accepting every sender and
 * recipient, behind a byte tap that records exactly what the guard sent it. Tests assert on
 * both: `lines()` (the raw command lines, the assertion that matters for a proxy) and `messages`
 * (the envelopes and bodies smtp-server received).
 */
import net from 'node:net';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';

export interface RecordedMessage {
  mailFrom: string;
  rcptTo: string[];
  body: Buffer;
}

/** Where each connection's recording stood at one moment (see RecordingBackend.mark). */
export interface RecordingMark {
  /** Chunks recorded so far, per connection (index as in `connections`). */
  readonly chunks: readonly number[];
}

/** What one backend connection received since a mark. */
export interface ReceivedSince {
  /** Index in `connections`. */
  readonly index: number;
  /** The bytes, as latin1 text. */
  readonly text: string;
  /** The connection is still open (the guard has not closed it, nor the backend). */
  readonly open: boolean;
}

export interface RecordingBackend {
  readonly port: number;
  readonly messages: RecordedMessage[];
  /** Every byte the guard sent, per backend connection. */
  readonly connections: Buffer[][];
  /** Connections currently open. */
  openConnections(): number;
  /** Most connections ever open at once. */
  maxConcurrent(): number;
  /** All command lines sent by the guard (body lines included; tests use distinct bodies). */
  lines(): string[];
  /**
   * Snapshot the per-connection recordings: with `receivedSince`, "what the backend received since
   * now" across connections already open (a pool's warm sessions) and connections opened later.
   */
  mark(): RecordingMark;
  /** Bytes received since `mark` on every connection (those that received nothing included), in connection order. */
  receivedSince(mark: RecordingMark): ReceivedSince[];
  /** Resolves when `n` messages have been received. */
  waitForMessages(n: number): Promise<void>;
  /** Kill every open connection (a backend crash). */
  killConnections(): void;
  close(): Promise<void>;
}

export interface RecordingBackendOptions {
  /** smtp-server options merged over the defaults (e.g. onAuth, authMethods, banner). */
  server?: Partial<SMTPServerOptions>;
  /** Refuse connections beyond this many at once (like Exchange's per-source limit). */
  maxConnections?: number;
  /** Called for each DATA stream (default: collect). */
  delayDataReplyMs?: number;
}

export async function startRecordingBackend(opts: RecordingBackendOptions = {}): Promise<RecordingBackend> {
  const messages: RecordedMessage[] = [];
  const waiters: Array<{ n: number; resolve: () => void }> = [];
  const smtp = new SMTPServer({
    secure: false,
    hideSTARTTLS: true,
    authOptional: true,
    disabledCommands: ['STARTTLS'],
    logger: false,
    size: 0,
    useXClient: false,
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const msg: RecordedMessage = {
          mailFrom: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          rcptTo: session.envelope.rcptTo.map((r) => r.address),
          body: Buffer.concat(chunks),
        };
        messages.push(msg);
        for (const w of [...waiters]) if (messages.length >= w.n) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve();
        }
        callback(null, 'Ok: queued as TEST');
      });
    },
    ...opts.server,
  });
  // smtp-server reports a client's reset (ECONNRESET when the tap drops a connection) as a server
  // 'error' event; unhandled, that would crash the test process, not the guard.
  smtp.on('error', () => undefined);
  await new Promise<void>((resolve) => smtp.listen(0, '127.0.0.1', () => resolve()));
  const smtpPort = (smtp.server.address() as net.AddressInfo).port;

  const connections: Buffer[][] = [];
  const open: boolean[] = [];
  const sockets = new Set<net.Socket>();
  let maxSeen = 0;
  const tap = net.createServer((client) => {
    if (opts.maxConnections !== undefined && sockets.size >= opts.maxConnections) {
      client.on('error', () => undefined);
      client.resume(); // read what it sends, or close() would wait for it forever
      client.end('421 4.7.0 Too many connections from your host\r\n');
      return;
    }
    sockets.add(client);
    maxSeen = Math.max(maxSeen, sockets.size);
    const record: Buffer[] = [];
    const index = connections.push(record) - 1;
    open[index] = true;
    const upstream = net.connect(smtpPort, '127.0.0.1');
    client.on('data', (c: Buffer) => {
      record.push(Buffer.from(c));
      upstream.write(c);
    });
    upstream.pipe(client);
    const done = () => {
      open[index] = false;
      sockets.delete(client);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', done);
    client.on('error', done);
    upstream.on('close', done);
    upstream.on('error', done);
  });
  await new Promise<void>((resolve) => tap.listen(0, '127.0.0.1', () => resolve()));
  const port = (tap.address() as net.AddressInfo).port;

  return {
    port,
    messages,
    connections,
    openConnections: () => sockets.size,
    maxConcurrent: () => maxSeen,
    lines: () => connections.flatMap((c) => Buffer.concat(c).toString('latin1').split('\r\n')).filter((l) => l.length > 0),
    mark: () => ({ chunks: connections.map((c) => c.length) }),
    receivedSince: (mark) =>
      connections.map((c, index) => ({
        index,
        text: Buffer.concat(c.slice(mark.chunks[index] ?? 0)).toString('latin1'),
        open: open[index] === true,
      })),
    waitForMessages: (n) =>
      messages.length >= n ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ n, resolve })),
    killConnections: () => {
      for (const s of sockets) s.destroy();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => tap.close(() => resolve()));
      await new Promise<void>((resolve) => smtp.close(() => resolve()));
    },
  };
}
