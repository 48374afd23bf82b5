/**
 * A private HAProxy (Debian `haproxy`) in TCP mode in front of a test backend, optionally sending the
 * PROXY protocol (`send-proxy` / `send-proxy-v2`) to it.
 *
 * No port guessing and no polling: this process binds the listening sockets (port 0 unless told)
 * and hands them to HAProxy as inherited descriptors (`bind fd@3`). Connections made before HAProxy
 * runs wait in the kernel backlog. Readiness is a connection to a second inherited socket whose
 * frontend rejects at once: when it closes, HAProxy's event loop is running.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface HaproxyOptions {
  /** Port HAProxy listens on (127.0.0.1); a free one when absent. */
  frontendPort?: number;
  /** Where HAProxy forwards to (127.0.0.1). */
  backendPort: number;
  sendProxy: 'v1' | 'v2' | 'none';
  /** How long to wait for HAProxy to come up. */
  startTimeoutMs?: number;
}

export interface RunningHaproxy {
  port: number;
  stop(): Promise<void>;
}

const STDERR_LIMIT_BYTES = 16 * 1024;

export async function startHaproxy(opts: HaproxyOptions): Promise<RunningHaproxy> {
  const startTimeoutMs = opts.startTimeoutMs ?? 10_000;
  const sendProxy = { v1: ' send-proxy', v2: ' send-proxy-v2', none: '' }[opts.sendProxy];
  const config = [
    'global',
    '  maxconn 256',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 60s',
    '  timeout server 60s',
    'frontend guard_front',
    '  bind fd@3',
    '  default_backend guard_back',
    'backend guard_back',
    `  server b 127.0.0.1:${opts.backendPort}${sendProxy}`,
    'frontend ready_probe',
    '  bind fd@4',
    '  tcp-request connection reject',
    '  default_backend guard_back',
    '',
  ].join('\n');

  // Bind first: a busy frontendPort fails here, before anything needs cleaning up.
  const front = await listen(opts.frontendPort ?? 0);
  const port = (front.address() as net.AddressInfo).port;
  let ready: net.Server | undefined;
  let readyPort = 0;
  let dir: string | undefined;
  let child: ChildProcess;
  try {
    ready = await listen(0);
    readyPort = (ready.address() as net.AddressInfo).port;
    dir = await mkdtemp(join(tmpdir(), 'rg-haproxy-'));
    const configFile = join(dir, 'haproxy.cfg');
    await writeFile(configFile, config);
    // -db: foreground, no daemon, so this process owns it and can stop it by its pid.
    child = spawn('haproxy', ['-f', configFile, '-db'], { stdio: ['ignore', 'ignore', 'pipe', fdOf(front), fdOf(ready)] });
  } catch (err) {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    throw err;
  } finally {
    // The child holds its own copies; ours must not accept (and steal) connections.
    front.close();
    ready?.close();
  }
  const workDir = dir;
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    if (stderr.length < STDERR_LIMIT_BYTES) stderr += d.toString('utf8');
  });
  const exited = new Promise<never>((_, reject) => {
    child.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        err.code === 'ENOENT'
          ? new Error('haproxy is not installed (Debian: apt-get install -y haproxy); the HAProxy tests need it')
          : err,
      );
    });
    child.once('exit', (code, signal) => reject(new Error(`haproxy exited during start (code ${code}, signal ${signal}):\n${stderr}`)));
  });
  exited.catch(() => {});
  const killOnExit = (): void => {
    child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);

  const stop = async (): Promise<void> => {
    process.off('exit', killOnExit);
    if (child.exitCode === null && child.signalCode === null) {
      const gone = once(child, 'exit');
      child.kill('SIGTERM');
      await gone;
    }
    await rm(workDir, { recursive: true, force: true });
  };

  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`haproxy did not come up within ${startTimeoutMs} ms:\n${stderr}`)), startTimeoutMs);
  });
  try {
    await Promise.race([probeClosed(readyPort), exited, timeout]);
  } catch (err) {
    await stop();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return { port, stop };
}

function listen(port: number): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen({ port, host: '127.0.0.1' }, () => resolve(server));
  });
}

/**
 * The listening socket's descriptor, for stdio inheritance (child fd 3, 4, …). Node passes stdio
 * entries that are numbers as plain descriptors; `_handle.fd` is how its cluster module reaches it.
 */
function fdOf(server: net.Server): number {
  const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('cannot get the listening socket descriptor (Linux only)');
  return fd;
}

/** Resolves when HAProxy accepts and drops a probe connection (only a running HAProxy can do that). */
function probeClosed(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      // A reject may arrive as a reset; either way HAProxy handled the connection.
      if (err.code === 'ECONNRESET') resolve();
      else reject(err);
    });
    sock.on('data', () => {});
    sock.on('close', () => resolve());
  });
}
