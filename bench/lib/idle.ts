/**
 * RSS per idle session: open N clients to a proxy, wait until every one was greeted (the proxy holds
 * a backend connection for each), read the proxy's RSS, then its CPU over a quiet window (what a proxy
 * holding idle sessions costs at rest: timers, metrics), close them. Source addresses rotate over
 * 127.0.0.2–127.0.0.41 so ephemeral ports never run out.
 */
import net from 'node:net';
import { cpuMs, rssBytes } from './proc.js';

/** The quiet window over which CPU at rest is read. */
const REST_WINDOW_MS = 3000;

export interface IdleResult {
  sessions: number;
  rssBeforeBytes: number;
  rssAfterBytes: number;
  bytesPerSession: number;
  /** The proxy's CPU per second of wall time while the sessions sit idle. */
  cpuMsPerSecondAtRest: number;
}

function openGreeted(port: number, localAddress: string, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress });
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error('no greeting'));
    }, timeoutMs);
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString('latin1');
      if (buf.includes('\n')) {
        clearTimeout(t);
        s.off('data', onData);
        if (buf.startsWith('220')) resolve(s);
        else {
          s.destroy();
          reject(new Error(`greeting ${buf.trim()}`));
        }
      }
    };
    s.on('data', onData);
    s.on('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
  });
}

export async function idleRss(port: number, pid: number, sessions: number): Promise<IdleResult> {
  const before = rssBytes(pid);
  const sockets: net.Socket[] = [];
  try {
    const batch = 250;
    for (let i = 0; i < sessions; i += batch) {
      const n = Math.min(batch, sessions - i);
      const opened = await Promise.all(Array.from({ length: n }, (_, k) => openGreeted(port, `127.0.0.${2 + ((i + k) % 40)}`, 30_000)));
      sockets.push(...opened);
    }
    // Let allocation settle: two reads a moment apart, keep the later one.
    await new Promise((r) => setTimeout(r, 500));
    const after = rssBytes(pid);
    // The burst of connections leaves GC and compiler work behind: let it finish before the quiet window.
    await new Promise((r) => setTimeout(r, 2000));
    const c0 = cpuMs(pid);
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, REST_WINDOW_MS));
    const restMsPerS = ((cpuMs(pid) - c0) * 1000) / (performance.now() - t0);
    return { sessions, rssBeforeBytes: before, rssAfterBytes: after, bytesPerSession: (after - before) / sessions, cpuMsPerSecondAtRest: restMsPerS };
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise((r) => setTimeout(r, 300));
  }
}
