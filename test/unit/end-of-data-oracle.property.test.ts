/**
 * The EndOfDataScanner with its bulk line-event search (WebAssembly SIMD, and the JavaScript
 * fallback) against the scanner it replaced (test/helpers/end-of-data-oracle.ts, unchanged): the
 * same steps — forwarded bytes per push, status, size, rest, smuggling kind, the resync after
 * too_large — for random inputs (long runs of ordinary lines with rare CR, LF, ".", NUL and
 * terminators), random chunkings, both modes and random size limits. And the finders against the
 * definition of a line event, byte by byte.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { EndOfDataScanner, type ScanStep } from '../../src/smtp/end-of-data.js';
import { createJsLineEventFinder, createWasmLineEventFinder, lineEventFinder, type LineEventFinder } from '../../src/smtp/line-event-finder.js';
import { OracleEndOfDataScanner } from '../helpers/end-of-data-oracle.js';

const RUNS = { numRuns: 400 };

const wasm = createWasmLineEventFinder();
const wasmSmallWindow = createWasmLineEventFinder({ windowBytes: 37 });
const js = createJsLineEventFinder();

const FINDERS: Array<[string, LineEventFinder]> = [
  ['wasm', wasm as LineEventFinder],
  ['wasm, 37-byte windows', wasmSmallWindow as LineEventFinder],
  ['js', js],
];

test('WebAssembly SIMD is available on this Node (the guard runs the fast path)', () => {
  expect(wasm).toBeDefined();
  expect(lineEventFinder()).not.toBe(undefined);
});

/** The contract, byte by byte (line-event-finder.ts module comment). */
function definition(chunk: Buffer, from: number, to: number, atLineStart: boolean): number {
  for (let k = from; k < to; k++) {
    const prev = k === from ? (atLineStart ? 0x0a : 0x78) : (chunk[k - 1] as number);
    const b = chunk[k] as number;
    if ((b === 0x0a) !== (prev === 0x0d)) return k;
    if (b === 0x2e && prev === 0x0a) return k;
  }
  return to;
}

/** Mostly ordinary lines (short and long), with the bytes that matter sprinkled in. */
const ordinary = fc.oneof(
  fc.integer({ min: 0, max: 200 }).map((n) => 'X'.repeat(n)),
  fc.string({ maxLength: 90 }).map((s) => s.replace(/[\r\n\0]/g, 'y')),
  fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a.map((b) => (b === 0x0d || b === 0x0a || b === 0 ? 0x41 : b))).toString('latin1')),
);
const special = fc.constantFrom('\r', '\n', '.', '\0', '\r\n.\r\n', '\n.\n', '\r\n.\n', '\n.\r\n', '\r.\r', '..', '.\r\n', '\r\r\n', '\r\n\r\n', '\n\r');
const longish = fc
  .array(
    fc.oneof(
      { weight: 12, arbitrary: ordinary.map((l) => `${l}\r\n`) },
      { weight: 3, arbitrary: ordinary },
      { weight: 2, arbitrary: special },
      { weight: 2, arbitrary: ordinary.map((l) => `.${l}\r\n`) },
    ),
    { maxLength: 60 },
  )
  .map((parts) => Buffer.from(parts.join(''), 'latin1'));

describe('LineEventFinder', () => {
  test.each(FINDERS)('%s: the first event in [from, to) as defined', (_name, finder) => {
    fc.assert(
      fc.property(longish, fc.nat(), fc.nat(), fc.boolean(), (buf, a, b, atLineStart) => {
        const from = buf.length === 0 ? 0 : a % (buf.length + 1);
        const to = from + (buf.length === from ? 0 : b % (buf.length - from + 1));
        finder.reset();
        expect(finder.find(buf, from, to, atLineStart)).toBe(definition(buf, from, to, atLineStart));
        // A second search in the same chunk, further on (the scanner's pattern within one push).
        const from2 = Math.min(to, from + 1 + (a % 97));
        expect(finder.find(buf, from2, to, !atLineStart)).toBe(definition(buf, from2, to, !atLineStart));
      }),
      { numRuns: 1000 },
    );
  });

  test.each(FINDERS)('%s: a chunk larger than the 64 KiB window, events near the window ends', (_name, finder) => {
    const line = `${'Z'.repeat(78)}\r\n`;
    const body = Buffer.from(line.repeat(2000), 'latin1'); // 160 000 bytes
    for (const at of [0, 65535, 65536, 65537, 131071, 131072, body.length - 1]) {
      for (const bad of [0x0a, 0x0d, 0x2e]) {
        const buf = Buffer.from(body);
        buf[at] = bad;
        finder.reset();
        expect(finder.find(buf, 0, buf.length, true)).toBe(definition(buf, 0, buf.length, true));
        expect(finder.find(buf, 5, buf.length, false)).toBe(definition(buf, 5, buf.length, false));
      }
    }
  });
});

// ── the scanner against the oracle ───────────────────────────────────────────────────────────

