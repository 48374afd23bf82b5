/**
 * A relay-guard process (the CLI through tsx, as an operator runs it) on loopback ports, with its
 * own rules directory, admin API and captured JSON log; for fleet tests (several processes, one Redis).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { withTimeout } from './with-timeout.js';
import { freePort } from './free-port.js';

export interface GuardProcess {
  readonly name: string;
  readonly smtpPort: number;
  readonly adminPort: number;
  readonly proc: ChildProcess;
  output(): string;
  /** Parsed JSON log lines so far. */
  logs(): Array<Record<string, unknown>>;
  api(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<{ status: number; body: any; headers: Headers }>;
  metrics(): Promise<string>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export async function startGuardProcess(opts: { name: string; rulesDir: string; backendPort: number; args?: string[]; smtpPort?: number; adminPort?: number }): Promise<GuardProcess> {
  const smtpPort = opts.smtpPort ?? (await freePort());
  const adminPort = opts.adminPort ?? (await freePort());
  const proc = spawn(
    process.execPath,
    [
      '--import', 'tsx', 'src/cli/main.ts',
      '--listen', `127.0.0.1:${smtpPort}`, '--admin', `127.0.0.1:${adminPort}`, '--backend', `127.0.0.1:${opts.backendPort}`,
      '--rules-dir', opts.rulesDir, '--guard-name', opts.name, '--log-level', 'info', ...(opts.args ?? []),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: withoutToken(process.env) },
  );
  let out = '';
  proc.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  proc.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  await withTimeout(
    new Promise<void>((resolve, reject) => {
      const check = () => (/"msg":"admin api listening"/.test(out) ? resolve() : undefined);
      proc.stdout!.on('data', check);
      proc.once('exit', (code) => reject(new Error(`guard ${opts.name} exited ${code}: ${out.slice(-3000)}`)));
    }),
    60_000,
    `guard ${opts.name} start`,
  );
  const base = `http://127.0.0.1:${adminPort}`;
  return {
    name: opts.name,
    smtpPort,
    adminPort,
    proc,
    output: () => out,
    logs: () => out.split('\n').flatMap((l) => {
      if (!l.startsWith('{')) return [];
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    }),
    async api(method, path, body, headers = {}) {
      const res = await fetch(`${base}/api/v1${path}`, {
        method,
        headers: { accept: 'application/json', ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(10_000),
      });
      const text = await res.text();
      return { status: res.status, body: text === '' ? undefined : JSON.parse(text), headers: res.headers };
    },
    async metrics() {
      const res = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(10_000) });
      return res.text();
    },
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise<void>((r) => proc.once('exit', () => r()));
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Poll until check() returns true, at most ms; returns the time it took. Bounded, never a bare sleep. */
export async function pollUntil(check: () => Promise<boolean>, ms: number, what: string, everyMs = 20): Promise<number> {
  const start = Date.now();
  for (;;) {
    if (await check()) return Date.now() - start;
    if (Date.now() - start > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

function withoutToken(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const copy = { ...env };
  delete copy['RELAY_GUARD_ADMIN_TOKEN'];
  return copy;
}
