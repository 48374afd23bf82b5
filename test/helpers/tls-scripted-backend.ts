/**
 * A scripted SMTP backend on 127.0.0.1 that speaks STARTTLS (RFC 3207) and AUTH, written to lie:
 * after its 220 to STARTTLS it can write plaintext before the handshake (`afterStartTls`), and it
 * can answer 235 to any credentials (`auth: 'any'`, the Exchange with a Guest account). Records
 * every command line it read (before and after TLS), every AUTH exchange it saw, and what each
 * connection ended as.
 */
import net from 'node:net';
import tls from 'node:tls';

export interface TlsScriptedBackendOptions {
  key: string;
  cert: string;
  /** Offer STARTTLS in the plaintext EHLO (default true). */
  starttls?: boolean;
  /** Bytes written right after "220 2.0.0 Ready to start TLS\r\n" in the same write, by connection index (0-based). */
  afterStartTls?: (connection: number) => string;
  /** Mechanisms advertised (after TLS when starttls, else at once); none: no AUTH. */
  authMechanisms?: readonly string[];
  /** 'any': 235 to every login (an open Guest account); else a credentials check. */
  auth?: 'any' | ((user: string, password: string) => boolean);
  /** Offer AUTH before TLS too (default false: only over TLS, as Exchange does). */
  authBeforeTls?: boolean;
}

export interface AuthAttempt {
  readonly connection: number;
  readonly user: string;
  readonly ok: boolean;
}

export interface TlsScriptedBackend {
  port: number;
  /** Every command line received, with the connection index and whether it came over TLS. */
  lines: Array<{ connection: number; tls: boolean; line: string }>;
  auths: AuthAttempt[];
  /** Connections accepted so far. */
  readonly connections: number;
  /** Connections that completed the TLS handshake. */
  readonly handshakes: number;
  /** Messages accepted (their bodies). */
  messages: string[];
  close(): Promise<void>;
}

export async function startTlsScriptedBackend(opts: TlsScriptedBackendOptions): Promise<TlsScriptedBackend> {
  const sockets = new Set<net.Socket>();
  const lines: TlsScriptedBackend['lines'] = [];
  const auths: AuthAttempt[] = [];
  const messages: string[] = [];
  let connections = 0;
  let handshakes = 0;
  const mechanisms = opts.authMechanisms ?? [];
  const check = opts.auth ?? (() => false);
  const accepts = (user: string, password: string) => (check === 'any' ? true : check(user, password));

  const server = net.createServer((plain) => {
    const index = connections++;
    sockets.add(plain);
    plain.on('close', () => sockets.delete(plain));
    plain.on('error', () => undefined);
    let secure = false;
    let sock: net.Socket = plain;
    let buf = '';
    let inData = false;
    let body = '';
    let authStep: { mech: string; user?: string } | undefined;
    const ehlo = () => {
      const caps = ['scripted-tls', 'PIPELINING', '8BITMIME'];
      if (!secure && opts.starttls !== false) caps.push('STARTTLS');
      if (mechanisms.length > 0 && (secure || opts.authBeforeTls || opts.starttls === false)) caps.push(`AUTH ${mechanisms.join(' ')}`);
      return caps.map((c, i) => `250${i === caps.length - 1 ? ' ' : '-'}${c}\r\n`).join('');
    };
    const finishAuth = (user: string, password: string) => {
      const ok = accepts(user, password);
      auths.push({ connection: index, user, ok });
      authStep = undefined;
      return ok ? '235 2.7.0 Authentication successful\r\n' : '535 5.7.8 Authentication credentials invalid\r\n';
    };
    const onLine = (line: string): string | undefined => {
      lines.push({ connection: index, tls: secure, line });
      if (inData) {
        if (line === '.') {
          inData = false;
          messages.push(body);
          body = '';
          return '250 2.0.0 queued\r\n';
        }
        body += `${line}\n`;
        return undefined;
      }
      if (authStep) {
        if (line === '*') {
          authStep = undefined;
          return '501 5.7.0 Authentication aborted\r\n';
        }
        const text = Buffer.from(line, 'base64').toString('utf8');
        if (authStep.mech === 'PLAIN') {
          const [, user = '', password = ''] = text.split('\0');
          return finishAuth(user, password);
        }
        if (authStep.user === undefined) {
          authStep.user = text;
          return '334 UGFzc3dvcmQ6\r\n';
        }
        return finishAuth(authStep.user, text);
      }
      const [verbRaw = '', ...rest] = line.split(' ');
      const verb = verbRaw.toUpperCase();
      switch (verb) {
        case 'EHLO':
          return ehlo();
        case 'HELO':
          return '250 scripted-tls\r\n';
        case 'STARTTLS':
          return undefined; // answered by onStartTls
        case 'AUTH': {
          const mech = (rest[0] ?? '').toUpperCase();
          if (!mechanisms.includes(mech)) return '504 5.5.4 Unrecognized authentication type\r\n';
          authStep = { mech };
          const initial = rest[1];
          if (initial !== undefined) return onLine(initial);
          return mech === 'LOGIN' ? '334 VXNlcm5hbWU6\r\n' : '334 \r\n';
        }
        case 'DATA':
          inData = true;
          return '354 go ahead\r\n';
        case 'QUIT':
          sock.end('221 2.0.0 bye\r\n');
          return undefined;
        default:
          return '250 2.0.0 ok\r\n';
      }
    };
    const onData = (c: Buffer) => {
      buf += c.toString('latin1');
      for (let nl = buf.indexOf('\r\n'); nl >= 0 && !sock.destroyed; nl = buf.indexOf('\r\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        if (!secure && !inData && !authStep && line.toUpperCase() === 'STARTTLS' && opts.starttls !== false) {
          lines.push({ connection: index, tls: false, line });
          // RFC 3207: 220, then the handshake — plus whatever this backend was scripted to smuggle.
          plain.removeListener('data', onData);
          plain.write(`220 2.0.0 Ready to start TLS\r\n${opts.afterStartTls?.(index) ?? ''}`);
          buf = '';
          const s = new tls.TLSSocket(plain, { isServer: true, key: opts.key, cert: opts.cert });
          s.on('error', () => undefined);
          s.once('secure', () => {
            handshakes++;
            secure = true;
          });
          s.on('data', onData);
          sock = s;
          return;
        }
        const a = onLine(line);
        if (a !== undefined && !sock.destroyed) sock.write(a);
      }
    };
    plain.on('data', onData);
    plain.write('220 scripted-tls ESMTP\r\n');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    lines,
    auths,
    messages,
    get connections() {
      return connections;
    },
    get handshakes() {
      return handshakes;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
