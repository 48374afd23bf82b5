/** Short fuzz run for CI (issue 9 §3): 300 seeded random sessions; every invariant must hold, per-client and pooled. */
import { afterEach, expect, test } from 'vitest';
import { runFuzz } from '../../bench/lib/fuzz-core.js';
import { startFuzzTarget, type RunningFuzzTarget } from '../../bench/lib/fuzz-target.js';

let target: RunningFuzzTarget | undefined;
afterEach(async () => {
  await target?.stop();
  target = undefined;
});

for (const pool of [undefined, 3]) {
  test(`${pool ? `pooled (${pool} backend sessions)` : 'per-client'}: 300 random sessions (seed 1), no invariant violation`, async () => {
    target = await startFuzzTarget(pool ? { pool } : {});
    const report = await runFuzz(target, { seed: 1, sessions: 300, concurrency: 16 });
    expect(report.violations).toEqual([]);
    // The run reached DATA often enough for the delivery invariants to mean something.
    expect(report.messagesTried).toBeGreaterThan(10);
  }, 60_000);
}
