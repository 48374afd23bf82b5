/**
 * The embedded demo backend: a tiny accept-everything SMTP sink on loopback, standing in for the
 * open relay a newcomer wants to protect. It relays for anyone (on purpose) and keeps the last
 * envelopes in memory so a demo can show what got through. Not for production.
 */
import net from 'node:net';

export interface DemoEnvelope {
  mailFrom: string;
  rcptTo: string[];
  size: number;
}

export interface DemoBackend {
  readonly port: number;
  readonly received: DemoEnvelope[];
  close(): Promise<void>;
}

export async function startDemoBackend(host = '127.0.0.1', port = 0, opts: { log?: (e: DemoEnvelope) => void } = {}): Promise<DemoBackend> {
  const received: DemoEnvelope[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let buf = '';
    let inData = false;
    let env: DemoEnvelope = { mailFrom: '', rcptTo: [], size: 0 };
    socket.write('220 demo-backend ESMTP open relay (demo only)\r\n');
    socket.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      if (buf.length > 1_000_000 && !inData) return socket.destroy();
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          const startEnd = env.size === 0 && buf.startsWith('.\r\n') ? 0 : -1;
          if (end < 0 && startEnd < 0) {
            env.size += Math.max(0, buf.length - 4);
            buf = buf.slice(Math.max(0, buf.length - 4));
            return;
          }
          const cut = startEnd === 0 ? 3 : end + 5;
          env.size += cut;
          buf = buf.slice(cut);
          inData = false;
          received.push(env);
          if (received.length > 100) received.shift();
          opts.log?.(env);
          env = { mailFrom: '', rcptTo: [], size: 0 };
          socket.write('250 2.0.0 Ok: queued\r\n');
          continue;
        }
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') socket.write('250-demo-backend\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-XEXCH50\r\n250 ETRN\r\n');
        else if (verb === 'HELO') socket.write('250 demo-backend\r\n');
        else if (verb === 'MAIL') {
          env = { mailFrom: line.slice(10), rcptTo: [], size: 0 };
          socket.write('250 2.1.0 Ok\r\n');
        } else if (verb === 'RCPT') {
          env.rcptTo.push(line.slice(8));
          socket.write('250 2.1.5 Ok\r\n');
        } else if (verb === 'DATA') {
          inData = true;
          socket.write('354 End data with <CR><LF>.<CR><LF>\r\n');
        } else if (verb === 'RSET') {
          env = { mailFrom: '', rcptTo: [], size: 0 };
          socket.write('250 2.0.0 Ok\r\n');
        } else if (verb === 'QUIT') {
          socket.end('221 2.0.0 Bye\r\n');
          return;
        } else if (verb === 'NOOP') socket.write('250 2.0.0 Ok\r\n');
        else socket.write('502 5.5.2 Error: command not recognized\r\n');
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const addr = server.address() as net.AddressInfo;
  return {
    port: addr.port,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
