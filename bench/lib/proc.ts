/**
 * Process plumbing for the bench and soak: child processes with bounded start-up, CPU time and RSS
 * from /proc, free ports and "is it greeting yet" probes.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';

let clkTck: number | undefined;

/** Clock ticks per second for /proc/PID/stat (getconf CLK_TCK, 100 on Linux). */
export function ticksPerSecond(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/**
 * CPU time of a process, in milliseconds: the sum over its threads of the scheduler's run time
 * (/proc/PID/task/TID/schedstat, nanoseconds), user and system time alike. /proc/PID/stat counts in
 * clock ticks (10 ms): a 1 MB run of the pipe is only 20–30 of them. Falls back to utime + stime
 * where schedstat is missing. A thread that exits between two readings takes its time with it; the
 * proxies measured here keep their threads for their whole life.
 */
export function cpuMs(pid: number): number {
  try {
    let ns = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // the thread ended while we looked
      }
    }
    if (Number.isFinite(ns) && ns > 0) return ns / 1e6;
  } catch {
    // no /proc/PID/task or no schedstat: clock ticks below
  }
  return cpuTicksMs(pid);
}

/** utime + stime of a process (its waited-for children not included), in milliseconds, at clock-tick resolution. */
export function cpuTicksMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Field 2 (comm) may contain spaces: split after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return ((utime + stime) * 1000) / ticksPerSecond();
}

/** Resident set size in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Resolves true when a 220 greeting line arrives on a fresh connection (false on error or timeout). */
export function greets(port: number, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = '';
    const t = setTimeout(() => done(false), timeoutMs);
    const done = (v: boolean) => {
      clearTimeout(t);
      s.destroy();
      resolve(v);
    };
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      if (buf.includes('\n')) {
        s.write('QUIT\r\n');
        done(buf.startsWith('220'));
      }
    });
    s.on('error', () => done(false));
  });
}

/** Probe until the port greets (bounded; a server coming up has no event to wait on). */
export async function waitGreeting(port: number, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await greets(port, 1000)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not greet on port ${port} within ${timeoutMs} ms`);
}

export interface Child {
  readonly pid: number;
  readonly proc: ChildProcess;
  stderr(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

/** Spawn a long-running helper; killed when this process exits. */
export function startChild(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Child {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
  if (proc.pid === undefined) throw new Error(`cannot start ${cmd}`);
  children.add(proc);
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => {
    if (err.length < 16_384) err += d.toString();
  });
  proc.stdout?.on('data', () => undefined);
  proc.once('exit', () => children.delete(proc));
  return {
    pid: proc.pid,
    proc,
    stderr: () => err,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const gone = once(proc, 'exit');
      proc.kill(signal);
      const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      await gone;
      clearTimeout(t);
    },
  };
}

/** Run a command to completion; wall time in ms, exit code and stderr. */
export async function runToEnd(cmd: string, args: string[]): Promise<{ ms: number; code: number; stderr: string }> {
  const t0 = process.hrtime.bigint();
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(proc);
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => {
    if (stderr.length < 16_384) stderr += d.toString();
  });
  const [code] = (await once(proc, 'exit')) as [number | null];
  children.delete(proc);
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, code: code ?? -1, stderr };
}
