/**
 * A private rbldnsd (Debian `rbldnsd`) for tests: a real DNSBL server on a loopback UDP port, serving
 * ip4set zones written to a temporary folder, with its query log (one line per query it answered),
 * so a test can see whether the guard asked it again. See ../shared/TESTING.md.
 *
 * Also: dropProxy(), a UDP relay in front of it that never answers queries for chosen zones — a list
 * that times out, while the others answer through the same resolver.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import dgram from 'node:dgram';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface Rbldnsd {
  readonly port: number;
  readonly server: string;
  /** Query names logged so far, lower case (rbldnsd logs each query it answered). */
  queries(): string[];
  stop(): Promise<void>;
}

/** A zone: its name and its entries in rbldnsd's ip4set syntax ("127.0.0.9", "127.0.0.12 :127.0.0.20:text"). */
export interface ZoneSpec {
  zone: string;
  entries: string[];
}

function udpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const port = s.address().port;
      s.close(() => resolve(port));
    });
  });
}

export async function startRbldnsd(zones: ZoneSpec[]): Promise<Rbldnsd> {
  const probe = spawnSync('test', ['-x', '/usr/sbin/rbldnsd']);
  if (probe.status !== 0) throw new Error('rbldnsd is not installed: run scripts/install-test-peers.sh (Debian rbldnsd)');
  const dir = mkdtempSync(path.join(tmpdir(), 'rg-rbldnsd-'));
  chmodSync(dir, 0o755);
  const args: string[] = [];
  zones.forEach((z, i) => {
    const file = `zone${i}`;
    writeFileSync(path.join(dir, file), `:127.0.0.2:listed\n${z.entries.join('\n')}\n`, { mode: 0o644 });
    args.push(`${z.zone}:ip4set:${file}`);
  });
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    // rbldnsd drops to its own user: the query log must be writable by it.
    const uid = Number(spawnSync('id', ['-u', 'rbldns'], { encoding: 'utf8' }).stdout.trim());
    const gid = Number(spawnSync('id', ['-g', 'rbldns'], { encoding: 'utf8' }).stdout.trim());
    if (Number.isInteger(uid) && Number.isInteger(gid)) chownSync(dir, uid, gid);
  }
  const log = path.join(dir, 'queries.log');
  const port = await udpPort();
  const proc: ChildProcess = spawn('/usr/sbin/rbldnsd', ['-n', ...(asRoot ? ['-u', 'rbldns'] : []), '-b', `127.0.0.1/${port}`, '-w', dir, '-t', '60', '-l', `+${log}`, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => fail(new Error(`rbldnsd not ready within 10 s:\n${out}`)), 10_000);
    const fail = (e: Error) => {
      clearTimeout(timer);
      proc.kill('SIGKILL');
      reject(e);
    };
    proc.once('error', fail);
    proc.once('exit', (code) => fail(new Error(`rbldnsd exited with ${code}:\n${out}`)));
    const onData = (d: Buffer) => {
      out += d.toString();
      if (!/started/.test(out)) return;
      proc.stdout?.off('data', onData);
      proc.stderr?.off('data', onData);
      clearTimeout(timer);
      proc.removeAllListeners('exit');
      proc.removeAllListeners('error');
      resolve();
    };
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', onData);
  });
  proc.stdout?.resume();
  proc.stderr?.resume();
  return {
    port,
    server: `127.0.0.1:${port}`,
    queries: () =>
      existsSync(log)
        ? readFileSync(log, 'utf8')
            .split('\n')
            .filter(Boolean)
            .map((l) => (l.split(/\s+/).find((w) => /\.test\.?$/i.test(w)) ?? l).toLowerCase())
        : [],
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        await new Promise<void>((resolve) => {
          proc.once('exit', () => resolve());
          proc.kill('SIGTERM');
        });
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The QNAME of a DNS query message (RFC 1035 §4.1.2), lower case, or undefined. */
function qname(msg: Buffer): string | undefined {
  const labels: string[] = [];
  let i = 12;
  for (let n = 0; n < 128 && i < msg.length; n++) {
    const len = msg[i]!;
    if (len === 0) return labels.join('.').toLowerCase();
    if (len > 63) return undefined;
    labels.push(msg.toString('latin1', i + 1, i + 1 + len));
    i += 1 + len;
  }
  return undefined;
}

export interface DropProxy {
  readonly server: string;
  /** Queries it dropped. */
  dropped(): string[];
  stop(): Promise<void>;
}

/** A UDP relay to `upstream` (HOST:PORT) that silently drops queries for names under `dropZones`. */
export async function dropProxy(upstream: string, dropZones: string[]): Promise<DropProxy> {
  const [host, portText] = upstream.split(':');
  const front = dgram.createSocket('udp4');
  const back = dgram.createSocket('udp4');
  const waiting = new Map<number, { address: string; port: number }>();
  const dropped: string[] = [];
  front.on('message', (msg, rinfo) => {
    const name = qname(msg);
    if (name !== undefined && dropZones.some((z) => name === z || name.endsWith(`.${z}`))) {
      dropped.push(name);
      return;
    }
    if (waiting.size > 1000) waiting.clear();
    waiting.set(msg.readUInt16BE(0), { address: rinfo.address, port: rinfo.port });
    back.send(msg, Number(portText), host);
  });
  back.on('message', (msg) => {
    const to = waiting.get(msg.readUInt16BE(0));
    if (!to) return;
    waiting.delete(msg.readUInt16BE(0));
    front.send(msg, to.port, to.address);
  });
  await new Promise<void>((r) => back.bind(0, '127.0.0.1', () => r()));
  await new Promise<void>((r) => front.bind(0, '127.0.0.1', () => r()));
  return {
    server: `127.0.0.1:${front.address().port}`,
    dropped: () => [...dropped],
    stop: async () => {
      await new Promise<void>((r) => front.close(() => r()));
      await new Promise<void>((r) => back.close(() => r()));
    },
  };
}
