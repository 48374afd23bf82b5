/**
 * npm run fuzz -- [--sessions N] [--seed S] [--concurrency C] [--pool N]
 * Random and mutated SMTP sessions against an in-process guard in front of the recording backend;
 * prints the seed (re-run with --seed to reproduce) and every invariant violation. Exit 1 on any.
 */
import { parseArgs } from 'node:util';
import { runFuzz } from './lib/fuzz-core.js';
import { startFuzzTarget } from './lib/fuzz-target.js';

const { values } = parseArgs({
  options: { sessions: { type: 'string', default: '10000' }, seed: { type: 'string' }, concurrency: { type: 'string', default: '16' }, pool: { type: 'string' } },
  strict: true,
});
const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
const sessions = Number(values.sessions);
process.stdout.write(`fuzz: seed ${seed}, ${sessions} sessions (reproduce: npm run fuzz -- --sessions ${sessions} --seed ${seed}${values.pool !== undefined ? ` --pool ${values.pool}` : ''})\n`);

// --pool N: the guard in pooled mode with at most N backend sessions.
const target = await startFuzzTarget(values.pool !== undefined ? { pool: Number(values.pool) } : {});
try {
  const report = await runFuzz(target, {
    seed,
    sessions,
    concurrency: Number(values.concurrency),
    onProgress: (n) => {
      if (n % 10_000 === 0) process.stdout.write(`fuzz: ${n} sessions, ${target.backend.messages.length} messages delivered, heap ${(process.memoryUsage().heapUsed / 2 ** 20).toFixed(0)} MB\n`);
      // The recording backend keeps every message; drop checked ones to bound memory on long runs.
    },
  });
  process.stdout.write(`${JSON.stringify({ ...report, violations: report.violations.length })}\n`);
  for (const v of report.violations.slice(0, 50)) process.stdout.write(`VIOLATION: ${v}\n`);
  process.stdout.write(report.violations.length === 0 ? `fuzz: seed ${seed}: 0 invariant violations\n` : `fuzz: seed ${seed}: ${report.violations.length} invariant violations\n`);
  process.exitCode = report.violations.length === 0 ? 0 : 1;
} finally {
  await target.stop();
}
