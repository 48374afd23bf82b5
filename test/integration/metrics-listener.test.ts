/** The optional listener that serves only /metrics (config `metrics: { address, port }`). */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';

let backend: RecordingBackend;
let g: StartedGuard;

beforeAll(async () => {
  backend = await startRecordingBackend();
  g = await startGuard({ backendPort: backend.port, config: { metrics: { address: '127.0.0.1', port: 0 } } });
});
afterAll(async () => {
  await g?.stop();
  await backend?.close();
});

test('serves Prometheus text at /metrics and nothing else', async () => {
  const a = g.guard.metricsAddress();
  expect(a).toBeDefined();
  const res = await fetch(`http://127.0.0.1:${a!.port}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toContain('text/plain');
  const text = await res.text();
  expect(text).toContain('relay_guard_build_info');
  expect((await fetch(`http://127.0.0.1:${a!.port}/api/v1/rules`)).status).toBe(404);
});

test('the backend metric label is never an IP address', async () => {
  const text = await (await fetch(`http://127.0.0.1:${g.guard.metricsAddress()!.port}/metrics`)).text();
  const labels = [...text.matchAll(/backend="([^"]*)"/g)].map((m) => m[1]);
  expect(labels.length).toBeGreaterThan(0);
  for (const l of labels) expect(l).not.toMatch(/\d+\.\d+\.\d+\.\d+/);
});
