/**
 * A minimal scripted SMTP backend on 127.0.0.1: default answers (250, 354 for DATA, 221 for QUIT),
 * each line overridable. Records every line it got and every peer address; optionally refuses
 * connections beyond a cap with 421, as Exchange's per-source limit does.
 */
import net from 'node:net';

/** A reply to write, null to stay silent, undefined for the default answer. */
export type ScriptedAnswer = string | null | undefined;

export interface ScriptedBackend {
  port: number;
  /** Every line received, end-of-data as '.'. */
  lines: string[];
  /** Remote address of each accepted connection. */
  remotes: string[];
  close(): Promise<void>;
}

export async function startScriptedBackend(
  opts: { onLine?: (line: string, socket: net.Socket) => ScriptedAnswer; maxConnections?: number } = {},
): Promise<ScriptedBackend> {
  const onLine = opts.onLine ?? (() => undefined);
  const lines: string[] = [];
  const remotes: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    if (opts.maxConnections !== undefined && sockets.size >= opts.maxConnections) {
      s.on('error', () => undefined);
      s.resume(); // read to EOF, or the socket never closes and server.close() waits forever
      s.end('421 4.7.0 Too many connections from your host\r\n');
      return;
    }
    sockets.add(s);
    remotes.push(s.remoteAddress ?? '');
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    let inData = false;
    s.write('220 scripted ESMTP\r\n');
    s.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      for (let nl = buf.indexOf('\r\n'); nl >= 0 && !s.destroyed; nl = buf.indexOf('\r\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        lines.push(line);
        if (inData) {
          if (line === '.') {
            inData = false;
            const a = onLine('.', s);
            if (a !== null && !s.destroyed) s.write(a ?? '250 2.0.0 queued\r\n');
          }
          continue;
        }
        const a = onLine(line, s);
        if (a === null || s.destroyed) continue;
        if (a !== undefined) {
          s.write(a);
          continue;
        }
        const verb = line.split(' ')[0]!.toUpperCase();
        if (verb === 'EHLO') s.write('250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n');
        else if (verb === 'DATA') {
          inData = true;
          s.write('354 go\r\n');
        } else if (verb === 'QUIT') s.end('221 bye\r\n');
        else s.write('250 2.0.0 ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    lines,
    remotes,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
