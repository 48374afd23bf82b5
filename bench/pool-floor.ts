/**
 * The floor of pooled mode in Node: the least a pooled SMTP forwarder must do, and nothing else.
 * Greets and answers EHLO itself, lends one of a few pre-greeted backend connections from MAIL to
 * the reply to end-of-data, copies command lines and the body verbatim. No policy, no parsing beyond
 * line ends and end-of-data, no limits, logs or metrics — not a product, a yardstick: the bench runs it
 * beside the guard's pooled mode so that the gap between the two is the guard's own work.
 * Usage: node pool-floor.js LISTEN_PORT BACKEND_PORT SESSIONS   (127.0.0.1; prints "listening PORT").
 */
import net from 'node:net';

const listenPort = Number(process.argv[2] ?? 0);
const backendPort = Number(process.argv[3]);
const poolSize = Number(process.argv[4] ?? 16);
if (!Number.isInteger(backendPort) || backendPort <= 0) {
  process.stderr.write('usage: pool-floor LISTEN_PORT BACKEND_PORT [SESSIONS]\n');
  process.exit(2);
}

interface Backend {
  socket: net.Socket;
  /** Called with each final reply line (multi-line replies: the last line only, enough here). */
  onReply: (line: string) => void;
}

const idle: Backend[] = [];
const waiting: Array<(b: Backend) => void> = [];

function lend(cb: (b: Backend) => void): void {
  const b = idle.pop();
  if (b) cb(b);
  else waiting.push(cb);
}

function giveBack(b: Backend): void {
  const w = waiting.shift();
  if (w) w(b);
  else idle.push(b);
}

function openBackend(): void {
  const socket = net.connect({ port: backendPort, host: '127.0.0.1', noDelay: true });
  let stage: 'greeting' | 'ehlo' | 'ready' = 'greeting';
  let buf = '';
  const b: Backend = { socket, onReply: () => undefined };
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\r\n'); i >= 0; i = buf.indexOf('\r\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (line[3] === '-') continue;
      if (stage === 'greeting') {
        stage = 'ehlo';
        socket.write('EHLO pool-floor\r\n');
      } else if (stage === 'ehlo') {
        stage = 'ready';
        giveBack(b);
      } else b.onReply(line);
    }
  });
  socket.on('error', () => process.exit(1));
}

const EOD = Buffer.from('\r\n.\r\n');

const server = net.createServer((client) => {
  client.setNoDelay(true);
  client.write('220 pool-floor ESMTP\r\n');
  let lines: Buffer = Buffer.alloc(0);
  let backend: Backend | undefined;
  let busy = false;
  let inData = false;
  /** The last bytes of the body so far, to find an end-of-data split across chunks. */
  let tail = Buffer.from('\r\n');
  client.on('error', () => client.destroy());
  client.on('close', () => {
    if (backend && !inData) giveBack(backend);
    else backend?.socket.destroy();
  });

  const forward = (wire: string | Buffer, after?: (line: string) => void): void => {
    busy = true;
    backend!.onReply = (line) => {
      busy = false;
      client.write(`${line}\r\n`);
      after?.(line);
      pump();
    };
    backend!.socket.write(wire);
  };

  const body = (chunk: Buffer): void => {
    const joined = Buffer.concat([tail, chunk]);
    const end = joined.indexOf(EOD);
    if (end < 0) {
      backend!.socket.write(chunk);
      tail = joined.subarray(Math.max(0, joined.length - 4));
      return;
    }
    const upTo = end + EOD.length - tail.length; // bytes of this chunk up to and with end-of-data
    inData = false;
    tail = Buffer.from('\r\n');
    lines = Buffer.from(chunk.subarray(upTo));
    forward(chunk.subarray(0, upTo), () => {
      giveBack(backend!);
      backend = undefined;
    });
  };

  function pump(): void {
    while (!busy && !inData) {
      const i = lines.indexOf('\r\n');
      if (i < 0) return;
      const line = lines.toString('latin1', 0, i);
      lines = lines.subarray(i + 2);
      const verb = line.slice(0, 4).toUpperCase();
      if (verb === 'EHLO' || verb === 'HELO') client.write('250-pool-floor\r\n250-PIPELINING\r\n250 8BITMIME\r\n');
      else if (verb === 'QUIT') {
        client.end('221 2.0.0 Bye\r\n');
        return;
      } else if (verb === 'MAIL' && !backend) {
        busy = true;
        lend((b) => {
          backend = b;
          busy = false;
          forward(`${line}\r\n`);
        });
      } else if (verb === 'DATA') {
        forward('DATA\r\n', (reply) => {
          if (!reply.startsWith('354')) return;
          inData = true;
          const early = lines;
          lines = Buffer.alloc(0);
          if (early.length > 0) body(early);
        });
      } else if (backend) forward(`${line}\r\n`);
      else client.write('503 5.5.1 Need MAIL\r\n');
    }
  }

  client.on('data', (chunk: Buffer) => {
    if (inData) body(chunk);
    else {
      lines = lines.length > 0 ? Buffer.concat([lines, chunk]) : chunk;
      pump();
    }
  });
});

for (let i = 0; i < poolSize; i++) openBackend();
server.maxConnections = 100_000;
server.listen({ port: listenPort, host: '127.0.0.1', backlog: 4096 }, () => {
  process.stdout.write(`listening ${(server.address() as net.AddressInfo).port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
