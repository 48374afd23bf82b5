/**
 * The ceiling of any SMTP proxy written in Node, for the bench: a Node process that accepts each
 * client and answers the whole dialogue itself (greeting, EHLO, MAIL, RCPT, DATA, end-of-data, QUIT)
 * with no backend at all. Every proxy in Node does at least this work per client connection, and then
 * forwards; so no Node proxy (the bare pooled forwarder bench/pool-floor.ts, the guard) can carry more
 * one-message connections per second than this does on the same machine. Not a product, a yardstick.
 * Usage: node node-endpoint.js LISTEN_PORT   (127.0.0.1; prints "listening PORT").
 */
import net from 'node:net';

const listenPort = Number(process.argv[2] ?? 0);
const EOD = Buffer.from('\r\n.\r\n');

const server = net.createServer((client) => {
  client.setNoDelay(true);
  client.write('220 node-endpoint ESMTP\r\n');
  let lines: Buffer = Buffer.alloc(0);
  let inData = false;
  /** The last bytes of the body so far, to find an end-of-data split across chunks. */
  let tail = Buffer.from('\r\n');
  client.on('error', () => client.destroy());

  const body = (chunk: Buffer): void => {
    const joined = Buffer.concat([tail, chunk]);
    const end = joined.indexOf(EOD);
    if (end < 0) {
      tail = joined.subarray(Math.max(0, joined.length - 4));
      return;
    }
    const upTo = end + EOD.length - tail.length;
    inData = false;
    tail = Buffer.from('\r\n');
    client.write('250 2.0.0 Ok: queued\r\n');
    lines = Buffer.from(chunk.subarray(upTo));
    commands();
  };

  function commands(): void {
    while (!inData) {
      const i = lines.indexOf('\r\n');
      if (i < 0) return;
      const verb = lines.toString('latin1', 0, Math.min(i, 4)).toUpperCase();
      lines = lines.subarray(i + 2);
      if (verb === 'EHLO' || verb === 'HELO') client.write('250-node-endpoint\r\n250-PIPELINING\r\n250 8BITMIME\r\n');
      else if (verb === 'QUIT') {
        client.end('221 2.0.0 Bye\r\n');
        return;
      } else if (verb === 'DATA') {
        client.write('354 End data with <CR><LF>.<CR><LF>\r\n');
        inData = true;
        const early = lines;
        lines = Buffer.alloc(0);
        if (early.length > 0) body(early);
      } else client.write('250 2.0.0 Ok\r\n');
    }
  }

  client.on('data', (chunk: Buffer) => {
    if (inData) body(chunk);
    else {
      lines = lines.length > 0 ? Buffer.concat([lines, chunk]) : chunk;
      commands();
    }
  });
});

server.maxConnections = 100_000;
server.listen({ port: listenPort, host: '127.0.0.1', backlog: 4096 }, () => {
  process.stdout.write(`listening ${(server.address() as net.AddressInfo).port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
