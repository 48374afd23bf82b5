/**
 * Property tests for the three streaming parsers of the SMTP codec: however the byte stream is
 * cut into chunks (including 1-byte chunks), the result is the same; arbitrary bytes never throw.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { EndOfDataScanner, type ScanStep } from '../../src/smtp/end-of-data.js';
import { CommandLineReader } from '../../src/smtp/line-reader.js';
import { ReplyParser, type ReplyEvent } from '../../src/smtp/reply-parser.js';
import { formatReply, type Reply } from '../../src/smtp/reply.js';

const RUNS = { numRuns: 300 };

/** Cut `buf` at the given positions (any order, duplicates and out-of-range values allowed). */
function split(buf: Buffer, cuts: number[]): Buffer[] {
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

function bytewise(buf: Buffer): Buffer[] {
  return [...buf].map((b) => Buffer.from([b]));
}

/** Byte streams rich in the bytes that matter: CR, LF, ".", NUL, terminators, plus arbitrary bytes. */
const smtpish = fc
  .array(
    fc.oneof(
      fc.constantFrom('\r\n', '\r', '\n', '.', '\0', '\r\n.\r\n', '\n.\n', '\r\n.\n', '\n.\r\n', '\r.\r', '..', 'QUIT\r\n', '.\r\n'),
      fc.string({ maxLength: 12 }),
      fc.uint8Array({ maxLength: 8 }).map((a) => Buffer.from(a).toString('latin1')),
    ),
    { maxLength: 40 },
  )
  .map((parts) => Buffer.from(parts.join(''), 'latin1'));

const cutsArb = fc.array(fc.nat({ max: 1000 }), { maxLength: 12 });

// ── EndOfDataScanner ─────────────────────────────────────────────────────────────────────────

interface ScanResult {
  forward: Buffer;
  status: ScanStep['status'];
  size: number;
  rest?: Buffer;
  smuggle?: string;
  discarded?: { done: boolean; rest: Buffer };
}

function runScanner(chunks: Buffer[], mode: 'reject' | 'normalize', maxBytes: number): ScanResult {
  const s = new EndOfDataScanner({ mode, maxBytes });
  const fwd: Buffer[] = [];
  let k = 0;
  let last: ScanStep = { forward: [], size: 0, status: 'more' };
  while (k < chunks.length) {
    last = s.push(chunks[k] as Buffer);
    k++;
    fwd.push(...last.forward);
    if (last.status !== 'more') break;
  }
  const later = chunks.slice(k);
  const out: ScanResult = { forward: Buffer.concat(fwd), status: last.status, size: last.size };
  if (last.status === 'end') out.rest = Buffer.concat([last.rest, ...later]);
  if (last.status === 'smuggling') out.smuggle = last.smuggle;
  if (last.status === 'too_large') {
    // Resync: feed the rest through discardUntilEnd, as the session does.
    let d = s.discardUntilEnd(Buffer.alloc(0));
    const restParts: Buffer[] = [];
    for (const c of later) {
      if (d.done) restParts.push(c);
      else d = s.discardUntilEnd(c);
    }
    out.discarded = { done: d.done, rest: Buffer.concat([d.rest, ...restParts]) };
  }
  return out;
}

function hasBareCrLfOrNul(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) {
    const c = b[i];
    if (c === 0x00) return true;
    if (c === 0x0d && b[i + 1] !== 0x0a) return true;
    if (c === 0x0a && b[i - 1] !== 0x0d) return true;
  }
  return false;
}

describe('EndOfDataScanner properties', () => {
  const modeArb = fc.constantFrom('reject' as const, 'normalize' as const);
  const maxArb = fc.oneof(fc.constant(1_000_000), fc.nat({ max: 64 }));

  test('chunking never changes the result (random cuts and 1-byte chunks)', () => {
    fc.assert(
      fc.property(smtpish, cutsArb, modeArb, maxArb, (input, cuts, mode, max) => {
        const whole = runScanner([input], mode, max);
        expect(runScanner(split(input, cuts), mode, max)).toEqual(whole);
        expect(runScanner(bytewise(input), mode, max)).toEqual(whole);
      }),
      RUNS,
    );
  });

  test('arbitrary bytes never throw and forwarded bytes never hold a bare CR, bare LF or NUL', () => {
    fc.assert(
      fc.property(fc.oneof(smtpish, fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a))), cutsArb, modeArb, maxArb, (input, cuts, mode, max) => {
        const r = runScanner(split(input, cuts), mode, max);
        expect(hasBareCrLfOrNul(r.forward)).toBe(false);
        expect(r.size).toBeLessThanOrEqual(max);
        if (r.status === 'end') expect(r.forward.subarray(-3).toString('latin1')).toBe('.\r\n');
      }),
      RUNS,
    );
  });

  test('in reject mode the forwarded bytes are a prefix of the input, and forward + rest = input at the end', () => {
    fc.assert(
      fc.property(smtpish, cutsArb, maxArb, (input, cuts, max) => {
        const r = runScanner(split(input, cuts), 'reject', max);
        expect(input.subarray(0, r.forward.length).equals(r.forward)).toBe(true);
        if (r.status === 'end') expect(Buffer.concat([r.forward, r.rest as Buffer]).equals(input)).toBe(true);
      }),
      RUNS,
    );
  });

  /** Message lines without CR, LF or NUL (what a well-behaved client sends, before dot-stuffing). */
  const cleanLine = fc.oneof(
    fc.string({ maxLength: 20 }).map((s) => s.replace(/[\r\n\0]/g, '')),
    fc.constantFrom('.', '..', '.x', ''),
  );

  test('clean messages: forwarded bytes are the dot-stuffed wire form, byte for byte', () => {
    fc.assert(
      fc.property(fc.array(cleanLine, { maxLength: 20 }), fc.string({ maxLength: 20 }), cutsArb, modeArb, (lines, after, cuts, mode) => {
        // RFC 5321 §4.5.2: a line starting with "." gets one more ".".
        const stuffed = lines.map((l) => (l.startsWith('.') ? `.${l}` : l));
        const body = stuffed.map((l) => `${l}\r\n`).join('');
        const input = Buffer.from(`${body}.\r\n${after}`, 'latin1');
        const r = runScanner(split(input, cuts), mode, 1_000_000);
        expect(r.status).toBe('end');
        expect(r.forward.toString('latin1')).toBe(`${body}.\r\n`);
        expect((r.rest as Buffer).toString('latin1')).toBe(after);
        // RFC 1870 size: un-stuffed lines with their CRLF.
        expect(r.size).toBe(Buffer.byteLength(lines.map((l) => `${l}\r\n`).join(''), 'latin1'));
      }),
      RUNS,
    );
  });
});

