/**
 * Soak core (issue 9 §4): many messages, clients dropping at random points, the backend's
 * connections killed (a backend crash) every so often. Invariant: every message the guard
 * acknowledged with 250 after end-of-data reached the backend (matched by a unique Message-ID);
 * and nothing leaks: guard sessions back to 0, active handles and heap back near baseline.
 */
import net from 'node:net';
import { prng } from './fuzz-core.js';
import type { RunningFuzzTarget } from './fuzz-target.js';

export interface SoakReport {
  seed: number;
  messages: number;
  acknowledged: number;
  dropped: number;
  refusedOrFailed: number;
  backendKills: number;
  violations: string[];
  handlesBefore: number;
  handlesAfter: number;
  heapBeforeMb: number;
  heapAfterMb: number;
  ms: number;
}

const STEPS = ['EHLO soak.test', 'MAIL FROM:<soak@sender.test>', 'RCPT TO:<user@example.com>', 'DATA'];

/** One lock-step message; `dropAt` (0..5) closes the client before that step, 6 = never. */
function sendOne(port: number, id: string, dropAt: number, timeoutMs: number): Promise<'ack' | 'dropped' | 'refused'> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.9' });
    let buf = '';
    let step = 0;
    let done = false;
    const finish = (v: 'ack' | 'dropped' | 'refused') => {
      if (done) return;
      done = true;
      clearTimeout(t);
      s.destroy();
      resolve(v);
    };
    const t = setTimeout(() => finish('refused'), timeoutMs);
    s.on('error', () => finish(step > 5 ? 'refused' : 'refused'));
    s.on('close', () => finish('refused'));
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (;;) {
        const m = /^(\d{3}) [^\r\n]*\r\n/m.exec(buf);
        if (!m) return;
        buf = buf.slice(m.index + m[0].length);
        const code = Number(m[1]);
        if (step === dropAt) return finish('dropped');
        if (step === 5) {
          if (code === 250) {
            s.write('QUIT\r\n');
            return finish('ack');
          }
          return finish('refused');
        }
        const ok = step === 4 ? code === 354 : step === 0 ? code === 220 : code === 250;
        if (!ok) return finish('refused');
        if (step < 4) s.write(`${STEPS[step]}\r\n`);
        else s.write(`Message-ID: <${id}@soak.test>\r\nSubject: soak\r\n\r\nbody of ${id}\r\n.\r\n`);
        step++;
      }
    });
  });
}

export async function runSoak(target: RunningFuzzTarget, opts: { seed: number; messages: number; concurrency?: number; killEvery?: number; onProgress?: (n: number) => void }): Promise<SoakReport> {
  const started = Date.now();
  const r = prng(opts.seed);
  const handles = () => (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length;
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const handlesBefore = handles();
  const heapBefore = process.memoryUsage().heapUsed;
  const acked: string[] = [];
  let dropped = 0;
  let refused = 0;
  let kills = 0;
  let next = 0;
  const killEvery = opts.killEvery ?? 997;
  const worker = async () => {
    while (next < opts.messages) {
      const n = next++;
      if (n > 0 && n % killEvery === 0) {
        target.backend.killConnections(); // the backend crashes: every open backend session dies
        kills++;
      }
      const dropAt = r() < 0.1 ? Math.floor(r() * 6) : 6;
      const id = `soak-${opts.seed}-${n}`;
      const v = await sendOne(target.port, id, dropAt, 10_000);
      if (v === 'ack') acked.push(id);
      else if (v === 'dropped') dropped++;
      else refused++;
      if ((n + 1) % 10_000 === 0) opts.onProgress?.(n + 1);
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency ?? 16 }, worker));
  const violations: string[] = [];
  const deadline = Date.now() + 10_000;
  while (target.activeSessions() > 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
  if (target.activeSessions() > 0) violations.push(`${target.activeSessions()} guard sessions still active`);
  const delivered = new Set<string>();
  for (const m of target.backend.messages) {
    const id = /Message-ID: <([^@>]+)@soak\.test>/.exec(m.body.toString('latin1'))?.[1];
    if (id) delivered.add(id);
  }
  for (const id of acked) if (!delivered.has(id)) violations.push(`acknowledged but not at the backend: ${id}`);
  gc?.();
  await new Promise((res) => setTimeout(res, 200));
  const handlesAfter = handles();
  if (handlesAfter > handlesBefore + 5 + target.handleAllowance) violations.push(`active handles grew from ${handlesBefore} to ${handlesAfter}`);
  return {
    seed: opts.seed,
    messages: opts.messages,
    acknowledged: acked.length,
    dropped,
    refusedOrFailed: refused,
    backendKills: kills,
    violations,
    handlesBefore,
    handlesAfter,
    heapBeforeMb: heapBefore / 2 ** 20,
    heapAfterMb: (gc?.(), process.memoryUsage().heapUsed / 2 ** 20),
    ms: Date.now() - started,
  };
}
