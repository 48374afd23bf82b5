/**
 * The floor any Node proxy can reach: accept, connect to the backend, pipe both ways, nothing else.
 * Usage: node pipe-proxy.js LISTEN_PORT BACKEND_PORT   (127.0.0.1 both; prints "listening PORT").
 * The bench runs it as its own process (transpiled to plain JavaScript) to compare its CPU with the guard's.
 */
import net from 'node:net';

const listenPort = Number(process.argv[2] ?? 0);
const backendPort = Number(process.argv[3]);
if (!Number.isInteger(backendPort) || backendPort <= 0) {
  process.stderr.write('usage: pipe-proxy LISTEN_PORT BACKEND_PORT\n');
  process.exit(2);
}

const server = net.createServer((client) => {
  client.setNoDelay(true);
  const backend = net.connect({ port: backendPort, host: '127.0.0.1' });
  backend.setNoDelay(true);
  client.pipe(backend);
  backend.pipe(client);
  const done = () => {
    client.destroy();
    backend.destroy();
  };
  client.on('error', done);
  backend.on('error', done);
  client.on('close', done);
  backend.on('close', done);
});
server.maxConnections = 100_000;
server.listen({ port: listenPort, host: '127.0.0.1', backlog: 4096 }, () => {
  process.stdout.write(`listening ${(server.address() as net.AddressInfo).port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
