import { describe, expect, test } from 'vitest';
import { CommandLineReader, type LineEvent } from '../../src/smtp/line-reader.js';

type Ev = { line: string; bareLf: boolean } | { error: string };

function drain(r: CommandLineReader): Ev[] {
  const out: Ev[] = [];
  for (let guard = 0; guard < 10_000; guard++) {
    const ev: LineEvent | undefined = r.next();
    if (ev === undefined) return out;
    out.push(ev.kind === 'line' ? { line: ev.line.toString('latin1'), bareLf: ev.bareLf } : { error: ev.error });
  }
  throw new Error('next() did not stop');
}

function read(chunks: string[], maxLineBytes = 512): Ev[] {
  const r = new CommandLineReader({ maxLineBytes });
  const out: Ev[] = [];
  for (const c of chunks) {
    r.push(Buffer.from(c, 'latin1'));
    out.push(...drain(r));
  }
  return out;
}

describe('CommandLineReader', () => {
  const cases = [
    // line ends
    { name: 'CRLF line', input: 'EHLO a\r\n', want: [{ line: 'EHLO a', bareLf: false }] },
    { name: 'bare LF line is reported, not guessed', input: 'EHLO a\n', want: [{ line: 'EHLO a', bareLf: true }] },
    { name: 'empty CRLF line', input: '\r\n', want: [{ line: '', bareLf: false }] },
    { name: 'empty bare LF line', input: '\n', want: [{ line: '', bareLf: true }] },
    { name: 'CR not followed by LF stays in the line', input: 'MAIL\rFROM\r\n', want: [{ line: 'MAIL\rFROM', bareLf: false }] },
    { name: 'CR CR LF keeps one CR', input: 'NOOP\r\r\n', want: [{ line: 'NOOP\r', bareLf: false }] },
    { name: 'incomplete line waits', input: 'NOOP', want: [] },
    // pipelining
    {
      name: 'pipelined batch',
      input: 'MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n',
      want: [
        { line: 'MAIL FROM:<a@b>', bareLf: false },
        { line: 'RCPT TO:<c@d>', bareLf: false },
        { line: 'DATA', bareLf: false },
      ],
    },
    // NUL and 8-bit bytes pass through (the command parser judges them)
    { name: 'NUL byte kept', input: 'RCPT TO:<a\0@b>\r\n', want: [{ line: 'RCPT TO:<a\0@b>', bareLf: false }] },
  ];
  test.each(cases)('$name', ({ input, want }) => {
    expect(read([input])).toEqual(want);
    expect(read([...input])).toEqual(want);
  });

  describe('line length (RFC 5321 §4.5.3.1.4, CRLF included)', () => {
    test('exactly maxLineBytes with CRLF is accepted', () => {
      expect(read(['x'.repeat(8) + '\r\n'], 10)).toEqual([{ line: 'x'.repeat(8), bareLf: false }]);
    });
    test('exactly maxLineBytes with bare LF is accepted', () => {
      expect(read(['x'.repeat(9) + '\n'], 10)).toEqual([{ line: 'x'.repeat(9), bareLf: true }]);
    });
    test('one byte more gives one error and the next line is read in sync', () => {
      const want = [{ error: 'line_too_long' }, { line: 'QUIT', bareLf: false }];
      const input = 'x'.repeat(9) + '\r\nQUIT\r\n';
      expect(read([input], 10)).toEqual(want);
      expect(read([...input], 10)).toEqual(want);
    });
    test('a very long line in many chunks gives ONE error, and is never buffered', () => {
      const r = new CommandLineReader({ maxLineBytes: 16 });
      const events: Ev[] = [];
      for (let k = 0; k < 1000; k++) {
        r.push(Buffer.alloc(100, 0x41));
        events.push(...drain(r));
        expect(r.bufferedBytes).toBe(0);
      }
      r.push(Buffer.from('AAAA\r\nNOOP\r\n'));
      events.push(...drain(r));
      expect(events).toEqual([{ error: 'line_too_long' }, { line: 'NOOP', bareLf: false }]);
    });
    test('lines before the long one come out first', () => {
      expect(read(['HELO a\r\n' + 'y'.repeat(30) + '\r\nQUIT\r\n'], 10)).toEqual([
        { line: 'HELO a', bareLf: false },
        { error: 'line_too_long' },
        { line: 'QUIT', bareLf: false },
      ]);
    });
  });

  describe('buffer handling', () => {
    test('takeBuffered returns the unconsumed bytes and empties the reader', () => {
      const r = new CommandLineReader({ maxLineBytes: 512 });
      r.push(Buffer.from('DATA\r\nSubject: x\r\n'));
      r.push(Buffer.from('\r\nbody'));
      expect(r.next()).toEqual({ kind: 'line', line: Buffer.from('DATA'), bareLf: false });
      expect(r.bufferedBytes).toBe('Subject: x\r\n\r\nbody'.length);
      expect(r.takeBuffered().toString()).toBe('Subject: x\r\n\r\nbody');
      expect(r.bufferedBytes).toBe(0);
      expect(r.next()).toBeUndefined();
      expect(r.takeBuffered().length).toBe(0);
    });

    test('takeBuffered ends a discard-until-LF state (STARTTLS resets the stream)', () => {
      const r = new CommandLineReader({ maxLineBytes: 8 });
      r.push(Buffer.from('x'.repeat(20)));
      expect(r.next()).toEqual({ kind: 'error', error: 'line_too_long' });
      r.takeBuffered();
      r.push(Buffer.from('EHLO\r\n'));
      expect(r.next()).toMatchObject({ kind: 'line', bareLf: false });
    });

    test('a line inside one chunk is a zero-copy slice', () => {
      const r = new CommandLineReader({ maxLineBytes: 512 });
      const chunk = Buffer.from('NOOP\r\nQUIT\r\n');
      r.push(chunk);
      const ev = r.next();
      expect(ev?.kind).toBe('line');
      if (ev?.kind === 'line') expect(ev.line.buffer).toBe(chunk.buffer);
    });

    test('never holds more than maxBufferedBytes; overflow is reported', () => {
      const r = new CommandLineReader({ maxLineBytes: 64, maxBufferedBytes: 1024 });
      for (let k = 0; k < 100; k++) r.push(Buffer.from('NOOP\r\n'.repeat(10)));
      expect(r.bufferedBytes).toBeLessThanOrEqual(1024);
      expect(r.overflowed).toBe(true);
      // The complete lines that were kept are still readable.
      expect(r.next()).toEqual({ kind: 'line', line: Buffer.from('NOOP'), bareLf: false });
    });

    test('no overflow while consumed in time', () => {
      const r = new CommandLineReader({ maxLineBytes: 64, maxBufferedBytes: 1024 });
      for (let k = 0; k < 1000; k++) {
        r.push(Buffer.from('NOOP\r\n'.repeat(10)));
        expect(drain(r)).toHaveLength(10);
      }
      expect(r.overflowed).toBe(false);
      expect(r.bufferedBytes).toBe(0);
    });
  });
});
