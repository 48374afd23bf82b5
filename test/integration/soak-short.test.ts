/** Short soak for CI (issue 9 §4): 500 messages, random client drops, backend connections killed; per-client and pooled mode. */
import { afterEach, expect, test } from 'vitest';
import { runSoak } from '../../bench/lib/soak-core.js';
import { startFuzzTarget, type RunningFuzzTarget } from '../../bench/lib/fuzz-target.js';

let target: RunningFuzzTarget | undefined;
afterEach(async () => {
  await target?.stop();
  target = undefined;
});

for (const pool of [undefined, 3]) {
  test(`${pool ? `pooled (${pool} backend sessions)` : 'per-client'}: 500 messages, every 250 after end-of-data reached the backend, nothing leaks`, async () => {
    target = await startFuzzTarget(pool ? { pool } : {});
    const report = await runSoak(target, { seed: 20261122, messages: 500, concurrency: 8, killEvery: 97 });
    expect(report.violations).toEqual([]);
    expect(report.backendKills).toBeGreaterThanOrEqual(5);
    expect(report.dropped).toBeGreaterThan(0);
    // Most messages go through: the invariant is not vacuous.
    expect(report.acknowledged).toBeGreaterThan(300);
  }, 60_000);
}
