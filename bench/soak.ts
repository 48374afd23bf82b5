/**
 * npm run soak -- [--messages N] [--seed S] [--concurrency C] [--pool N]
 * Messages through an in-process guard to the recording backend, clients dropping at random
 * points, backend connections killed every ~1000 messages. Exit 1 on any invariant violation.
 */
import { parseArgs } from 'node:util';
import { runSoak } from './lib/soak-core.js';
import { startFuzzTarget } from './lib/fuzz-target.js';

const { values } = parseArgs({
  options: { messages: { type: 'string', default: '100000' }, seed: { type: 'string' }, concurrency: { type: 'string', default: '16' }, pool: { type: 'string' } },
  strict: true,
});
const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
const messages = Number(values.messages);
process.stdout.write(`soak: seed ${seed}, ${messages} messages (reproduce: npm run soak -- --messages ${messages} --seed ${seed}${values.pool !== undefined ? ` --pool ${values.pool}` : ''})\n`);
// --pool N: the guard in pooled mode with at most N backend sessions.
const target = await startFuzzTarget(values.pool !== undefined ? { pool: Number(values.pool) } : {});
try {
  const report = await runSoak(target, {
    seed,
    messages,
    concurrency: Number(values.concurrency),
    onProgress: (n) => process.stdout.write(`soak: ${n} messages, ${target.backend.messages.length} at the backend, heap ${(process.memoryUsage().heapUsed / 2 ** 20).toFixed(0)} MB\n`),
  });
  process.stdout.write(`${JSON.stringify({ ...report, violations: report.violations.length })}\n`);
  for (const v of report.violations.slice(0, 50)) process.stdout.write(`VIOLATION: ${v}\n`);
  process.stdout.write(`soak: seed ${seed}: ${report.violations.length} invariant violations\n`);
  process.exitCode = report.violations.length === 0 ? 0 : 1;
} finally {
  await target.stop();
}
