/** Short fuzz run for CI (issue 9 §3): 300 seeded random sessions; every invariant must hold. */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { runFuzz } from '../../bench/lib/fuzz-core.js';
import { startFuzzTarget, type RunningFuzzTarget } from '../../bench/lib/fuzz-target.js';

let target: RunningFuzzTarget;
beforeAll(async () => {
  target = await startFuzzTarget();
});
afterAll(async () => {
  await target?.stop();
});

test('300 random sessions (seed 1): no invariant violation', async () => {
  const report = await runFuzz(target, { seed: 1, sessions: 300, concurrency: 16 });
  expect(report.violations).toEqual([]);
  // The run reached DATA often enough for the delivery invariants to mean something.
  expect(report.messagesTried).toBeGreaterThan(10);
}, 60_000);