interface Step {
  forward: string;
  status: ScanStep['status'];
  size: number;
  rest?: string;
  smuggle?: string;
}

interface Scanner {
  push(chunk: Buffer): ScanStep;
  discardUntilEnd(chunk: Buffer): { done: boolean; rest: Buffer };
  readonly bytesSeen: number;
}

function cut(buf: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => (buf.length === 0 ? 0 : c % (buf.length + 1))))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(buf.subarray(prev, p));
    prev = p;
  }
  out.push(buf.subarray(prev));
  return out;
}

/** Every step the session would take: pushes until a terminal status, then the resync after too_large. */
function steps(s: Scanner, chunks: Buffer[]): Array<Step | { discard: { done: boolean; rest: string } } | { seen: number }> {
  const out: Array<Step | { discard: { done: boolean; rest: string } } | { seen: number }> = [];
  let k = 0;
  let last: ScanStep | undefined;
  while (k < chunks.length) {
    last = s.push(chunks[k] as Buffer);
    k++;
    const step: Step = { forward: Buffer.concat(last.forward).toString('latin1'), status: last.status, size: last.size };
    if (last.status === 'end') step.rest = last.rest.toString('latin1');
    if (last.status === 'smuggling') step.smuggle = last.smuggle;
    out.push(step);
    if (last.status !== 'more') break;
  }
  if (last?.status === 'too_large') {
    let d = s.discardUntilEnd(Buffer.alloc(0));
    out.push({ discard: { done: d.done, rest: d.rest.toString('latin1') } });
    while (!d.done && k < chunks.length) {
      d = s.discardUntilEnd(chunks[k] as Buffer);
      k++;
      out.push({ discard: { done: d.done, rest: d.rest.toString('latin1') } });
    }
  }
  // Pushes after a terminal status answer the same way.
  if (last && last.status !== 'too_large' && k < chunks.length) {
    const again = s.push(chunks[k] as Buffer);
    out.push({ forward: Buffer.concat(again.forward).toString('latin1'), status: again.status, size: again.size, ...(again.status === 'end' ? { rest: again.rest.toString('latin1') } : {}) });
  }
  out.push({ seen: s.bytesSeen });
  return out;
}

describe('EndOfDataScanner = the previous scanner (oracle)', () => {
  const modeArb = fc.constantFrom('reject' as const, 'normalize' as const);
  const maxArb = fc.oneof(fc.constant(10_000_000), fc.nat({ max: 300 }), fc.nat({ max: 5000 }));
  const cutsArb = fc.oneof(fc.array(fc.nat({ max: 20_000 }), { maxLength: 12 }), fc.array(fc.nat({ max: 400 }), { maxLength: 40 }));

  test.each(FINDERS)('%s finder: same steps for random inputs, chunkings, modes and limits', (_name, finder) => {
    fc.assert(
      fc.property(longish, cutsArb, modeArb, maxArb, (input, cuts, mode, maxBytes) => {
        const chunks = cut(input, cuts);
        const want = steps(new OracleEndOfDataScanner({ mode, maxBytes }), chunks);
        expect(steps(new EndOfDataScanner({ mode, maxBytes, finder }), chunks)).toEqual(want);
      }),
      RUNS,
    );
  });

  test('arbitrary bytes, one-byte chunks and whole input: same steps', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }).map((a) => Buffer.from(a)), modeArb, maxArb, (input, mode, maxBytes) => {
        for (const chunks of [[input], [...input].map((b) => Buffer.from([b]))]) {
          const want = steps(new OracleEndOfDataScanner({ mode, maxBytes }), chunks);
          expect(steps(new EndOfDataScanner({ mode, maxBytes }), chunks)).toEqual(want);
        }
      }),
      RUNS,
    );
  });

  test('a 1 MiB message of 80-byte lines in socket-sized chunks: same steps, one forwarded slice per chunk', () => {
    const line = `${'X'.repeat(78)}\r\n`;
    const body = Buffer.from(`${line.repeat(13_108)}.\r\nQUIT\r\n`, 'latin1');
    for (const size of [65536, 16384, 1000]) {
      const chunks: Buffer[] = [];
      for (let i = 0; i < body.length; i += size) chunks.push(body.subarray(i, i + size));
      for (const mode of ['reject', 'normalize'] as const) {
        const want = steps(new OracleEndOfDataScanner({ mode, maxBytes: 10_000_000 }), chunks);
        expect(steps(new EndOfDataScanner({ mode, maxBytes: 10_000_000 }), chunks)).toEqual(want);
      }
      // Zero-copy: each step forwards slices of its own chunk (plus at most a held-back constant).
      const s = new EndOfDataScanner({ mode: 'reject', maxBytes: 10_000_000 });
      for (const c of chunks) {
        const st = s.push(c);
        expect(st.forward.length).toBeLessThanOrEqual(2);
        for (const f of st.forward) if (f.length > 2) expect(f.buffer).toBe(c.buffer);
        if (st.status !== 'more') break;
      }
    }
  });
});
