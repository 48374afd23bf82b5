/**
 * A private redis-server for tests: 127.0.0.1 only, no persistence, on a free port.
 * Fails with a clear message when redis-server is not installed (CI installs it; see TESTING.md).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { freePort } from './free-port.js';

export { freePort };

export interface RedisServer {
  readonly port: number;
  readonly url: string;
  /** Stop the server (SIGKILL when `abrupt`, else SIGTERM) and wait for it to exit. */
  stop(opts?: { abrupt?: boolean }): Promise<void>;
  /** Start it again on the same port (after stop). */
  start(): Promise<void>;
}

const READY_TIMEOUT_MS = 10_000;

function assertInstalled(): void {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new Error('redis-server is not installed: run `apt-get install -y redis-server` (the Redis integration tests need a real server)');
  }
}

/** Send PING on a raw socket; resolves on +PONG, rejects on anything else or after timeoutMs. */
export function pingRedis(port: number, timeoutMs = 2_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port });
    let buf = '';
    const done = (err?: Error) => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve();
    };
    const timer = setTimeout(() => done(new Error(`redis on ${port}: no PONG within ${timeoutMs} ms`)), timeoutMs);
    sock.once('error', (e) => done(e));
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG') ? undefined : new Error(`redis on ${port} answered ${JSON.stringify(buf.trim())}`));
    });
    sock.write('PING\r\n');
  });
}

export interface RedisServerOptions {
  /** Keep data across restarts: an append-only file (fsync always) in this directory. */
  aofDir?: string;
}

export async function startRedisServer(opts: RedisServerOptions = {}): Promise<RedisServer> {
  assertInstalled();
  const port = await freePort();
  let child: ChildProcess | undefined;
  const persistence = opts.aofDir ? ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', opts.aofDir] : ['--appendonly', 'no'];

  const start = async (): Promise<void> => {
    const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', ...persistence, '--protected-mode', 'no'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = proc;
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => fail(new Error(`redis-server on ${port} not ready within ${READY_TIMEOUT_MS} ms:\n${out.slice(-2000)}`)), READY_TIMEOUT_MS);
      const fail = (e: Error) => {
        clearTimeout(timer);
        proc.kill('SIGKILL');
        reject(e);
      };
      proc.once('error', fail);
      proc.once('exit', (code) => fail(new Error(`redis-server exited with ${code} before it was ready:\n${out.slice(-2000)}`)));
      const onData = (d: Buffer) => {
        out += d.toString();
        if (!out.includes('Ready to accept connections')) return;
        proc.stdout?.off('data', onData);
        pingRedis(port).then(
          () => {
            clearTimeout(timer);
            proc.removeAllListeners('exit');
            proc.removeAllListeners('error');
            resolve();
          },
          fail,
        );
      };
      proc.stdout?.on('data', onData);
      proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    });
    // Keep draining output so the pipe never fills.
    proc.stdout?.resume();
  };

  const stop = async (opts: { abrupt?: boolean } = {}): Promise<void> => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
      proc.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      proc.kill(opts.abrupt ? 'SIGKILL' : 'SIGTERM');
    });
  };

  await start();
  return { port, url: `redis://127.0.0.1:${port}`, stop, start };
}