// ── CommandLineReader ────────────────────────────────────────────────────────────────────────

type LineResult = Array<{ line: string; bareLf: boolean } | { error: string }>;

function runReader(chunks: Buffer[], maxLineBytes: number): { events: LineResult; left: string } {
  const r = new CommandLineReader({ maxLineBytes, maxBufferedBytes: 1 << 20 });
  const events: LineResult = [];
  for (const c of chunks) {
    r.push(c);
    for (let guard = 0; guard < 100_000; guard++) {
      const ev = r.next();
      if (ev === undefined) break;
      events.push(ev.kind === 'line' ? { line: ev.line.toString('latin1'), bareLf: ev.bareLf } : { error: ev.error });
    }
  }
  expect(r.bufferedBytes).toBeLessThan(maxLineBytes);
  return { events, left: r.takeBuffered().toString('latin1') };
}

describe('CommandLineReader properties', () => {
  const maxLineArb = fc.integer({ min: 1, max: 40 });

  test('chunking never changes the line events', () => {
    fc.assert(
      fc.property(smtpish, cutsArb, maxLineArb, (input, cuts, max) => {
        const whole = runReader([input], max);
        // What is left over after an over-long partial line depends on when it was detected;
        // compare it only when no error happened.
        const viaCuts = runReader(split(input, cuts), max);
        const viaBytes = runReader(bytewise(input), max);
        expect(viaCuts.events).toEqual(whole.events);
        expect(viaBytes.events).toEqual(whole.events);
        if (!whole.events.some((e) => 'error' in e)) {
          expect(viaCuts.left).toBe(whole.left);
          expect(viaBytes.left).toBe(whole.left);
        }
      }),
      RUNS,
    );
  });

  test('without over-long lines, lines + terminators + leftover = input', () => {
    fc.assert(
      fc.property(smtpish, cutsArb, (input, cuts) => {
        const { events, left } = runReader(split(input, cuts), 100_000);
        const rebuilt = events.map((e) => ('line' in e ? e.line + (e.bareLf ? '\n' : '\r\n') : '')).join('') + left;
        expect(rebuilt).toBe(input.toString('latin1'));
        for (const e of events) if ('line' in e) expect(e.line.includes('\n')).toBe(false);
      }),
      RUNS,
    );
  });
});

// ── ReplyParser ──────────────────────────────────────────────────────────────────────────────

function runReplies(chunks: Buffer[], opts?: { maxLineBytes?: number; maxLines?: number }): ReplyEvent[] {
  const p = new ReplyParser(opts);
  return chunks.flatMap((c) => p.push(c));
}

const replyArb: fc.Arbitrary<Reply> = fc.record({
  code: fc.tuple(fc.integer({ min: 2, max: 5 }), fc.integer({ min: 0, max: 5 }), fc.integer({ min: 0, max: 9 })).map(([a, b, c]) => a * 100 + b * 10 + c),
  lines: fc.array(
    fc.string({ maxLength: 30 }).map((s) => s.replace(/[\r\n]/g, '')),
    { minLength: 1, maxLength: 6 },
  ),
});

describe('ReplyParser properties', () => {
  test('parse(formatReply(r)) = r, however the bytes are cut', () => {
    fc.assert(
      fc.property(fc.array(replyArb, { minLength: 1, maxLength: 5 }), cutsArb, (replies, cuts) => {
        const wire = Buffer.concat(replies.map((r) => formatReply(r)));
        const want = replies.map((reply) => ({ kind: 'reply', reply }));
        expect(runReplies(split(wire, cuts))).toEqual(want);
        expect(runReplies(bytewise(wire))).toEqual(want);
      }),
      RUNS,
    );
  });

  test('arbitrary bytes: never throw, chunking never changes the events, text never holds CR or LF', () => {
    const replyish = fc
      .array(
        fc.oneof(
          fc.constantFrom('250-', '250 ', '550 ', '354', '\r\n', '\n', '\r', '251 ', 'abc', ' 5.7.1 '),
          fc.string({ maxLength: 10 }),
        ),
        { maxLength: 30 },
      )
      .map((p) => Buffer.from(p.join(''), 'latin1'));
    fc.assert(
      fc.property(fc.oneof(replyish, fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a))), cutsArb, (input, cuts) => {
        const opts = { maxLineBytes: 40, maxLines: 4 };
        const whole = runReplies([input], opts);
        expect(runReplies(split(input, cuts), opts)).toEqual(whole);
        expect(runReplies(bytewise(input), opts)).toEqual(whole);
        expect(whole.filter((e) => e.kind === 'error').length).toBeLessThanOrEqual(1);
        for (const e of whole) {
          if (e.kind === 'reply') for (const l of e.reply.lines) expect(/[\r\n]/.test(l)).toBe(false);
        }
      }),
      RUNS,
    );
  });
});
