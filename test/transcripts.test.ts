/**
 * Golden SMTP dialogs (test/transcripts/*.smtp), run against a real guard in front of a
 * recording backend. One directive per line:
 *   C: text       the client sends text + CRLF (without waiting: several C: lines pipeline)
 *   R: text       the client sends raw bytes, escapes \r \n \0 \t \\ decoded, no CRLF added
 *   S: prefix     the next reply (all its lines, joined by \n) starts with prefix
 *   S: <closed>   the guard has closed the connection
 *   B: line       the backend received exactly this line since the transcript began (waits)
 *   B! prefix     checked at the end: since the transcript began, the backend never saw a line starting with prefix
 *   @from ip      (before any C:) the client's source address; default 127.0.0.9, an untrusted stranger
 *   # comment, blank lines ignored
 * Rules: accepted domain example.com; relay network 127.0.0.2/32.
 *
 * Every transcript runs twice: with a backend connection per client, and in pooled mode (README
 * "Pooled mode": the guard greets and answers HELO/EHLO itself and lends a pre-opened backend
 * session from MAIL to the reply to end-of-data). "The backend received" means on any backend
 * connection, since the transcript began: pooled sessions were opened before it and are shared.
 * In pooled mode the backend sees the guard's own EHLO, never the client's: a `B: EHLO …` or
 * `B: HELO …` line is checked in per-client mode only.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend, type RecordingMark } from './helpers/recording-backend.js';
import { MODES, withMode } from './helpers/modes.js';
import { startGuard, type StartedGuard } from './helpers/start-guard.js';
import { Dialog } from './helpers/dialog.js';
import { until } from './helpers/with-timeout.js';

const DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'transcripts');
const FILES = readdirSync(DIR).filter((f) => f.endsWith('.smtp')).sort();

type Step =
  | { kind: 'C'; text: string }
  | { kind: 'R'; bytes: Buffer }
  | { kind: 'S'; prefix: string }
  | { kind: 'closed' }
  | { kind: 'B'; line: string }
  | { kind: 'B!'; prefix: string };

interface Transcript {
  from: string;
  steps: Step[];
}

function unescape(s: string): Buffer {
  const map: Record<string, string> = { r: '\r', n: '\n', '0': '\0', t: '\t', '\\': '\\' };
  return Buffer.from(s.replace(/\\(.)/g, (_m, c: string) => map[c] ?? `\\${c}`), 'latin1');
}

function parseTranscript(text: string, name: string): Transcript {
  const t: Transcript = { from: '127.0.0.9', steps: [] };
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '' || line.startsWith('#')) return;
    const m = /^(C|R|S|B|B!): ?(.*)$/.exec(line) ?? /^(B!) (.*)$/.exec(line);
    if (line.startsWith('@from ')) {
      t.from = line.slice(6).trim();
      return;
    }
    if (!m) throw new Error(`${name}:${i + 1}: cannot parse ${JSON.stringify(line)}`);
    const [, tag, rest = ''] = m;
    if (tag === 'C') t.steps.push({ kind: 'C', text: rest });
    else if (tag === 'R') t.steps.push({ kind: 'R', bytes: unescape(rest) });
    else if (tag === 'S') t.steps.push(rest === '<closed>' ? { kind: 'closed' } : { kind: 'S', prefix: rest });
    else if (tag === 'B') t.steps.push({ kind: 'B', line: rest });
    else t.steps.push({ kind: 'B!', prefix: rest });
  });
  if (!t.steps.some((s) => s.kind === 'S')) throw new Error(`${name}: no S: line`);
  return t;
}

test('the transcript parser refuses a line it does not know', () => {
  expect(() => parseTranscript('S: 220\nX: what\n', 'bad')).toThrow(/cannot parse/);
  expect(() => parseTranscript('C: NOOP\n', 'bad')).toThrow(/no S:/);
  expect(parseTranscript('R: a\\r\\n.\\0\nS: 220\n', 'ok').steps[0]).toEqual({ kind: 'R', bytes: Buffer.from('a\r\n.\0', 'latin1') });
});

describe.each(MODES)('transcripts, backend $mode', ({ mode, config }) => {
  let backend: RecordingBackend;
  let g: StartedGuard;

  beforeAll(async () => {
    backend = await startRecordingBackend();
    const own = { timeouts: { command: '5m', data: '3m', session: '30m', drain: '500ms' } };
    g = await startGuard({
      backendPort: backend.port,
      rules: { relayNetworks: ['127.0.0.2/32'] },
      config: withMode(config, own),
    });
  });

  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  /** Lines the backend received since `mark`, on every connection (those opened since included). */
  function backendLines(mark: RecordingMark): string[] {
    return backend
      .receivedSince(mark)
      .flatMap((c) => c.text.split('\r\n'))
      .filter((l) => l.length > 0);
  }

  /**
   * After the client is gone: wait until every byte the session caused is recorded. Per client,
   * its backend connection is closed. Pooled: no guard session is left, every pooled session is
   * idle again (a closing RSET has had its reply) and each one the pool dropped is closed at the
   * backend too.
   */
  function settled(file: string): Promise<void> {
    if (mode === 'per-client') return until(() => backend.openConnections() === 0, 3000, `${file}: backend connection closed`);
    const pool = g.guard.services.pool!;
    return until(
      () => g.guard.services.registry.size === 0 && pool.total === pool.idleCount && backend.openConnections() === pool.idleCount,
      3000,
      `${file}: guard session ended and pool idle`,
    );
  }

  test('there are golden transcripts to run', () => {
    expect(FILES.length).toBeGreaterThanOrEqual(10);
  });

  test.each(FILES)('%s', async (file) => {
    const t = parseTranscript(readFileSync(path.join(DIR, file), 'utf8'), file);
    const mark = backend.mark();
    const d = await Dialog.connect(g.port, { localAddress: t.from });
    try {
      for (const [i, step] of t.steps.entries()) {
        const where = `${file} step ${i + 1}`;
        switch (step.kind) {
          case 'C':
            d.send(`${step.text}\r\n`);
            break;
          case 'R':
            d.send(step.bytes);
            break;
          case 'S': {
            const r = await d.reply(5000);
            expect(r.text.startsWith(step.prefix), `${where}: expected reply starting ${JSON.stringify(step.prefix)}, got ${JSON.stringify(r.text)}`).toBe(true);
            break;
          }
          case 'closed':
            await d.waitClosed(5000);
            break;
          case 'B':
            // Pooled: the backend session was greeted by the guard's own EHLO long before.
            if (mode === 'pooled' && /^(EHLO|HELO) /i.test(step.line)) break;
            await until(() => backendLines(mark).includes(step.line), 3000, `${where}: backend line ${JSON.stringify(step.line)}`);
            break;
          case 'B!':
            break;
        }
      }
      // Let the session end (QUIT or close) so that every forwarded byte has been recorded.
      if (!d.closed) {
        d.send('QUIT\r\n');
        await d.waitClosed(5000);
      }
      await settled(file);
      const seen = backendLines(mark);
      for (const step of t.steps) {
        if (step.kind === 'B!') expect(seen.filter((l) => l.startsWith(step.prefix)), `${file}: backend saw ${step.prefix}`).toEqual([]);
      }
    } finally {
      d.close();
    }
  });
});
