/**
 * RSS per idle session: open N clients to a proxy, wait until every one was greeted (the proxy holds
 * a backend connection for each), read the proxy's RSS, close them. Source addresses rotate over
 * 127.0.0.2–127.0.0.41 so ephemeral ports never run out.
 */
import net from 'node:net';
import { rssBytes } from './proc.js';

export interface IdleResult {
  sessions: number;
  rssBeforeBytes: number;
  rssAfterBytes: number;
  bytesPerSession: number;
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
    return { sessions, rssBeforeBytes: before, rssAfterBytes: after, bytesPerSession: (after - before) / sessions };
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise((r) => setTimeout(r, 300));
  }
}
