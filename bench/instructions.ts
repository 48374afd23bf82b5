/**
 * npm run bench:instructions -- [--path guard|pooled|pipe] [--workload W] [--messages N] [--main FILE] [--warmup N]
 *
 * User-space instructions the proxy executes for a fixed workload, counted by valgrind's callgrind:
 * repeatable on a busy machine where CPU time is not. The proxy runs under valgrind; after a warm-up
 * (JIT, connection caches) its counters are zeroed, Postfix smtp-source drives the workload through
 * it to smtp-sink, and the counters are dumped. Node runs with --single-threaded (GC and JIT work on
 * the main thread, counted once and in order, instead of on helper threads that vary run to run). Kernel time (syscalls) is not counted: compare the
 * number of writes separately (strace -c) when a change moves work between user space and the kernel.
 *
 * Workloads (as bench/bench.ts, smaller): 1mb (1 MiB messages, 2 sessions), persistent (1 KB,
 * kept sessions), one-per-conn (1 KB, one message per connection), 50-rcpts.
 * Prints one JSON line: { path, workload, messages, instructions, perMessage, perMiB }.
 * --main: another build's cli/main.js (A/B: build the old tree elsewhere and point at it).
 * --keep FILE: keep the callgrind dump (callgrind_annotate FILE; JIT code shows as ???, use
 * `npm run bench -- --profile` for the JavaScript side).
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { runToEnd } from './lib/proc.js';
import { startGuardProcess, startPipe, startSink, type Running } from './lib/paths.js';

const { values: opts } = parseArgs({
  options: {
    path: { type: 'string', default: 'guard' },
    workload: { type: 'string', default: '1mb' },
    messages: { type: 'string' },
    warmup: { type: 'string' },
    main: { type: 'string' },
    keep: { type: 'string' },
  },
  strict: true,
});

interface Workload {
  sessions: number;
  messages: number;
  size: number;
  rcpts: number;
  persistent: boolean;
  /**
   * Messages driven before counting. TurboFan compiles on the main thread here (--single-threaded):
   * a short warm-up leaves compilation inside the counted window and the count says more about
   * when V8 optimised than about the guard (one-per-conn with 100 warm-up connections counted over
   * twice the instructions it counts after 1500).
   */
  warmup: number;
}

const WORKLOADS: Record<string, Workload> = {
  '1mb': { sessions: 2, messages: 16, size: 1024 * 1024, rcpts: 1, persistent: true, warmup: 8 },
  persistent: { sessions: 4, messages: 400, size: 1024, rcpts: 1, persistent: true, warmup: 1500 },
  'one-per-conn': { sessions: 4, messages: 400, size: 1024, rcpts: 1, persistent: false, warmup: 1500 },
  '50-rcpts': { sessions: 4, messages: 60, size: 1024, rcpts: 50, persistent: true, warmup: 60 },
};

const found = WORKLOADS[opts.workload ?? '1mb'];
if (!found) throw new Error(`unknown workload ${opts.workload}; one of ${Object.keys(WORKLOADS).join(', ')}`);
const w: Workload = found;
if (opts.messages) w.messages = Number(opts.messages);

function sourceArgs(x: Workload, port: number): string[] {
  const a = ['-s', String(x.sessions), '-m', String(x.messages), '-l', String(x.size), '-r', String(x.rcpts), '-f', 'from@example.com', '-t', 'user@example.com', '-M', 'bench.example'];
  if (x.persistent) a.unshift('-d');
  return [...a, `127.0.0.1:${port}`];
}

async function drive(x: Workload, port: number): Promise<void> {
  const r = await runToEnd('/usr/sbin/smtp-source', sourceArgs(x, port));
  if (r.code !== 0 || r.stderr.trim()) throw new Error(`smtp-source failed (exit ${r.code}): ${r.stderr.slice(0, 2000)}`);
}

function lastDump(dir: string): string {
  // The dump written by `callgrind_control -d` (the newest numbered part): its "summary:" / "totals:" line.
  const parts = readdirSync(dir).filter((f) => /^cg\.\d+\.\d+$/.test(f));
  parts.sort((a, b) => Number(a.split('.')[2]) - Number(b.split('.')[2]));
  const last = parts.at(-1);
  if (!last) throw new Error(`no callgrind dump in ${dir}: ${readdirSync(dir).join(', ')}`);
  return path.join(dir, last);
}

function totalInstructions(file: string): number {
  const text = readFileSync(file, 'utf8');
  const m = /^(?:summary|totals): (\d+)/m.exec(text);
  if (!m) throw new Error(`no totals in ${file}`);
  return Number(m[1]);
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'rg-icount-'));
  const launcher = ['valgrind', '--tool=callgrind', `--callgrind-out-file=${dir}/cg.%p`, '--dump-instr=no', '--dump-line=no', '--compress-strings=no', process.execPath, '--single-threaded'];
  const sink = await startSink();
  let target: Running | undefined;
  try {
    if (opts.path === 'pipe') target = await startPipe(sink.port, launcher);
    else if (opts.path === 'guard' || opts.path === 'pooled') {
      target = await startGuardProcess({ backendPort: sink.port, launcher, ...(opts.main ? { main: path.resolve(opts.main) } : {}), ...(opts.path === 'pooled' ? { pool: { minIdle: 4, max: 16 } } : {}) });
    } else throw new Error(`unknown path ${opts.path}`);
    const pid = String(target.pid);
    await drive({ ...w, messages: Number(opts.warmup ?? w.warmup) }, target.port);
    execFileSync('callgrind_control', ['-z', pid], { stdio: 'ignore' });
    await drive(w, target.port);
    execFileSync('callgrind_control', ['-d', pid], { stdio: 'ignore' });
    const dump = lastDump(dir);
    const instructions = totalInstructions(dump);
    if (opts.keep) copyFileSync(dump, opts.keep);
    const mib = (w.messages * w.size) / (1024 * 1024);
    process.stdout.write(
      `${JSON.stringify({ path: opts.path, workload: opts.workload, messages: w.messages, instructions, perMessage: Math.round(instructions / w.messages), perMiB: Math.round(instructions / mib) })}\n`,
    );
  } finally {
    await target?.stop();
    await sink.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
