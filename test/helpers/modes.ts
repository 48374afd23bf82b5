/**
 * The two backend modes suites run in: per-client (one backend connection per client) and pooled
 * (a pool of warm backend sessions lent to clients one after the other).
 */
import type { RecordingBackend } from './recording-backend.js';

/** Pooled mode as in pool.test.ts: 2 warm sessions, at most 4. */
export const POOLED = { backend: { maxConnections: 20, pool: { enabled: true, minIdle: 2, max: 4, acquireTimeout: '10s', healthInterval: '30s' } } };

export const MODES: ReadonlyArray<{ mode: 'per-client' | 'pooled'; config: Record<string, unknown> }> = [
  { mode: 'per-client', config: {} },
  { mode: 'pooled', config: POOLED },
];

const isPlain = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The test's own `config` over the mode's, merged deeply: a test's `backend` keys (and `backend.pool`
 * keys) go beside the mode's instead of replacing them. Arrays and other values replace.
 */
export function withMode(modeConfig: Record<string, unknown>, config: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...modeConfig };
  for (const [k, v] of Object.entries(config)) {
    const under = out[k];
    out[k] = isPlain(v) && isPlain(under) ? withMode(under, v) : v;
  }
  return out;
}

/**
 * What the backend received from now on, as lines, across all its connections (a pooled session
 * carries several clients one after the other and was opened before the test; a per-client one
 * is new).
 */
export function since(b: RecordingBackend): () => string[] {
  const mark = b.mark();
  return () =>
    b
      .receivedSince(mark)
      .flatMap((c) => c.text.split('\r\n'))
      .filter((l) => l.length > 0);
}

/**
 * A line a backend may get from the guard itself at any time rather than from a client: a pooled
 * session being opened (the guard's own EHLO), checked (NOOP) or cleaned (RSET), or a per-client
 * connection being closed (QUIT). Tests that assert "no client command reached the backend" skip these.
 */
export function guardHousekeeping(line: string): boolean {
  return /^(EHLO relay-guard|NOOP|RSET|QUIT)$/.test(line);
}
