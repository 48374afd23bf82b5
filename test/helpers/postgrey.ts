/**
 * A private postgrey (Debian `postgrey`, a real Postfix policy service doing greylisting) for tests:
 * `--inet 127.0.0.1:PORT --delay N`, its database in a temporary folder owned by the postgrey user,
 * run in the foreground (logging to stderr) so the test owns the process. See ../shared/TESTING.md.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePort } from './free-port.js';

export interface Postgrey {
  readonly port: number;
  readonly address: string;
  /** What postgrey logged (stderr), for failure messages. */
  output(): string;
  stop(): Promise<void>;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export async function startPostgrey(opts: { delaySeconds: number }): Promise<Postgrey> {
  if (spawnSync('test', ['-x', '/usr/sbin/postgrey']).status !== 0) throw new Error('postgrey is not installed: run scripts/install-test-peers.sh (Debian postgrey)');
  const dir = mkdtempSync(path.join(tmpdir(), 'rg-postgrey-'));
  const uid = Number(spawnSync('id', ['-u', 'postgrey'], { encoding: 'utf8' }).stdout.trim());
  const gid = Number(spawnSync('id', ['-g', 'postgrey'], { encoding: 'utf8' }).stdout.trim());
  if (process.getuid?.() === 0) chownSync(dir, uid, gid);
  const port = await freePort();
  const proc: ChildProcess = spawn(
    '/usr/sbin/postgrey',
    [`--inet=127.0.0.1:${port}`, `--delay=${opts.delaySeconds}`, `--dbdir=${dir}`, `--pidfile=${path.join(dir, 'postgrey.pid')}`, '--user=postgrey', '--group=postgrey', '--syslogfacility=none'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  let exited = false;
  proc.once('exit', () => (exited = true));
  // Ready when it accepts connections (bounded: 100 tries, each after its log says more or 100 ms).
  for (let i = 0; i < 100; i++) {
    if (exited) throw new Error(`postgrey exited before it was ready:\n${out}`);
    if (await canConnect(port)) break;
    if (i === 99) {
      proc.kill('SIGKILL');
      throw new Error(`postgrey not accepting on ${port} after 100 tries:\n${out}`);
    }
    await new Promise<void>((r) => {
      const t = setTimeout(r, 100);
      proc.stderr?.once('data', () => {
        clearTimeout(t);
        r();
      });
    });
  }
  return {
    port,
    address: `127.0.0.1:${port}`,
    output: () => out,
    stop: async () => {
      if (!exited) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
          proc.once('exit', () => {
            clearTimeout(t);
            resolve();
          });
          proc.kill('SIGTERM');
        });
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
