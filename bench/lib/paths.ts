/**
 * The processes a bench run compares: Postfix smtp-sink (the backend), the plain Node pipe proxy,
 * relay-guard (built dist/, its own process, limits off) and HAProxy in TCP mode. Each listens on
 * 127.0.0.1 and greets before start*() resolves.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { stringify } from 'yaml';
import { freePort, startChild, waitGreeting, type Child } from './proc.js';
import { HEAP_GROWING_PERCENT, MALLOC_TUNABLES } from '../../src/cli/memory-tuning.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface Running {
  name: string;
  port: number;
  /** The proxy process measured (undefined for the direct path). */
  pid: number | undefined;
  child: Child | undefined;
  stop(): Promise<void>;
}

export async function startSink(opts: { maxSessions?: number } = {}): Promise<Running> {
  const port = await freePort();
  // -u nobody: drop root; -m: simultaneous sessions (5000 idle clients need more than the 256 default).
  const child = startChild('/usr/sbin/smtp-sink', ['-u', 'nobody', '-m', String(opts.maxSessions ?? 6000), `127.0.0.1:${port}`, '4096']);
  await waitGreeting(port, 'smtp-sink');
  return { name: 'sink', port, pid: child.pid, child, stop: () => child.stop() };
}

/** One of the bench's own proxies (bench/*.ts), transpiled to plain JavaScript so that it runs on bare node like the built guard. */
async function startBenchScript(name: string, script: string, args: string[], launcher: string[] = []): Promise<Running> {
  const dir = mkdtempSync(path.join(tmpdir(), `rg-${name}-`));
  const src = readFileSync(path.join(ROOT, 'bench', script), 'utf8');
  const js = ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
  const file = path.join(dir, script.replace(/\.ts$/, '.mjs'));
  writeFileSync(file, js);
  const port = await freePort();
  // The memory settings the guard runs with (src/cli/memory-tuning.ts): the V8 heap growing percent it
  // sets itself and the malloc trim threshold its deploy files set. Without them a Node proxy's CPU per
  // MiB depends on whether a full GC has run yet and on where glibc's heap top happens to be (README
  // "Performance"): every Node path is measured in the same regime.
  const child = startChild(launcher[0] ?? process.execPath, [...launcher.slice(1), `--heap-growing-percent=${HEAP_GROWING_PERCENT}`, file, String(port), ...args], {
    env: { ...process.env, GLIBC_TUNABLES: MALLOC_TUNABLES },
  });
  await waitGreeting(port, name, launcher.length > 0 ? 900_000 : undefined);
  return {
    name,
    port,
    pid: child.pid,
    child,
    stop: async () => {
      await child.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The plain Node pipe proxy (bench/pipe-proxy.ts). */
export function startPipe(backendPort: number, launcher: string[] = []): Promise<Running> {
  return startBenchScript('pipe', 'pipe-proxy.ts', [String(backendPort)], launcher);
}

/** The bare pooled forwarder (bench/pool-floor.ts): pooled mode with none of the guard's work. */
export function startPoolFloor(backendPort: number, sessions: number): Promise<Running> {
  return startBenchScript('floor', 'pool-floor.ts', [String(backendPort), String(sessions)]);
}

/** A Node process answering the SMTP dialogue itself, no backend (bench/node-endpoint.ts): the ceiling of a Node proxy. */
export function startNodeEndpoint(): Promise<Running> {
  return startBenchScript('endpoint', 'node-endpoint.ts', []);
}

export interface GuardProcessOptions {
  backendPort: number;
  /** Extra node flags (e.g. --cpu-prof). */
  nodeArgs?: string[];
  /** Another build's cli/main.js (A/B comparisons); default dist/cli/main.js. */
  main?: string;
  /** Pooled mode (README "Pooled mode"): backend sessions lent per transaction. */
  pool?: { minIdle: number; max: number };
  /** A command line that runs node, used instead of it (e.g. valgrind --tool=callgrind node --single-threaded): the process is `launcher… args…`. */
  launcher?: string[];
}

/** relay-guard from dist/ with limits off and caps far above the load (limits must not interfere); per-client or pooled. */
export async function startGuardProcess(opts: GuardProcessOptions): Promise<Running> {
  const main = opts.main ?? path.join(ROOT, 'dist', 'cli', 'main.js');
  if (!existsSync(main)) throw new Error(`${main} is missing: run "npm run build" first`);
  const dir = mkdtempSync(path.join(tmpdir(), 'rg-bench-guard-'));
  const rulesDir = path.join(dir, 'rules');
  const { mkdirSync } = await import('node:fs');
  mkdirSync(rulesDir);
  writeFileSync(path.join(rulesDir, 'accepted-domains.yaml'), stringify(['example.com']));
  writeFileSync(path.join(rulesDir, 'limits.yaml'), stringify({ enabled: false, prefixV4: 24, prefixV6: 64, limits: [] }));
  const port = await freePort();
  const config = {
    listeners: [{ name: 'mx', address: '127.0.0.1', port, starttls: false, maxConnections: 100_000 }],
    backends: [{ host: '127.0.0.1', port: opts.backendPort }],
    backend: {
      maxConnections: 100_000,
      ...(opts.pool ? { pool: { enabled: true, minIdle: opts.pool.minIdle, max: opts.pool.max, acquireTimeout: '30s', healthInterval: '30s' } } : {}),
    },
    smtp: { maxTransactions: 10_000_000, maxRecipients: 1000, errorDelay: '0s' },
    rulesDir,
    log: { level: 'warn' },
    admin: { enabled: false, address: '127.0.0.1', port: 0, metricsAuth: false },
  };
  const configFile = path.join(dir, 'relay-guard.yaml');
  writeFileSync(configFile, stringify(config));
  const args = [...(opts.nodeArgs ?? []), main, '--config', configFile, '--accepted-domain', 'example.com', '--no-admin', '--log-level', 'warn', '--rules-dir', rulesDir];
  const launcher = opts.launcher ?? [];
  // GLIBC_TUNABLES as `npm start`, the systemd unit and the container image set it (src/cli/memory-tuning.ts).
  const child = startChild(launcher[0] ?? process.execPath, [...launcher.slice(1), ...args], { env: { ...process.env, NODE_ENV: 'production', GLIBC_TUNABLES: MALLOC_TUNABLES } });
  try {
    await waitGreeting(port, 'relay-guard', launcher.length > 0 ? 900_000 : undefined);
  } catch (err) {
    await child.stop('SIGKILL');
    throw new Error(`${(err as Error).message}\n${child.stderr()}`);
  }
  return {
    name: opts.pool ? 'pooled' : 'guard',
    port,
    pid: child.pid,
    child,
    stop: async () => {
      await child.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** HAProxy in TCP mode, one thread (like one Node process), foreground so its pid is the worker. */
export async function startHaproxyTcp(backendPort: number): Promise<Running> {
  const dir = mkdtempSync(path.join(tmpdir(), 'rg-bench-haproxy-'));
  const port = await freePort();
  const cfg = path.join(dir, 'haproxy.cfg');
  writeFileSync(
    cfg,
    [
      'global',
      '  maxconn 9000',
      '  nbthread 1',
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 120s',
      '  timeout server 120s',
      'frontend f',
      `  bind 127.0.0.1:${port}`,
      '  maxconn 9000',
      '  default_backend b',
      'backend b',
      `  server s 127.0.0.1:${backendPort} maxconn 20000`,
      '',
    ].join('\n'),
  );
  const child = startChild('haproxy', ['-f', cfg, '-db']);
  try {
    await waitGreeting(port, 'haproxy');
  } catch (err) {
    await child.stop('SIGKILL');
    throw new Error(`${(err as Error).message}\n${child.stderr()}`);
  }
  return {
    name: 'haproxy',
    port,
    pid: child.pid,
    child,
    stop: async () => {
      await child.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
