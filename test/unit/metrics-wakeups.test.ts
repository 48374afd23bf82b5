/**
 * A guard at rest must not wake up a hundred times a second. prom-client's default metrics sample the
 * event-loop delay with a timer, every 10 ms unless told otherwise; createMetrics() asks for
 * EVENT_LOOP_SAMPLE_MS. Each timer tick wakes the main thread from epoll, one voluntary context
 * switch, so the switches of an idle process count the ticks (Linux /proc). A control process with
 * prom-client's default precision shows that the count tells the two apart.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';
import { EVENT_LOOP_SAMPLE_MS } from '../../src/observability/metrics.js';

const METRICS_MODULE = fileURLToPath(new URL('../../src/observability/metrics.ts', import.meta.url));

/** Runs in a fresh node: the metrics only, idle; prints the main thread's voluntary switches over one second. */
const CHILD = `
import { readFileSync } from 'node:fs';
import { Registry, collectDefaultMetrics } from 'prom-client';
const { createMetrics } = await import(process.env.METRICS_MODULE);
if (process.env.MODE === 'guard') createMetrics(new Registry());
else collectDefaultMetrics({ register: new Registry() });
const switches = () => Number(/voluntary_ctxt_switches:\\s+(\\d+)/.exec(readFileSync('/proc/self/task/' + process.pid + '/status', 'utf8'))[1]);
setTimeout(() => {
  const a = switches();
  setTimeout(() => {
    process.stdout.write(JSON.stringify({ wakeups: switches() - a }));
    process.exit(0);
  }, 1000);
}, 300);
`;

function idleWakeups(mode: 'guard' | 'prom-client-default'): Promise<number> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', CHILD],
      { env: { ...process.env, MODE: mode, METRICS_MODULE }, timeout: 20_000 },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`${err.message}\n${stderr}`));
        resolve((JSON.parse(stdout) as { wakeups: number }).wakeups);
      },
    );
  });
}

// Linux only: the count comes from /proc (the guard's deploy targets and CI are Linux).
describe.skipIf(!existsSync('/proc/self/task'))('metrics at rest', () => {
  test(`the event-loop delay is sampled every ${EVENT_LOOP_SAMPLE_MS} ms, not prom-client's 10: a tenth of the wakeups`, async () => {
    expect(EVENT_LOOP_SAMPLE_MS).toBe(100);
    const guard = await idleWakeups('guard');
    const control = await idleWakeups('prom-client-default');
    // About 10 a second against about 100; generous bounds for a busy machine.
    expect(guard).toBeLessThan(30);
    expect(control).toBeGreaterThan(3 * guard);
    expect(control).toBeGreaterThan(40);
  }, 30_000);
});
